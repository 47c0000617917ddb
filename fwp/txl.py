"""Transformer-XL's attention (Dai et al. 2019): softmax attention over a memory of the previous
`mem_len` hidden states and the current segment, with relative positions.

The baseline with a state for language models without a context window (the paper's Table 4,
IDSIA/lmtool-fwp's attn_type 0, RelPartialLearnableMultiHeadAttn, a fork of Transformer-XL's
own). For query i of a segment of T tokens after a memory of M positions, and key j of the
concatenation [memory; segment] (klen = M + T positions, j ≤ M + i):

  score(i, j) = ((q_i + u)·k_j + (q_i + v)·r_{M+i−j}) / √d_head

with q, k, v = W_q, W_k, W_v applied to [memory; segment] (the queries only at the segment),
r_d = W_r · sinusoid(d) the embedding of the distance d, and u, v [H, d_head] two learnt biases
shared by every layer (Transformer-XL's r_w_bias, r_r_bias; `TransformerLM` holds them). Their
code computes the distance term for distances klen−1..0 and aligns it with `_rel_shift`; here it
is gathered at d = M + i − j directly (tests/fwp/test_txl.py checks both against a double loop).

The memory (XLMemory) holds the layer's inputs at the last M positions, with no gradient into
them (the loop's carried state, or a decoder's), and how many of its slots are filled yet: the
empty ones are masked, so the first segment of a stream sees only itself, as theirs with empty
mems. With M = 0 this is a plain Transformer with relative positions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from fwp import checks, layers


class XLMemory(NamedTuple):
  """A Transformer-XL layer's state: h [B, M, d_model], its inputs at the last M positions (the
  oldest first), of which the last count[b] are filled (batch-major like h, so the state splits
  over a data mesh with its streams)."""
  h: jax.Array
  count: jax.Array         # [B] int32, <= M


class RelativeAttention(nnx.Module):
  """Call on x [B, T, d_model] with the shared biases `rel_bias` [2, H, d_head] (u, v) and,
  optionally, an XLMemory; returns the output [B, T, d_model] (and the next memory)."""

  def __init__(self, d_model: int, num_heads: int, d_head: int, mem_len: int, *,
               rngs: nnx.Rngs, dtype=None, clamp_len: int = 0):
    checks.at_least("mem_len", mem_len, 0)
    checks.at_least("clamp_len", clamp_len, 0)
    self.num_heads, self.d_head, self.mem_len, self.d_model = num_heads, d_head, mem_len, d_model
    # > 0: distances above clamp_len share clamp_len's embedding (the authors' --clamp_len,
    # which their WikiText-103 evaluation sets to 384); 0: every distance its own.
    self.clamp_len = clamp_len
    linear = lambda d_in, d_out: nnx.Linear(d_in, d_out, use_bias=False, dtype=dtype, rngs=rngs)
    self.q_proj = linear(d_model, num_heads * d_head)
    self.k_proj = linear(d_model, num_heads * d_head)
    self.v_proj = linear(d_model, num_heads * d_head)
    self.r_proj = linear(d_model, num_heads * d_head)
    self.out_proj = linear(num_heads * d_head, d_model)

  def init_state(self, batch_size: int, dtype=jnp.float32) -> XLMemory:
    return XLMemory(jnp.zeros((batch_size, self.mem_len, self.d_model), dtype),
                    jnp.zeros((batch_size,), jnp.int32))

  def __call__(self, x, rel_bias, *, initial_state: XLMemory | None = None,
               return_state: bool = False, distance_dropout=None):
    """`distance_dropout`: a function applied to the distance embedding (dropout in training)."""
    b, t, d_model = x.shape
    if x.ndim != 3 or d_model != self.d_model:
      raise ValueError(f"Expected x of shape [batch, time, {self.d_model}], got {x.shape}.")
    memory = self.init_state(b, x.dtype) if initial_state is None else initial_state
    m = self.mem_len
    cat = jnp.concatenate([memory.h.astype(x.dtype), x], axis=1)            # [B, M + T, D]
    klen = m + t
    heads = lambda y: y.reshape(y.shape[:-1] + (self.num_heads, self.d_head))
    q, k, v = heads(self.q_proj(x)), heads(self.k_proj(cat)), heads(self.v_proj(cat))
    distances = jnp.arange(klen)                                 # d = 0..klen−1
    if self.clamp_len:
      distances = jnp.minimum(distances, self.clamp_len)
    r = layers.sinusoid(distances, d_model, x.dtype)
    if distance_dropout is not None:
      r = distance_dropout(r)
    r = heads(self.r_proj(r))                                               # [klen, H, d]
    u, w = (rel_bias[i].astype(q.dtype) for i in (0, 1))
    content = jnp.einsum("bthd,bshd->bhts", q + u, k)                       # [B, H, T, klen]
    by_distance = jnp.einsum("bthd,shd->bhts", q + w, r)                    # [..., distance]
    i, j = jnp.arange(t)[:, None], jnp.arange(klen)[None, :]
    distance = m + i - j                                                    # [T, klen]
    position = jnp.take_along_axis(
        by_distance, jnp.broadcast_to(jnp.clip(distance, 0, klen - 1), (b, self.num_heads, t,
                                                                        klen)), axis=-1)
    scores = (content + position) / math.sqrt(self.d_head)
    # Causal, and only the filled memory slots: [B, 1, T, klen].
    visible = (distance >= 0) & (j >= m - memory.count[:, None, None, None])
    scores = jnp.where(visible, scores, jnp.finfo(scores.dtype).min)
    y = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, axis=-1), v)
    out = self.out_proj(y.reshape(b, t, -1))
    if not return_state:
      return out
    state = XLMemory(jax.lax.stop_gradient(cat[:, klen - m:].astype(memory.h.dtype)),
                     jnp.minimum(memory.count + t, m).astype(jnp.int32))
    return out, state
