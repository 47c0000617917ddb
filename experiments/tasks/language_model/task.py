"""Language modelling: a Transformer LM (fwp.lm) on a text corpus (text_data), as a task.

Training batches are host arrays (segments of the corpus's contiguous streams, a function of the
step); the dropout and FAVOR+ keys are functions of (seed, step), so resume is exact. Evaluation
during training is the plain non-overlapping one on the valid split (early stopping reads it);
when a run ends, `final` adds valid and test, plain and sliding-window (the authors' protocol:
stride 1, every token predicted with a full window of context), as perplexity and bits per unit,
and, for a model with a state of fixed size (fast weights, Transformer-XL's memory), the carried
evaluation: the split read as eval_batch_size contiguous streams, the state carried through
each, no window at all.

`config.carry_state` trains without a context window (the paper's Table 4, the authors'
--carry_over_fast_weight): segment s of each training stream starts from the fast weights that
segment s − 1 of the same stream ended with (the loop's carried state, checkpointed with the
run; no gradient crosses the boundary), and from the empty memory when the stream starts over.
Its evaluation during training is then the carried one too.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import distributed, stopping
from experiments.progress import Progress
from experiments.tasks import common
from experiments.tasks.language_model import batches, text_data
from fwp import checks, lm

_DROPOUT, _PROJECTION = 1, 2     # key streams
# Fields that may change when a run resumes (the loop adds its own), and fields added after
# runs existed, with the value those runs used implicitly.
RESUMABLE = ("model.form", "model.chunk_size", "eval_batch_size", "sliding_stride", "cache_dir")


def resumable(config_flat: dict) -> tuple:
  """RESUMABLE, less eval_batch_size under carry_state: there it is the number of carried
  evaluation streams, which defines the selection metric (5.1553 against 5.1468 nats on the
  same parameters), so a resume may not change it."""
  if config_flat.get("carry_state"):
    return tuple(k for k in RESUMABLE if k != "eval_batch_size")
  return RESUMABLE
ADDED_FIELDS = {"model.recurrence": "none", "model.accumulate": "float32", "cache_dir": "",
                "model.attention_eps": 1e-6, "model.pre_norm_residual": "input",
                "model.layer_norm_eps": 1e-6, "model.sum_scale": "output",
                "model.final_dropout": False, "model.init": "flax",
                "model.eval_projection": "init", "carry_state": False, "model.mem_len": 0,
                "model.clamp_len": 0, "model.shared_distance_dropout": False,
                "model.eval_clamp_len": -1,
                **{f"model.{name}": value for name, value in common.BEFORE.items()
                   if name != "fwm_normalize_first"}}


@functools.lru_cache(maxsize=4)
def corpus(name: str, level: str, data_dir: str, cache_dir: str = "") -> text_data.Corpus:
  return text_data.load(name, level, data_dir or None, cache_dir or None)


def load_corpus(config) -> text_data.Corpus:
  # .get: a config.json written before cache_dir existed (generate reads those) lacks it.
  return corpus(config.corpus, config.level, config.data_dir, config.get("cache_dir", ""))


def data_identity(config) -> dict:
  """The corpus a run trains on, recorded in its config.json (see text_data.identity)."""
  return text_data.identity(load_corpus(config))


SUM_SCALES = ("output", "scores")


def lm_config(config, vocab_size: int) -> lm.LMConfig:
  m = config.model
  fast_weight = common.fast_weight_config(m)
  # .get: a config.json from before these fields (ADDED_FIELDS holds their old values).
  sum_scale = m.get("sum_scale", "output")
  if sum_scale not in SUM_SCALES:
    raise ValueError(f"Unknown model.sum_scale {sum_scale!r}; valid choices: "
                     f"{', '.join(SUM_SCALES)}.")
  if sum_scale == "scores":
    # The authors' attn_type 4/5/6: 1/√d_head multiplies the scores inside the attention
    # normaliser, s·Σ(φq·φk)v / (s·Σφq·φk + eps) = Σ(φq·φk)v / (Σφq·φk + eps/s): no output
    # scale, the normaliser's eps divided by s.
    if fast_weight is None or fast_weight.normalization != "attention":
      raise ValueError(f"model.sum_scale='scores' puts 1/√d_head inside the attention "
                       f"normaliser (the authors' sum-rule layers 4/5/6); it needs "
                       f"normalization='attention', got "
                       f"{'softmax attention' if fast_weight is None else fast_weight.normalization!r}.")
    fast_weight = dataclasses.replace(fast_weight, eps=fast_weight.eps * math.sqrt(m.d_head))
  return lm.LMConfig(
      vocab_size=vocab_size, num_layers=m.num_layers, d_model=m.d_model,
      num_heads=m.num_heads, d_head=m.d_head, d_ff=m.d_ff, dropout=m.dropout,
      fast_weight=fast_weight, pre_norm=m.pre_norm,
      positional=m.positional, adaptive_cutoffs=tuple(m.adaptive_cutoffs), dtype=m.dtype,
      scoring=common.scoring(m), fast_weight_scale=sum_scale == "output",
      pre_norm_residual=m.get("pre_norm_residual", "input"),
      layer_norm_eps=m.get("layer_norm_eps", 1e-6),
      final_dropout=m.get("final_dropout", False), init=m.get("init", "flax"),
      mem_len=m.get("mem_len", 0), clamp_len=m.get("clamp_len", 0),
      shared_distance_dropout=m.get("shared_distance_dropout", False))


def validate(config) -> None:
  text_data.check(config.corpus, config.level, config.data_dir or None)
  for name in ("context", "eval_batch_size"):
    checks.positive_int(f"config.{name}", config[name])
  stride = config.sliding_stride
  if isinstance(stride, bool) or not isinstance(stride, int) or not 0 <= stride <= (
      config.context):
    raise ValueError(f"config.sliding_stride must be an integer in 0..context ({config.context}; "
                     f"0 skips the sliding-window evaluation), got {stride!r}.")
  eval_projection = config.model.get("eval_projection", "init")
  if eval_projection not in EVAL_PROJECTIONS:
    raise ValueError(f"Unknown model.eval_projection {eval_projection!r}; valid choices: "
                     f"{', '.join(EVAL_PROJECTIONS)}.")
  model = lm_config(config, vocab_size=2)    # every model field, before any data is read
  eval_clamp = config.model.get("eval_clamp_len", -1)
  if eval_clamp != -1:
    checks.at_least("config.model.eval_clamp_len (-1: model.clamp_len's)", eval_clamp, 0)
    dataclasses.replace(model, clamp_len=eval_clamp)          # needs Transformer-XL, as clamp_len
  if config.get("carry_state", False):
    if model.fast_weight is None and model.positional != "relative":
      raise ValueError(
          f"config.carry_state carries a fast weight memory from segment to segment; "
          f"{config.model.update_rule!r} attention has none (its state, a key/value cache, "
          f"grows with the text). Use a fast weight model (e.g. linear-delta), Transformer-XL "
          f"(txl-mem<N>, a memory of fixed size), or carry_state=False.")
    if model.positional not in ("none", "relative"):
      raise ValueError(
          f"config.carry_state reads each stream without a window, so positions would count "
          f"past anything seen in training; model.positional={model.positional!r} cannot "
          f"continue into an unbounded stream. Set --config.model.positional=none (the "
          f"authors' --no_pos, as the paper's carried models).")


def build_model(config, rngs: nnx.Rngs) -> lm.TransformerLM:
  return lm.TransformerLM(lm_config(config, load_corpus(config).vocab.size), rngs=rngs)


def eval_graphdef(config, vocab_size: int):
  """The graph the evaluations merge the trained parameters into when model.eval_clamp_len
  differs from the training clamp (the authors train unclamped and evaluate with --clamp_len
  384): the same parameters, Transformer-XL's distances clamped at eval_clamp_len. None: the
  training graph."""
  eval_clamp = config.model.get("eval_clamp_len", -1)
  trained = lm_config(config, vocab_size)
  if eval_clamp in (-1, trained.clamp_len):
    return None
  clamped = dataclasses.replace(trained, clamp_len=eval_clamp)
  return nnx.graphdef(nnx.eval_shape(lambda: lm.TransformerLM(clamped, rngs=nnx.Rngs(0))))


def state_floats(config, vocab_size: int | None = None) -> int | None:
  """Floats of the state one stream carries (every layer's fast weights, z and recurrent
  state, or Transformer-XL's mem_len × d_model per layer); None for softmax attention, whose
  cache grows with the text. The size does not depend on the vocabulary (`vocab_size`: any)."""
  m = config.model
  if m.update_rule in common.ATTENTION_BASELINES and m.get("positional") != "relative":
    return None
  size = vocab_size or load_corpus(config).vocab.size
  shapes = jax.eval_shape(
      lambda: lm.TransformerLM(lm_config(config, size), rngs=nnx.Rngs(0)).init_state(1))
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes)
                 if jnp.issubdtype(leaf.dtype, jnp.floating)))


EVAL_PROJECTIONS = ("init", "last_draw")


def _step_key(config, stream, step):
  return common.step_key(config.seed, stream, step)


def lm_loss(config, model, batch, step):
  """(cross-entropy of {inputs, targets}, aux) with this step's dropout (and FAVOR+) keys, from
  the empty memory: the task's loss (and the benchmarks') without a carried state."""
  return lm_loss_and_state(config, model, batch, step)[:2]


def lm_loss_and_state(config, model, batch, step, state: lm.LMState | None = None):
  """lm_loss, from `state` (None: the empty memory), and the model's state after the batch."""
  key = lambda stream: _step_key(config, stream, step)
  log_probs, state = model(
      batch["inputs"], state=state, return_state=True, dropout_key=key(_DROPOUT),
      projection_key=key(_PROJECTION) if config.model.redraw_projection else None)
  return lm.cross_entropy(log_probs, batch["targets"]), {"weight": jnp.float32(1)}, state


def eval_projection_key(config, step: int):
  """The FAVOR+ key an evaluation of the parameters after `step` training steps uses: None (the
  projection drawn at initialisation, fwp's) or, under model.eval_projection='last_draw', the
  last training step's (the authors': their layers keep the last draw in `proj_matrix`, which is
  saved with the model). None where nothing is redrawn or no step was taken."""
  m = config.model
  if (m.get("eval_projection", "init") != "last_draw" or m.feature_map != "favor_plus"
      or not m.redraw_projection or step < 1):
    return None
  return _step_key(config, _PROJECTION, step - 1)


def use_last_draw(model: lm.TransformerLM, config, step: int) -> None:
  """Stores the projections `eval_projection_key` names in `model` (for a reader that calls the
  model without keys, as generate does); a no-op when that key is None."""
  key = eval_projection_key(config, step)
  if key is None:
    return
  for i, block in enumerate(model.blocks):      # the per-layer keys lm.TransformerLM folds in
    block.attention.redraw_projection(jax.random.fold_in(key, i))


def make(config, mesh=None) -> "LanguageModelling":
  return LanguageModelling(config, mesh)


class LanguageModelling:
  """One LM run: every batch holds the same number of targets, so the train loss is a plain
  mean (weight 1); early stopping and the best checkpoint follow the valid loss."""

  selection = ("eval_loss", "min")

  def __init__(self, config, mesh=None):
    self.config, self.mesh = config, mesh
    self.corpus = load_corpus(config)
    self._check_splits()
    self.summary_fields = dict(model=config.model_name, corpus=config.corpus,
                               level=config.level, context=config.context,
                               state_floats=state_floats(config, self.corpus.vocab.size))
    self._nll = jax.jit(self._nll_sum, static_argnums=0)
    self._eval_graphdef = eval_graphdef(config, self.corpus.vocab.size)

  @functools.cached_property
  def _valid_batches(self) -> list[dict]:
    """The plain valid windows, read at every eval: built once, at the first (a reader that
    only builds the model, such as generate, never pays for them)."""
    c = self.config
    return list(batches.eval_windows(self.corpus.splits["valid"], c.context, c.context,
                                     c.eval_batch_size))

  def _check_splits(self):
    """Every split against the run's shapes, before the first step: a split the final
    evaluation cannot read would otherwise be found after the whole training budget."""
    c, unit = self.config, self.corpus.unit
    train = len(self.corpus.splits["train"])
    segments = batches.num_segments(train, c.batch_size, c.context)
    if segments < 2:
      raise ValueError(
          f"The {c.corpus} training split ({train:,} {unit}s) cut into batch_size "
          f"{c.batch_size} streams of {train // c.batch_size:,} gives {segments} segment(s) of "
          f"context {c.context} + 1: " + ("too short to train on." if segments < 1 else
                                           "every step would read the same batch.") +
          f" Lower context (to at most {max((train // c.batch_size - 1) // 2, 0):,} for this "
          f"batch_size) or batch_size.")
    for split in ("valid", "test"):
      length = len(self.corpus.splits[split])
      if length < 2:
        raise ValueError(f"The {c.corpus} {split} split has {length} {unit}(s); evaluation "
                         f"needs at least 2 (an input and its target). Fix the {split} file.")

  def build_model(self, rngs: nnx.Rngs) -> lm.TransformerLM:
    return build_model(self.config, rngs)

  def host_batch(self, step):
    c = self.config
    return batches.train_batch(self.corpus.splits["train"], step, c.batch_size, c.context)

  @property
  def carries_state(self) -> bool:
    return bool(self.config.get("carry_state", False))

  def initial_carry(self, model: lm.TransformerLM):
    """Under carry_state, each training stream's fast weights (every layer's state, batch-major,
    float32 or the parameters' wider dtype): the empty memory. None otherwise."""
    if not self.carries_state:
      return None
    return model.init_state(self.config.batch_size, dtype=_state_dtype()).layers

  def loss(self, model, batch, step, carry=None):
    if carry is None:
      return lm_loss(self.config, model, batch, step)
    # A stream that starts over (segment 0: the first step of every epoch) starts from the
    # empty memory; every other segment from the state its stream's previous segment left.
    c = self.config
    segments = batches.num_segments(len(self.corpus.splits["train"]), c.batch_size, c.context)
    empty = model.init_state(c.batch_size, dtype=_state_dtype()).layers
    layers = jax.tree.map(lambda e, w: jnp.where(step % segments == 0, e, w), empty, carry)
    start = lm.LMState(jnp.zeros((), jnp.int32), layers)
    loss, aux, state = lm_loss_and_state(c, model, batch, step, start)
    return loss, aux, state.layers

  def _nll_sum(self, graphdef, params, rest, batch, projection_key, state=None):
    model = nnx.merge(self._eval_graphdef or graphdef, params, rest)
    if state is None:
      log_probs = model(batch["inputs"], projection_key=projection_key)
    else:
      log_probs, state = model(batch["inputs"], state=state, return_state=True,
                               projection_key=projection_key)
    nll = -jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
    return jnp.sum(nll * batch["mask"]), jnp.sum(batch["mask"]), state

  @property
  def has_state(self) -> bool:
    """A state of fixed size to carry: fast weights, or Transformer-XL's memory."""
    return self.summary_fields["state_floats"] is not None

  def carried_nll(self, graphdef, params, rest, split: str, name="",
                  projection_key=None) -> float:
    """Nats per unit over every target of `split`, read as eval_batch_size contiguous streams
    (batches.carried_segments) segment by segment, each stream's state carried from one segment
    to the next from the empty memory: no window, every token sees its stream's whole past. With
    one stream, one recurrent pass over the split."""
    stream = self.corpus.splits[split]
    num_streams = min(self.config.eval_batch_size, len(stream) - 1)
    state = nnx.merge(graphdef, params, rest).init_state(num_streams, dtype=_state_dtype())
    if self.mesh is not None:
      state = distributed.replicate(state, self.mesh)
    segments = batches.carried_segments(stream, num_streams, self.config.context)
    return self.mean_nll(graphdef, params, rest, segments, name=name, num_batches=len(segments),
                         projection_key=projection_key, state=state, unit="segment")

  def mean_nll(self, graphdef, params, rest, batches, name="", num_batches=0,
               projection_key=None, state=None, unit="batch") -> float:
    """Nats per unit over the scored positions of `batches`; a long evaluation says how far it
    is (every ~10 s) when given its `name` and `num_batches`. `projection_key`: FAVOR+'s draw
    (None: the stored projection). `state`: each batch starts from the state the previous one
    left, this one the first's (None: every batch from the empty memory)."""
    total, count = 0.0, 0.0
    meter = Progress(f"{name}: {unit}", num_batches) if name else None
    for i, batch in enumerate(stopping.checked(batches)):
      if meter:
        meter.update(i)
      if self.mesh is not None:
        batch = distributed.replicate(batch, self.mesh)
      s, n, state = self._nll(graphdef, params, rest, batch, projection_key, state)
      total += float(distributed.fetch(s))
      count += float(distributed.fetch(n))
    return total / count

  def _metrics(self, prefix, nll):
    return {f"{prefix}_ppl": math.exp(min(nll, 700.0)),
            f"{prefix}_bits_per_{self.corpus.unit}": nll / math.log(2)}

  def evaluate(self, graphdef, params, rest, step):
    key = eval_projection_key(self.config, step)
    nll = self.mean_nll(graphdef, params, rest, self._valid_batches, projection_key=key)
    if not self.carries_state:
      return dict(eval_loss=nll, **self._metrics("valid", nll))
    # Trained without a window, selected without one: eval_loss is the carried valid loss.
    carried = self.carried_nll(graphdef, params, rest, "valid", projection_key=key)
    return dict(eval_loss=carried, **self._metrics("valid_carried", carried),
                **self._metrics("valid", nll))

  def final(self, graphdef, params, rest, step):
    c, key = self.config, eval_projection_key(self.config, step)
    out = {}
    strides = [("", c.context)] + ([("_sliding", c.sliding_stride)] if c.sliding_stride else [])
    for split in ("valid", "test"):
      stream = self.corpus.splits[split]
      for suffix, stride in strides:
        windows = batches.eval_windows(stream, c.context, stride, c.eval_batch_size)
        count = len(batches.window_ends(len(stream), c.context, stride))
        nll = self.mean_nll(graphdef, params, rest, windows, name=f"final {split}{suffix}",
                            num_batches=-(-count // c.eval_batch_size), projection_key=key)
        out.update(self._metrics(split + suffix, nll))
      if self.has_state:
        nll = self.carried_nll(graphdef, params, rest, split, name=f"final {split}_carried",
                               projection_key=key)
        out.update(self._metrics(split + "_carried", nll))
    return out


def _state_dtype():
  """The carried fast weights' dtype: float32, float64 where JAX computes in it (the tests)."""
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def encode(config, text: str) -> np.ndarray:
  return load_corpus(config).vocab.encode(text)
