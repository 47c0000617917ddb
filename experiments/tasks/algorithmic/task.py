"""The algorithmic tasks of the recurrent FWPs (Irie et al. 2021): code execution and sequential
ListOps, as a task. A causal sequence model reads the program (or the list expression) and
predicts a symbol at every position; as the authors' `main.py` / `listops_main.py`:

  code execution  cross-entropy over every non-padding position (`_` where nothing is printed,
                  the value at the `;` of each executed print); accuracies over the sequence
                  (every position right), the prints and the no-output positions
  ListOps         cross-entropy and accuracy of the answer at the last token

The model is fwp.lm.TransformerLM with an untied output layer (softmax attention or any fast
weight layer, recurrent FWPs included) or fwp.lstm.LSTMModel. Batches are host arrays of an
epoch-wise shuffle of the fixed training set (a function of (seed, step)); dropout and FAVOR+
keys are functions of (seed, step), so resume is exact. Selection by valid accuracy (higher is
better), and the final test numbers are those of the best checkpoint, as the authors'.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from experiments import distributed, stopping
from experiments.tasks import common
from experiments.tasks.algorithmic import data
from fwp import checks, lm, lstm

ARCHITECTURES = ("transformer", "lstm")
SELECT_BY = ("sequence", "print")        # code execution's selection accuracy
_DROPOUT, _PROJECTION = 1, 2             # key streams
RESUMABLE = ("model.form", "model.chunk_size", "eval_batch_size", "cache_dir")
ADDED_FIELDS = {**{f"model.{name}": value for name, value in common.BEFORE.items()
                   if name != "fwm_normalize_first"},
                "model.cell": "lstm",
                "model.layer_norm_eps": 1e-6}     # fwp's LMConfig default, before the field


def _positive(config, name, minimum=1):
  checks.at_least(f"config.{name}", config[name], minimum)


def model_config(config, vocab_size: int, output_size: int):
  """The fwp model config: an LMConfig (Transformer, fast weights) or an LSTMConfig."""
  m = config.model
  if m.architecture not in ARCHITECTURES:
    raise ValueError(f"Unknown config.model.architecture {m.architecture!r}; valid choices: "
                     f"{', '.join(ARCHITECTURES)}.")
  if m.architecture == "lstm":
    return lstm.LSTMConfig(vocab_size=vocab_size, output_size=output_size,
                           embed_size=m.embed_size, hidden_size=m.d_model,
                           num_layers=m.num_layers, dropout=m.dropout, cell=m.cell)
  return lm.LMConfig(
      vocab_size=vocab_size, output_size=output_size, num_layers=m.num_layers,
      d_model=m.d_model, num_heads=m.num_heads, d_head=m.d_head, d_ff=m.d_ff,
      dropout=m.dropout, fast_weight=common.fast_weight_config(m), pre_norm=m.pre_norm,
      final_norm=m.final_norm, positional=m.positional, embedding=m.embedding,
      embedding_dropout=m.embedding_dropout, fast_weight_scale=m.fast_weight_scale,
      dtype=m.dtype, scoring=common.scoring(m), layer_norm_eps=m.layer_norm_eps)


def validate(config) -> None:
  kind, _ = data.parse(config.problem)
  if config.model_name == "lstm" and config.model.architecture != "lstm":
    raise ValueError("config.model_name 'lstm' needs config.model.architecture 'lstm'.")
  if kind == "code":
    _positive(config, "code_length", 2)
  for name in ("train_size", "valid_size", "test_size", "eval_batch_size"):
    _positive(config, name)
  _positive(config, "max_length", 0)
  if config.train_size < config.batch_size:
    raise ValueError(f"config.train_size={config.train_size} is smaller than batch_size="
                     f"{config.batch_size}: an epoch would hold no batch.")
  if config.select_by not in SELECT_BY:
    raise ValueError(f"Unknown config.select_by {config.select_by!r}; valid choices: "
                     f"{', '.join(SELECT_BY)} (code execution; ListOps selects by its answer "
                     f"accuracy).")
  model_config(config, 2, 2)             # every model field, before any data is made


def make(config, mesh=None) -> "Algorithmic":
  return Algorithmic(config, mesh)


def _counts(log_probs, targets, no_output):
  """Per-batch sums: nll and count of scored positions, correct positions, correct sequences
  (every scored position right) and sequences; with `no_output` (code execution) the prints'
  and the no-output positions' correct counts and totals."""
  scored = targets >= 0
  safe = jnp.where(scored, targets, 0)
  nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
  right = (jnp.argmax(log_probs, axis=-1) == safe) & scored
  rows = jnp.any(scored, axis=-1)
  out = dict(nll=jnp.sum(jnp.where(scored, nll, 0.0)), scored=jnp.sum(scored),
             right=jnp.sum(right), sequences=jnp.sum(rows),
             sequences_right=jnp.sum(rows & jnp.all(right | ~scored, axis=-1)))
  if no_output is not None:
    printed = scored & (targets != no_output)
    out.update(prints=jnp.sum(printed), prints_right=jnp.sum(right & printed),
               noops=jnp.sum(scored & ~printed), noops_right=jnp.sum(right & ~printed))
  return out


class Algorithmic:
  """One run on a code-execution or ListOps problem; selection by valid accuracy."""

  selection = ("valid_accuracy", "max")
  final_checkpoint = "best"

  def __init__(self, config, mesh=None):
    self.config, self.mesh = config, mesh
    self.no_output = data.no_output_id(config.problem)
    self.vocab = data.input_vocabulary(config.problem)
    self.outputs = data.output_vocabulary(config.problem)
    self.train = self._split("train", config.train_size)
    self.valid = self._split("valid", config.valid_size)
    self.summary_fields = dict(model=config.model_name, problem=config.problem,
                               train_length=int(self.train.inputs.shape[1]))

  def _split(self, name, size):
    """A split padded to config.max_length (0: to its own longest example)."""
    c = self.config
    split = data.generate(c.problem, name, size, c.data_seed, c.code_length, c.cache_dir)
    return split.padded(c.max_length, f"{c.problem} {name}") if c.max_length else split

  @functools.cached_property
  def test(self) -> data.Split:
    return self._split("test", self.config.test_size)

  def build_model(self, rngs: nnx.Rngs):
    config = model_config(self.config, len(self.vocab), len(self.outputs))
    if isinstance(config, lstm.LSTMConfig):
      return lstm.LSTMModel(config, rngs=rngs)
    return lm.TransformerLM(config, rngs=rngs)

  def host_batch(self, step):
    c = self.config
    return data.train_batch(self.train, step, c.batch_size, c.seed)

  def _key(self, stream, step):
    return common.step_key(self.config.seed, stream, step)

  def loss(self, model, batch, step):
    """Mean cross-entropy over the batch's scored positions; weight = their count."""
    redraw = self.config.model.redraw_projection
    log_probs = model(batch["inputs"], dropout_key=self._key(_DROPOUT, step),
                      projection_key=self._key(_PROJECTION, step) if redraw else None)
    counts = _counts(log_probs, batch["targets"], None)
    scored = counts["scored"].astype(jnp.float32)
    return counts["nll"] / jnp.maximum(scored, 1.0), {"weight": scored}

  def _count_fn(self, graphdef, params, rest, batch):
    model = nnx.merge(graphdef, params, rest)
    return _counts(model(batch["inputs"]), batch["targets"], self.no_output)

  @functools.cached_property
  def _count(self):
    return jax.jit(self._count_fn, static_argnums=0)

  def _totals(self, graphdef, params, rest, split: data.Split) -> dict:
    """The per-batch counts (_counts) summed over `split`."""
    totals: dict = {}
    batches = data.eval_batches(split, self.config.eval_batch_size)
    for batch in stopping.checked(batches):
      if self.mesh is not None:
        batch = distributed.replicate(batch, self.mesh)
      for k, v in self._count(graphdef, params, rest, batch).items():
        totals[k] = totals.get(k, 0) + float(distributed.fetch(v))
    return totals

  def metrics(self, graphdef, params, rest, split: data.Split, prefix: str) -> dict:
    """Loss (nats per scored position) and accuracies in percent over `split`."""
    totals = self._totals(graphdef, params, rest, split)
    pct = lambda a, b: 100.0 * totals[a] / max(totals[b], 1.0)
    out = {f"{prefix}_loss": totals["nll"] / max(totals["scored"], 1.0)}
    if self.no_output is None:
      out[f"{prefix}_accuracy"] = pct("right", "scored")
      return out
    out.update({f"{prefix}_sequence_accuracy": pct("sequences_right", "sequences"),
                f"{prefix}_print_accuracy": pct("prints_right", "prints"),
                f"{prefix}_noop_accuracy": pct("noops_right", "noops")})
    out[f"{prefix}_accuracy"] = out[f"{prefix}_{self.config.select_by}_accuracy"]
    return out

  def evaluate(self, graphdef, params, rest, step):
    out = self.metrics(graphdef, params, rest, self.valid, "valid")
    return dict(eval_loss=out.pop("valid_loss"), **out)

  def final(self, graphdef, params, rest, step):
    del step
    return {**self.metrics(graphdef, params, rest, self.valid, "valid"),
            **self.metrics(graphdef, params, rest, self.test, "test")}
