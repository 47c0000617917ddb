"""An encoder-decoder Transformer (Vaswani et al. 2017, fairseq's layout) whose every attention
can be a fast weight memory: the paper's translation model (Section 6.2, Table 1).

Three attention roles, each softmax (None) or a FastWeightConfig:
- encoder self-attention, **non-causal**: the whole source writes one memory, W_S = Σ_s v_s φ(k_s)ᵀ
  (the sum rule; the delta rule writes in source order, so its W_S depends on that order), and
  every position reads it, y_i = W_S φ(q_i) (/ z_S·φ(q_i) + eps under attention normalisation);
- decoder self-attention, causal: layers.FastWeightAttention, whose state decoding carries;
- cross-attention: the encoder's output writes W_enc once per source; each decoder position reads
  it with its query, at a cost per token independent of the source length.

Padding: sentences of a batch are padded on the right with `pad_id`. A padded source position
never writes (its φ(k) and v contribute nothing, β = 0) and never counts in a normaliser or a
softmax; padded target positions come after a sentence's real ones, so causality keeps them out
of every real position, and the loss masks them. So a padded batch computes each sentence's
outputs as if it ran alone (tests/fwp/test_seq2seq.py, float64).

Decoding is an RNN over the target: `memories(src)` computes the cross memories once, then
`step(state, memories, tokens)` per token (the decoder's fast weights, or softmax's cache).
`greedy` and `beam_search` (fairseq's SequenceGenerator: PAD never chosen, EOS not before min_len
= 1 token and forced after max_len; 2·beam candidates a step, a hypothesis ending in EOS among
the first `beam` is finished, its score divided by length^length_penalty; a source is done when
`beam` hypotheses are) run it over a batch of sources.

Shapes: src [B, S], tgt [B, T] int; log-probabilities [B, T, V] over the shared vocabulary (one
embedding for source, target and output, as fairseq's --share-all-embeddings).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fwp import checks, feature_maps, layers, lm, normalization, ops

ROLES = ("encoder", "decoder", "cross")
MEMORY_RULES = ("sum", "delta")       # rules a non-causal memory (encoder, cross) can use


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig:
  vocab_size: int
  encoder_layers: int = 2
  decoder_layers: int = 2
  d_model: int = 64
  num_heads: int = 4
  d_head: int = 16
  d_ff: int = 256
  dropout: float = 0.1
  encoder: layers.FastWeightConfig | None = None     # None: softmax attention
  decoder: layers.FastWeightConfig | None = None
  cross: layers.FastWeightConfig | None = None
  pad_id: int = 0
  eos_id: int = 2                                    # also the decoder's first input (fairseq)
  layer_norm_eps: float = 1e-5

  def __post_init__(self):
    for name in ("vocab_size", "encoder_layers", "decoder_layers", "d_model", "num_heads",
                 "d_head", "d_ff"):
      checks.positive_int(f"Seq2SeqConfig.{name}", getattr(self, name))
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"Seq2SeqConfig.dropout must be in [0, 1), got {self.dropout!r}.")
    for role in ("encoder", "cross"):
      config = getattr(self, role)
      if config is not None and (config.update_rule not in MEMORY_RULES
                                 or config.recurrence != "none"):
        raise ValueError(f"The {role} attention reads a memory written by a whole sequence; it "
                         f"takes the rules {', '.join(MEMORY_RULES)} (no recurrence), got "
                         f"update_rule={config.update_rule!r}, recurrence="
                         f"{config.recurrence!r}.")
    for name in ("pad_id", "eos_id"):
      if not 0 <= getattr(self, name) < self.vocab_size:
        raise ValueError(f"Seq2SeqConfig.{name}={getattr(self, name)} is outside the "
                         f"vocabulary 0..{self.vocab_size - 1}.")


class SoftmaxMemory(NamedTuple):
  """A softmax role's memory: keys and values [B, S, H, d] and which are real [B, S]."""
  k: jax.Array
  v: jax.Array
  mask: jax.Array


class MemoryAttention(nnx.Module):
  """Non-causal attention of queries over a memory written by a whole (padded) sequence: a fast
  weight memory (W, z) under `config`, or softmax over its keys (config None)."""

  def __init__(self, d_model: int, num_heads: int, d_head: int,
               config: layers.FastWeightConfig | None, *, rngs: nnx.Rngs):
    self.num_heads, self.d_head, self.config = num_heads, d_head, config
    linear = lambda d_out: nnx.Linear(d_model, d_out, use_bias=False, rngs=rngs)
    self.q_proj, self.k_proj, self.v_proj = (linear(num_heads * d_head) for _ in range(3))
    self.beta_proj = (nnx.Linear(d_model, num_heads, rngs=rngs)
                      if config is not None and config.uses_beta else None)
    self.out_proj = layers.linear_out(num_heads * d_head, d_model, None, rngs)
    self.projection = (layers.FeatureProjection(layers.draw_projection(rngs.params(), config,
                                                                       d_head))
                       if config is not None
                       and feature_maps.get(config.feature_map).needs_projection else None)

  def _heads(self, y):
    return layers.at_least_f32(y).reshape(y.shape[:2] + (self.num_heads, self.d_head))

  def memory(self, source, mask):
    """The memory that `source` [B, S, d_model] writes, its real positions `mask` [B, S]."""
    k, v = self._heads(self.k_proj(source)), self._heads(self.v_proj(source))
    m = mask.astype(k.dtype)
    if self.config is None:
      return SoftmaxMemory(k, v, mask.astype(bool))
    c = self.config
    phi = layers.feature_function(c, self._projection(k.dtype))
    phi_k = phi(k, False) * m[:, :, None, None]          # a padded position writes nothing
    v = v * m[:, :, None, None]
    beta = None
    if c.uses_beta:
      beta = jax.nn.sigmoid(layers.at_least_f32(self.beta_proj(source))) * m[:, :, None]
    w = ops.final_state(c.update_rule, phi_k, v, beta, form=c.form, chunk_size=c.chunk_size)
    z = jnp.sum(phi_k, axis=1)[:, :, None, :] if c.attention_normalized else None
    return layers.FastWeightState(w, z)

  def read(self, x, memory):
    """x [B, T, d_model] reads `memory`: [B, T, d_model]."""
    q = self._heads(self.q_proj(x))
    if self.config is None:
      scores = jnp.einsum("bthd,bshd->bhts", q, memory.k) / math.sqrt(self.d_head)
      scores = jnp.where(memory.mask[:, None, None, :], scores,
                         jnp.finfo(scores.dtype).min)
      y = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, axis=-1), memory.v)
    else:
      phi_q = layers.feature_function(self.config, self._projection(q.dtype))(q, True)
      y = jnp.einsum("bhvk,bthk->bthv", memory.w, phi_q)
      if self.config.attention_normalized:
        den = jnp.einsum("bhok,bthk->bth", memory.z, phi_q)
        y = normalization.attention_normalize(y, den, self.config.eps)
    b, t = x.shape[:2]
    return self.out_proj(y.reshape(b, t, -1))

  def _projection(self, dtype):
    return None if self.projection is None else self.projection[...].astype(dtype)

  def __call__(self, x, source, mask):
    return self.read(x, self.memory(source, mask))


class _FeedForward(nnx.Module):
  def __init__(self, d_model: int, d_ff: int, *, rngs: nnx.Rngs):
    self.w_in = nnx.Linear(d_model, d_ff, rngs=rngs)
    self.w_out = nnx.Linear(d_ff, d_model, rngs=rngs)

  def __call__(self, x, rate, key):
    return self.w_out(lm.dropout(jax.nn.relu(self.w_in(x)), rate, key))


def _key(key, i):
  return None if key is None else jax.random.fold_in(key, i)


class EncoderLayer(nnx.Module):
  def __init__(self, c: Seq2SeqConfig, *, rngs: nnx.Rngs):
    self.rate = c.dropout
    self.attention = MemoryAttention(c.d_model, c.num_heads, c.d_head, c.encoder, rngs=rngs)
    self.norm_attention = nnx.LayerNorm(c.d_model, epsilon=c.layer_norm_eps, rngs=rngs)
    self.ff = _FeedForward(c.d_model, c.d_ff, rngs=rngs)
    self.norm_ff = nnx.LayerNorm(c.d_model, epsilon=c.layer_norm_eps, rngs=rngs)

  def __call__(self, x, mask, key):
    x = self.norm_attention(x + lm.dropout(self.attention(x, x, mask), self.rate, _key(key, 0)))
    return self.norm_ff(x + lm.dropout(self.ff(x, self.rate, _key(key, 1)), self.rate,
                                       _key(key, 2)))


class DecoderLayer(nnx.Module):
  def __init__(self, c: Seq2SeqConfig, *, rngs: nnx.Rngs):
    self.rate = c.dropout
    self.self_attention = (
        layers.SoftmaxAttention(c.d_model, c.num_heads, c.d_head, rngs=rngs) if c.decoder is None
        else layers.FastWeightAttention(c.d_model, c.num_heads, c.d_head, c.decoder, rngs=rngs))
    self.norm_self = nnx.LayerNorm(c.d_model, epsilon=c.layer_norm_eps, rngs=rngs)
    self.cross = MemoryAttention(c.d_model, c.num_heads, c.d_head, c.cross, rngs=rngs)
    self.norm_cross = nnx.LayerNorm(c.d_model, epsilon=c.layer_norm_eps, rngs=rngs)
    self.ff = _FeedForward(c.d_model, c.d_ff, rngs=rngs)
    self.norm_ff = nnx.LayerNorm(c.d_model, epsilon=c.layer_norm_eps, rngs=rngs)

  def __call__(self, x, memory, state, key):
    a, state = self.self_attention(x, initial_state=state, return_state=True)
    x = self.norm_self(x + lm.dropout(a, self.rate, _key(key, 0)))
    x = self.norm_cross(x + lm.dropout(self.cross.read(x, memory), self.rate, _key(key, 1)))
    x = self.norm_ff(x + lm.dropout(self.ff(x, self.rate, _key(key, 2)), self.rate,
                                    _key(key, 3)))
    return x, state


class DecoderState(NamedTuple):
  position: jax.Array        # [] int32: target tokens read so far
  layers: tuple              # per decoder layer: FastWeightState or layers.KVCache


class Seq2Seq(nnx.Module):
  """`model(src, tgt_in)` -> log p [B, T, V] of the next target token at every position
  (teacher forcing); `memories`, `init_state` and `step` decode it as an RNN."""

  def __init__(self, config: Seq2SeqConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed = nnx.Embed(config.vocab_size, config.d_model,
                           embedding_init=nnx.initializers.normal(config.d_model ** -0.5),
                           rngs=rngs)
    self.encoder = nnx.List([EncoderLayer(config, rngs=rngs)
                             for _ in range(config.encoder_layers)])
    self.decoder = nnx.List([DecoderLayer(config, rngs=rngs)
                             for _ in range(config.decoder_layers)])

  def _embed(self, tokens, start, key):
    c = self.config
    x = layers.lookup(self.embed, tokens) * math.sqrt(c.d_model)
    x = x + lm.sinusoid(start + jnp.arange(tokens.shape[1]), c.d_model, x.dtype)
    return lm.dropout(x, c.dropout, key)

  def encode(self, src, dropout_key=None):
    """The encoder's output [B, S, d_model] and the source mask [B, S]."""
    mask = src != self.config.pad_id
    x = self._embed(src, 0, _key(dropout_key, 0))
    for i, layer in enumerate(self.encoder):
      x = layer(x, mask, _key(dropout_key, i + 1))
    return x, mask

  def memories(self, src, dropout_key=None) -> tuple:
    """Per decoder layer, the cross memory the source writes (computed once per source)."""
    enc, mask = self.encode(src, dropout_key)
    return tuple(layer.cross.memory(enc, mask) for layer in self.decoder)

  def init_state(self, batch_size: int, *, cache_capacity: int = 0,
                 dtype=jnp.float32) -> DecoderState:
    """The decoder's empty state (softmax self-attention needs `cache_capacity` >= the target
    tokens it will read)."""
    if self.config.decoder is None:
      if cache_capacity < 1:
        raise ValueError("A softmax decoder decodes with a key/value cache: pass "
                         "cache_capacity >= the number of target tokens.")
      per = [l.self_attention.init_state(batch_size, cache_capacity, dtype) for l in self.decoder]
    else:
      per = [l.self_attention.init_state(batch_size, dtype) for l in self.decoder]
    return DecoderState(jnp.zeros((), jnp.int32), tuple(per))

  def decode(self, tgt_in, memories, *, state: DecoderState | None = None,
             return_state: bool = False, dropout_key=None):
    """log p [B, T, V] of the target after tgt_in [B, T], from `state` (None: the start)."""
    start = jnp.zeros((), jnp.int32) if state is None else state.position
    x = self._embed(tgt_in, start, _key(dropout_key, 100))
    new = []
    for i, layer in enumerate(self.decoder):
      x, s = layer(x, memories[i], None if state is None else state.layers[i],
                   _key(dropout_key, 101 + i))
      new.append(s)
    logits = layers.at_least_f32(x @ self.embed.embedding[...].T.astype(x.dtype))
    out = jax.nn.log_softmax(logits, axis=-1)
    if return_state:
      return out, DecoderState(start + tgt_in.shape[1], tuple(new))
    return out

  def __call__(self, src, tgt_in, *, dropout_key=None):
    return self.decode(tgt_in, self.memories(src, _key(dropout_key, 0)),
                       dropout_key=_key(dropout_key, 1))

  def step(self, state: DecoderState, memories, tokens):
    """One target token per sequence, tokens [B] -> (log p [B, V], next state)."""
    out, state = self.decode(tokens[:, None], memories, state=state, return_state=True)
    return out[:, 0], state


def sequence_nll(log_probs, targets, pad_id: int):
  """(Σ −log p of the non-pad targets, their count) for targets [B, T]."""
  mask = (targets != pad_id).astype(log_probs.dtype)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(nll * mask), jnp.sum(mask)


# --- Decoding --------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=0)
def _memories(graphdef, weights, src):
  return nnx.merge(graphdef, weights).memories(src)


@functools.partial(jax.jit, static_argnums=0)
def _step(graphdef, weights, state, mems, tokens):
  return nnx.merge(graphdef, weights).step(state, mems, tokens)


@functools.partial(jax.jit, static_argnums=2)
def _reorder(state, index, rows: int):
  """Every per-hypothesis leaf of the decoder state (leading axis `rows`) gathered at `index`:
  the beam's survivors take their parents' states (one compiled gather, not one per leaf)."""
  return jax.tree.map(lambda a: a[index] if a.ndim and a.shape[0] == rows else a, state)


def _decoder_fns(model: Seq2Seq):
  """(weights, memories(weights, src), step(weights, state, mems, tokens)): jitted once per model
  structure and shape (a run's every evaluation reuses the compiled decoder)."""
  graphdef, weights = nnx.split(model)
  return (weights, functools.partial(_memories, graphdef), functools.partial(_step, graphdef))


def _dtype(model: Seq2Seq):
  """The decoder state's dtype: the parameters' (float32, or float64 in the proofs)."""
  return jnp.promote_types(model.embed.embedding[...].dtype, jnp.float32)


def _fairseq_rules(log_probs: np.ndarray, t: int, *, max_len: int, min_len: int, eos: int,
                   pad: int) -> np.ndarray:
  """fairseq SequenceGenerator's masks on step `t`'s log-probabilities [..., V] (a copy): PAD is
  never chosen, EOS not before `min_len` tokens, and at step `max_len` only EOS (a hypothesis
  has at most max_len tokens before its EOS)."""
  lp = np.array(log_probs, np.float64)
  lp[..., pad] = -np.inf
  if t >= max_len:
    keep = lp[..., eos].copy()
    lp[...] = -np.inf
    lp[..., eos] = keep
  if t < min_len:
    lp[..., eos] = -np.inf
  return lp


def _check_lengths(max_len: int, min_len: int, cache_capacity: int | None) -> int:
  """The decoder cache's capacity (max_len + 1 tokens are fed: the start EOS and max_len)."""
  checks.positive_int("max_len", max_len)
  if isinstance(min_len, bool) or not isinstance(min_len, (int, np.integer)) or not (
      0 <= min_len <= max_len):
    raise ValueError(f"min_len must be an integer in 0..max_len = {max_len}, got {min_len!r}.")
  if cache_capacity is not None and cache_capacity < max_len + 1:
    raise ValueError(f"cache_capacity must be >= max_len + 1 = {max_len + 1}, got "
                     f"{cache_capacity}.")
  return cache_capacity or max_len + 1


def greedy(model: Seq2Seq, src, max_len: int, *, min_len: int = 1) -> list[list[int]]:
  """The likeliest token at every step under fairseq's rules (`_fairseq_rules`) until EOS
  (included; forced after `max_len` tokens), per source: beam search with beam 1."""
  cache = _check_lengths(max_len, min_len, None)
  weights, memories, step = _decoder_fns(model)
  b, eos, pad = src.shape[0], model.config.eos_id, model.config.pad_id
  mems = memories(weights, jnp.asarray(src))
  state = model.init_state(b, cache_capacity=cache, dtype=_dtype(model))
  token = jnp.full((b,), eos, jnp.int32)
  out = [[] for _ in range(b)]
  done = np.zeros(b, bool)
  for t in range(max_len + 1):
    log_probs, state = step(weights, state, mems, token)
    lp = _fairseq_rules(log_probs, t, max_len=max_len, min_len=min_len, eos=eos, pad=pad)
    chosen = np.argmax(lp, axis=-1)
    for i, tok in enumerate(chosen):
      if not done[i]:
        out[i].append(int(tok))
        done[i] = tok == eos
    if done.all():
      break
    token = jnp.asarray(chosen, jnp.int32)
  return out


def beam_search(model: Seq2Seq, src, *, beam: int, max_len: int, length_penalty: float = 1.0,
                min_len: int = 1, cache_capacity: int | None = None
                ) -> list[tuple[list[int], float]]:
  """fairseq's beam search (SequenceGenerator) over a batch of sources: per source, the best
  finished hypothesis (tokens ending in EOS; its score Σ log p / length^length_penalty, the
  length counting the EOS).

  Each step scores every live hypothesis's continuations under fairseq's rules (PAD never, EOS
  not before `min_len` tokens, only EOS after `max_len`: `_fairseq_rules`) and ranks the best
  2·beam; an EOS among the first `beam` of them finishes its hypothesis, the first `beam` that
  are not EOS live on; a source is done when `beam` hypotheses are. tests/fwp/test_seq2seq.py
  pins it to a port of fairseq's loop and to an enumeration of the search space.

  `cache_capacity` (softmax decoders' key/value cache; default and minimum `max_len` + 1)
  changes no result: a caller that decodes many batches passes one value for all so that they
  share one compiled step."""
  checks.positive_int("beam", beam)
  checks.finite_non_negative("length_penalty", length_penalty)
  cache = _check_lengths(max_len, min_len, cache_capacity)
  weights, memories, step = _decoder_fns(model)
  eos, pad, b, k = model.config.eos_id, model.config.pad_id, src.shape[0], beam
  mems = memories(weights, jnp.asarray(src))
  mems = jax.tree.map(lambda a: jnp.repeat(a, k, axis=0), mems)          # [B·K, ...]
  state = model.init_state(b * k, cache_capacity=cache, dtype=_dtype(model))
  scores = np.full((b, k), -np.inf)
  scores[:, 0] = 0.0                                 # one live hypothesis at the start
  seqs = [[[] for _ in range(k)] for _ in range(b)]
  finished = [[] for _ in range(b)]
  token = jnp.full((b * k,), eos, jnp.int32)
  for t in range(max_len + 1):
    log_probs, state = step(weights, state, mems, token)
    lp = _fairseq_rules(np.asarray(log_probs).reshape(b, k, -1), t, max_len=max_len,
                        min_len=min_len, eos=eos, pad=pad)
    vocab = lp.shape[-1]
    cand = (scores[:, :, None] + lp).reshape(b, -1)
    parents = np.zeros((b, k), np.int64)
    tokens = np.full((b, k), eos, np.int64)
    new_scores = np.full((b, k), -np.inf)
    new_seqs = [[[] for _ in range(k)] for _ in range(b)]
    for i in range(b):
      if len(finished[i]) >= k:                      # done: keep nothing alive
        continue
      order = np.argsort(-cand[i], kind="stable")[:2 * k]
      alive = 0
      for rank, flat in enumerate(order):
        score = cand[i, flat]
        if not np.isfinite(score):
          break
        parent, tok = divmod(int(flat), vocab)
        seq = seqs[i][parent] + [tok]
        if tok == eos:
          if rank < k and len(finished[i]) < k:
            finished[i].append((seq, score / len(seq) ** length_penalty))
        elif alive < k:
          parents[i, alive], tokens[i, alive] = parent, tok
          new_scores[i, alive], new_seqs[i][alive] = score, seq
          alive += 1
    scores, seqs = new_scores, new_seqs
    if all(len(f) >= k for f in finished) or not np.isfinite(scores).any():
      break
    state = _reorder(state, jnp.asarray((np.arange(b)[:, None] * k + parents).reshape(-1)), b * k)
    token = jnp.asarray(tokens.reshape(-1), jnp.int32)
  return [max(f, key=lambda h: h[1]) if f else ([], -np.inf) for f in finished]
