"""The matrix forms: a block of C steps as matrix products from a given state (the UT / WY form
for the delta rule), chunks of blocks carried by a scan, and the parallel form as one chunk.

Inside a block of C steps starting from state W0 (rows of Q, K, V, U are time steps):
  sum:    Y = Q W0ᵀ + tril(QKᵀ) V,              W = W0 + Vᵀ K
  delta:  the write u_t = β_t (v_t − W_{t-1} k_t) satisfies (I + tril(diag(β) KKᵀ, −1)) U =
          diag(β)(V − K W0ᵀ), a unit lower-triangular system; then
          Y = Q W0ᵀ + tril(QKᵀ) U,              W = W0 + Uᵀ K
With log-decays g (the gated rules, W_t = W_{t-1} diag(α_t) + ..., α = exp(g)) and b_t their
cumulative sum within the block, every product above takes the decay between its two times,
exp(b_t − b_s) for s ≤ t (never the exp of a positive number: b falls with t), and the reads of
W0 take exp(b_t):
  gated sum:   Y = (Q ⊙ e^b) W0ᵀ + D(Q, K) V,   W = W0 diag(e^{b_C}) + Vᵀ (K ⊙ e^{b_C − b})
  gated delta: (I + tril(diag(β) D(K, K), −1)) U = diag(β)(V − (K ⊙ e^b) W0ᵀ); Y and W as above
               with U for V,
where D(X, Y)_ts = Σ_k x_tk y_sk e^{b_tk − b_sk} for s ≤ t and 0 above (b per key channel, or one
per head).
Blocks use the layout [B, H, T, ·] so every product is a batched matmul.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from fwp.ops.linalg import from_blocks, to_blocks, zero_state

# Blocks: the parallel form from a given state. Shapes: w0 [B, H, V, K], q, k [B, H, C, K],
# v [B, H, C, V], beta [B, H, C]. Each returns (y [B, H, C, V], w [B, H, V, K]); y is None when
# q is None (only the final state is wanted).

def _block_read(w0, q, k, u):
  if q is None:
    return None
  scores = jnp.tril(jnp.einsum("bhck,bhsk->bhcs", q, k))
  y = jnp.einsum("bhcs,bhsv->bhcv", scores, u)
  return y if w0 is None else y + jnp.einsum("bhck,bhvk->bhcv", q, w0)


def _add_writes(w0, u, k):
  w = jnp.einsum("bhcv,bhck->bhvk", u, k)
  return w if w0 is None else w0 + w


def sum_block(w0, q, k, v, beta=None):
  """w0 None is a zero state (the parallel form without one skips its products)."""
  del beta
  return _block_read(w0, q, k, v), _add_writes(w0, v, k)


def unit_lower_inverse(a):
  """(I + L)⁻¹ for unit lower-triangular a [..., n, n], by matrix products only.

  Doubling the diagonal block size: with the inverses X11, X22 of two diagonal blocks,
  [[A11, 0], [A21, A22]]⁻¹ = [[X11, 0], [−X22 A21 X11, X22]]. log2(n) rounds of batched matmuls
  (n padded to a power of two with identity). Used instead of lax.linalg.triangular_solve, whose
  XLA:CPU backward was slow and at times deadlocked in our benchmarks (see docs/performance.md).
  """
  n = a.shape[-1]
  batch = a.shape[:-2]
  size = 1 << max(n - 1, 0).bit_length()
  if size != n:
    a = jnp.pad(a, [(0, 0)] * len(batch) + [(0, size - n), (0, size - n)])
  inv = jnp.ones(batch + (size, 1, 1), a.dtype)               # size blocks of 1×1: [1]
  s = 1
  while s < size:
    m = size // (2 * s)
    pairs = inv.reshape(batch + (m, 2, s, s))
    x11, x22 = pairs[..., 0, :, :], pairs[..., 1, :, :]
    blocks = a.reshape(batch + (m, 2 * s, m, 2 * s))
    diagonal = jnp.moveaxis(jnp.diagonal(blocks, axis1=-4, axis2=-2), -1, -3)  # [..., m, 2s, 2s]
    x21 = -(x22 @ diagonal[..., s:, :s]) @ x11
    inv = jnp.concatenate([jnp.concatenate([x11, jnp.zeros_like(x11)], -1),
                           jnp.concatenate([x21, x22], -1)], -2)
    s *= 2
  return inv.reshape(batch + (size, size))[..., :n, :n]


def write_system(k, beta):
  """A = I + tril(diag(β) K Kᵀ, −1) for blocks k [..., C, K], beta [..., C]: the delta rule's
  writes U of a block solve A U = diag(β)(V − K W0ᵀ)."""
  gram = jnp.einsum("...ck,...sk->...cs", k, k)
  return jnp.eye(k.shape[-2], dtype=k.dtype) + jnp.tril(beta[..., :, None] * gram, -1)


def _delta_writes(w0, k, v, beta):
  """U [B, H, C, V], the writes u_t = β_t (v_t − W_{t-1} k_t) of one block: the unit
  lower-triangular system (I + tril(diag(β) KKᵀ, −1)) U = diag(β)(V − K W0ᵀ)."""
  a = write_system(k, beta)
  rhs = beta[..., None] * (v if w0 is None else v - jnp.einsum("bhck,bhvk->bhcv", k, w0))
  return unit_lower_inverse(a) @ rhs


def delta_block(w0, q, k, v, beta):
  u = _delta_writes(w0, k, v, beta)
  return _block_read(w0, q, k, u), _add_writes(w0, u, k)


def _halving_scores(x, y, b, strict):
  """decayed_scores per key channel for x, y, b [M, C, K] with C a power of two, by halves: the
  lower-left quarter (t in the second half, s in the first) goes through the first half's last
  step r, exp(b_t − b_s) = exp(b_t − b_r) exp(b_r − b_s), both exponents ≤ 0, so it is one matrix
  product of decayed x and y; the two diagonal quarters are the same problem at half the size,
  solved for all of them at once."""
  m, c, d = x.shape
  if c == 1:
    return jnp.zeros((m, 1, 1), x.dtype) if strict else jnp.sum(x * y, -1)[:, :, None]
  h = c // 2
  halves = lambda a: a.reshape(2 * m, h, d)
  inner = _halving_scores(halves(x), halves(y), halves(b), strict).reshape(m, 2, h, h)
  ref = b[:, h - 1:h]
  low = (x[:, h:] * jnp.exp(b[:, h:] - ref)) @ jnp.swapaxes(y[:, :h] * jnp.exp(ref - b[:, :h]), 1, 2)
  top = jnp.concatenate([inner[:, 0], jnp.zeros_like(low)], -1)
  return jnp.concatenate([top, jnp.concatenate([low, inner[:, 1]], -1)], -2)


def decayed_scores(x, y, b, strict=False):
  """D [B, H, C, C]: D_ts = Σ_k x_tk y_sk exp(b_tk − b_sk) for s ≤ t (s < t when `strict`), 0
  above, for x, y [B, H, C, K] and cumulative log-decays b [B, H, C, 1] (one per head) or
  [B, H, C, K] (per key channel). No entry is the exp of a positive number.

  One gate per head factors out of the sum over k: QKᵀ times the masked decays. Per key channel
  it does not, and the definition takes a [C, C, K] tensor of decays; `_halving_scores` computes
  the same numbers with log2(C) levels of C·K decays and matrix products instead (22× faster
  than the definition, fwd+bwd, at B·H = 128, C = 64, K = 32 on this repo's 2-core CPU)."""
  c = x.shape[-2]
  if b.shape[-1] == 1:
    mask = jnp.tril(jnp.ones((c, c), bool), -1 if strict else 0)
    diff = jnp.where(mask, b[..., :, None, 0] - b[..., None, :, 0], -jnp.inf)
    return jnp.einsum("bhck,bhsk->bhcs", x, y) * jnp.exp(diff)
  size = 1 << (c - 1).bit_length()                  # the next power of two: zero rows after c
  pad = lambda a, mode="constant": jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, size - c), (0, 0)],
                                           mode=mode)
  flat = lambda a: a.reshape((-1, size, a.shape[-1]))
  d = _halving_scores(flat(pad(x)), flat(pad(y)), flat(pad(b, "edge")), strict)
  return d.reshape(x.shape[:-2] + (size, size))[..., :c, :c]


def _gated_parts(w0, q, k, g):
  """The gated blocks' shared pieces: the decayed reads of W0 (Q ⊙ e^b) W0ᵀ as a function, the
  keys decayed to the block's end, K ⊙ e^{b_C − b}, and W0 decayed through the block."""
  b = jnp.cumsum(g, axis=-2)
  decay_end = jnp.exp(b[..., -1:, :] - b)                     # ≤ 1
  read_w0 = lambda x: jnp.einsum("bhck,bhvk->bhcv", x * jnp.exp(b), w0)
  w0_end = None if w0 is None else w0 * jnp.exp(b[..., -1, :])[..., None, :]
  return b, read_w0, k * decay_end, w0_end


def _gated_read(w0, q, k, u, b, read_w0):
  if q is None:
    return None
  y = jnp.einsum("bhcs,bhsv->bhcv", decayed_scores(q, k, b), u)
  return y if w0 is None else y + read_w0(q)


def gated_sum_block(w0, q, k, v, beta, g):
  del beta
  b, read_w0, k_end, w0_end = _gated_parts(w0, q, k, g)
  return _gated_read(w0, q, k, v, b, read_w0), _add_writes(w0_end, v, k_end)


def gated_delta_block(w0, q, k, v, beta, g):
  b, read_w0, k_end, w0_end = _gated_parts(w0, q, k, g)
  a = jnp.eye(k.shape[-2], dtype=k.dtype) + beta[..., :, None] * decayed_scores(k, k, b, True)
  rhs = beta[..., None] * (v if w0 is None else v - read_w0(k))
  u = unit_lower_inverse(a) @ rhs
  return _gated_read(w0, q, k, u, b, read_w0), _add_writes(w0_end, u, k_end)


def chunked(block: Callable, w0, q, k, v, beta, chunk_size, g=None):
  """`block` over the sequence cut into chunks of `chunk_size` (one chunk: the parallel form),
  carrying W across chunks with a scan. Public layout in and out, as `recurrent`; g, the gated
  rules' log-decays [B, T, H, 1 or K], is passed to `block` last."""
  t = k.shape[1]
  size = min(chunk_size, t)
  num_blocks = -(-t // size)
  if beta is None:
    beta = jnp.ones(k.shape[:3], k.dtype)
  blocks = lambda x: None if x is None else to_blocks(x, num_blocks, size)
  xs = (blocks(q),) + tuple(blocks(x) for x in (k, v, beta) + (() if g is None else (g,)))

  def body(w, x):
    y, w = block(w, *x)
    return w, y

  if num_blocks == 1:
    y, w = block(w0, *(None if x is None else x[0] for x in xs))
    y = None if y is None else y[None]
  else:
    w, y = jax.lax.scan(body, zero_state(k, v, w0), xs)
  return (None if q is None else from_blocks(y)[:, :t]), w



def causal_in_non_finite(block, w0, q, k, v, beta, size, g=None):
  """The matrix forms multiply data by a causal mask, and 0 · NaN = NaN: a non-finite input
  would reach earlier outputs (and padding holding Inf, real ones). So they run on finite inputs
  (non-finite entries zeroed) and then mark what the recurrence would make non-finite, as NaN:
  every output and the state from the first non-finite k, v, β, g (or initial state) on, since W
  holds it from then; a non-finite q only its own read-out."""
  finite = lambda x, axes: jnp.all(jnp.isfinite(x), axis=axes)
  bad_write = ~(finite(k, -1) & finite(v, -1))                               # [B, T, H]
  if beta is not None:
    bad_write |= ~jnp.isfinite(beta)
  if g is not None:
    bad_write |= ~finite(g, -1)
  bad_state = jax.lax.cummax(bad_write.astype(jnp.int8), axis=1).astype(bool)
  if w0 is not None:
    bad_state |= ~finite(w0, (-2, -1))[:, None]
  clean = lambda x: None if x is None else jnp.where(jnp.isfinite(x), x, jnp.zeros((), x.dtype))
  y, w = chunked(block, clean(w0), clean(q), clean(k), clean(v), clean(beta), size, clean(g))
  w = jnp.where(bad_state[:, -1, :, None, None], jnp.nan, w)
  if y is not None:
    y = jnp.where((bad_state | ~finite(q, -1))[..., None], jnp.nan, y)
  return y, w
