"""Machine translation (the paper's Table 1) as a task: fwp.seq2seq's encoder-decoder trained with
label smoothing on length-bucketed batches, selected by valid BLEU.

Training: fairseq's label_smoothed_cross_entropy (ε = config.label_smoothing spread over the
other V − 1 symbols), summed over the target tokens of the batch and divided by their number
(the batch's weight in the running train loss; `train_nll` is the unsmoothed loss). Dropout keys
are functions of (seed, step) and batches of (seed, step) (data.Batching), so resume is exact.

Evaluation, every eval: the valid loss per target token (eval_loss, unsmoothed) and perplexity;
BLEU and chrF (sacrebleu, on the detokenised text: SentencePiece's decoding of the beam search
output against the valid file's lines) of the first config.bleu_sentences valid pairs (0: all),
with config.beam and config.length_penalty, at most max_len_a · source + max_len_b tokens.
Selection by valid BLEU (higher is better); the final numbers are those of the best checkpoint
(valid and test loss, BLEU and chrF over whole splits) and its translations are written to the
run directory as translations/{valid,test}.<target_lang>, one line per source line.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from experiments import distributed, stopping
from experiments.tasks import common
from experiments.tasks.translation import data
from fwp import checks, seq2seq

ROLES = seq2seq.ROLES
ROLE_RULES = ("softmax",) + seq2seq.MEMORY_RULES
NORMALIZATIONS = ("none", "attention", "sum", "sum_attention")
RESUMABLE = ("model.form", "model.chunk_size", "eval_max_tokens", "bleu_sentences", "cache_dir",
             "beam", "length_penalty", "max_len_a", "max_len_b", "final_sentences")
ADDED_FIELDS = {"final_sentences": 0}
_DROPOUT = 1


def _positive(config, name, minimum=1):
  checks.at_least(f"config.{name}", config[name], minimum)


def role_config(model_config, role: str):
  """The FastWeightConfig of one attention role (None: softmax)."""
  rule = model_config[f"{role}_rule"]
  if rule not in ROLE_RULES:
    raise ValueError(f"Unknown config.model.{role}_rule {rule!r}; valid choices: "
                     f"{', '.join(ROLE_RULES)}.")
  if rule == "softmax":
    return None
  normalization = model_config[f"{rule}_normalization"]
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"Unknown config.model.{rule}_normalization {normalization!r}; valid "
                     f"choices: {', '.join(NORMALIZATIONS)}.")
  fields = model_config.to_dict()
  fields.update(update_rule=rule, normalization=normalization, recurrence="none")
  return common.fast_weight_config(ml_collections.ConfigDict(fields))


def model_config(config, vocab_size: int) -> seq2seq.Seq2SeqConfig:
  m = config.model
  return seq2seq.Seq2SeqConfig(
      vocab_size=vocab_size, encoder_layers=m.encoder_layers, decoder_layers=m.decoder_layers,
      d_model=m.d_model, num_heads=m.num_heads, d_head=m.d_head, d_ff=m.d_ff,
      dropout=m.dropout, encoder=role_config(m, "encoder"), decoder=role_config(m, "decoder"),
      cross=role_config(m, "cross"), pad_id=data.PAD, eos_id=data.EOS,
      layer_norm_eps=m.layer_norm_eps)


def validate(config) -> None:
  data.check(config)
  for name in ("vocab_size", "max_length", "bucket_width", "beam"):
    _positive(config, name, 1 if name != "vocab_size" else 16)
  for name in ("max_tokens", "eval_max_tokens", "bleu_sentences", "max_len_b",
               "final_sentences"):
    _positive(config, name, 0)
  if config.max_tokens and config.max_tokens < config.max_length:
    raise ValueError(f"config.max_tokens={config.max_tokens} is smaller than max_length="
                     f"{config.max_length}: a batch of the longest pairs would hold no row "
                     f"(give max_tokens >= max_length, or 0 for batch_size rows).")
  if not 0.0 <= config.label_smoothing < 1.0:
    raise ValueError(f"config.label_smoothing must be in [0, 1), got {config.label_smoothing!r}.")
  checks.finite_non_negative("config.length_penalty", config.length_penalty)
  if config.max_len_a < 0:
    raise ValueError(f"config.max_len_a must be >= 0, got {config.max_len_a!r}.")
  model_config(config, config.vocab_size)       # every model field, before any data is read


def data_identity(config) -> dict:
  directory = data.text_directory(config)
  return data.identity(config, directory, data.paths(directory, config))


def make(config, mesh=None) -> "Translation":
  return Translation(config, mesh)


def smoothed_nll(log_probs, targets, epsilon: float):
  """(Σ label-smoothed loss, Σ nll, target count) over the non-pad targets: fairseq's
  label_smoothed_nll_loss, (1 − ε − ε_i)·nll + ε_i·Σ_v −log p_v with ε_i = ε / (V − 1)."""
  mask = (targets != data.PAD).astype(log_probs.dtype)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  eps_i = epsilon / (log_probs.shape[-1] - 1)
  smooth = -jnp.sum(log_probs, axis=-1)
  loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
  return jnp.sum(loss * mask), jnp.sum(nll * mask), jnp.sum(mask)


def _metrics():
  import sacrebleu
  return sacrebleu.BLEU(), sacrebleu.CHRF()


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict:
  """Corpus BLEU and chrF (sacrebleu's defaults: 13a tokenisation, mixed case, one reference)
  of detokenised hypotheses against their references."""
  bleu, chrf = _metrics()
  return dict(bleu=bleu.corpus_score(hypotheses, [references]).score,
              chrf=chrf.corpus_score(hypotheses, [references]).score)


def signatures() -> dict:
  """sacrebleu's signatures of corpus_scores' BLEU and chrF (a result names its metric)."""
  out = {}
  for name, metric in zip(("bleu", "chrf"), _metrics()):
    metric.corpus_score(["a"], [["a"]])        # the signature names the reference count
    out[f"{name}_signature"] = str(metric.get_signature())
  return out


class Translation:
  """One translation run; selection by valid BLEU, final numbers from the best checkpoint."""

  selection = ("valid_bleu", "max")
  final_checkpoint = "best"
  output_dir = None          # the run directory, set by the loop (final() writes there)

  def __init__(self, config, mesh=None):
    self.config, self.mesh = config, mesh
    self.corpus = data.load(config)
    self.devices = 1 if mesh is None else mesh.size
    c = config
    self.batching = data.Batching(self.corpus.splits["train"], c.seed, c.bucket_width,
                                  c.max_length, c.max_tokens, c.batch_size, self.devices)
    dropped = len(self.corpus.splits["train"].source) - len(self.batching.kept)
    empty = sum(d["empty"] for d in self.corpus.dropped.values())
    if dropped or empty:
      print(f"Training pairs left out: {dropped:,} longer than max_length={c.max_length} "
            f"tokens, {empty:,} with an empty side (all splits).", file=sys.stderr, flush=True)
    if not len(self.batching.kept):
      raise ValueError(f"No training pair fits max_length={c.max_length} tokens; raise it.")
    self.summary_fields = dict(
        model=c.model_name, corpus=c.corpus, corpus_sha256=self.corpus.identity.get(
            "corpus_sha256", ""), vocab_size=self.corpus.vocab_size,
        train_pairs=len(self.batching.kept), train_too_long=dropped, beam=c.beam,
        length_penalty=c.length_penalty, final_sentences=c.final_sentences, **signatures())
    self._nll = jax.jit(self._nll_sums, static_argnums=0)

  # --- Training --------------------------------------------------------------------------------

  def build_model(self, rngs: nnx.Rngs) -> seq2seq.Seq2Seq:
    return seq2seq.Seq2Seq(model_config(self.config, self.corpus.vocab_size), rngs=rngs)

  def host_batch(self, step):
    return self.batching.batch(step)

  def loss(self, model, batch, step):
    key = common.step_key(self.config.seed, _DROPOUT, step)
    log_probs = model(batch["src"], batch["tgt_in"], dropout_key=key)
    loss, nll, count = smoothed_nll(log_probs, batch["tgt_out"], self.config.label_smoothing)
    count = jnp.maximum(count, 1.0)
    return loss / count, {"weight": count, "nll": nll / count}

  # --- Evaluation ------------------------------------------------------------------------------

  def _nll_sums(self, graphdef, params, rest, batch):
    model = nnx.merge(graphdef, params, rest)
    _, nll, count = smoothed_nll(model(batch["src"], batch["tgt_in"]), batch["tgt_out"], 0.0)
    return nll, count

  @functools.cache
  def _eval_batches(self, split: str, limit: int = 0):
    c = self.config
    return data.eval_batches(self.corpus.splits[split], c.bucket_width, c.eval_max_tokens,
                             c.batch_size, self.devices, limit)

  def mean_nll(self, graphdef, params, rest, split: str) -> float:
    total, count = 0.0, 0.0
    for _, batch in stopping.checked(self._eval_batches(split)):
      if self.mesh is not None:
        batch = distributed.replicate(batch, self.mesh)
      nll, n = self._nll(graphdef, params, rest, batch)
      total += float(distributed.fetch(nll))
      count += float(distributed.fetch(n))
    return total / max(count, 1.0)

  @staticmethod
  def decoder(graphdef, params, rest) -> seq2seq.Seq2Seq:
    """The model for beam search, its parameters on the host (a mesh's global arrays fetched)."""
    return nnx.merge(graphdef, *(jax.tree.map(distributed.fetch, t) for t in (params, rest)))

  def translate(self, model: seq2seq.Seq2Seq, split: str, limit: int = 0) -> list[str]:
    """Beam search translations of the first `limit` pairs of `split` (0: all), in order."""
    c = self.config
    count = len(self.corpus.splits[split].source) if not limit else limit
    out = [""] * min(count, len(self.corpus.splits[split].source))
    for ids, batch in stopping.checked(self._eval_batches(split, limit)):
      real = np.flatnonzero(ids >= 0)
      src, width = batch["src"], batch["src"].shape[1]
      longest = int((src[real] != data.PAD).sum(axis=1).max())
      # Few shapes, few compiles: the real rows are topped up with copies of the first to a power
      # of two (a copy finishes when its original does), and a softmax decoder's cache is sized
      # by the bucket's width, not by the batch's longest source (neither changes a result).
      rows = min(len(ids), 1 << (len(real) - 1).bit_length())
      pick = np.concatenate([real, np.full(rows - len(real), real[0])])
      found = seq2seq.beam_search(
          model, src[pick], beam=c.beam, max_len=max(1, int(c.max_len_a * longest + c.max_len_b)),
          length_penalty=c.length_penalty,
          cache_capacity=max(1, int(c.max_len_a * width + c.max_len_b)) + 1)
      for i, (tokens, _) in zip(ids[real], found):
        out[int(i)] = self.corpus.decode(tokens)
    return out

  def scores(self, hypotheses: list[str], split: str) -> dict:
    return corpus_scores(hypotheses,
                         list(self.corpus.splits[split].references[:len(hypotheses)]))

  def evaluate(self, graphdef, params, rest, step):
    del step
    nll = self.mean_nll(graphdef, params, rest, "valid")
    model = self.decoder(graphdef, params, rest)
    scores = self.scores(self.translate(model, "valid", self.config.bleu_sentences), "valid")
    return dict(eval_loss=nll, valid_ppl=float(np.exp(nll)), valid_bleu=scores["bleu"],
                valid_chrf=scores["chrf"])

  def final(self, graphdef, params, rest, step):
    del step
    out = {}
    model = self.decoder(graphdef, params, rest)
    for split in ("valid", "test"):
      nll = self.mean_nll(graphdef, params, rest, split)
      hypotheses = self.translate(model, split, self.config.final_sentences)
      scores = self.scores(hypotheses, split)
      out.update({f"{split}_loss": nll, f"{split}_ppl": float(np.exp(nll)),
                  f"{split}_bleu": scores["bleu"], f"{split}_chrf": scores["chrf"]})
      if self.output_dir and distributed.is_main():
        directory = os.path.join(self.output_dir, "translations")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{split}.{self.config.target_lang}"), "w",
                  encoding="utf-8") as f:
          f.writelines(h + "\n" for h in hypotheses)
    return out
