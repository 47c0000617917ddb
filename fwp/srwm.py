"""The self-referential weight matrix (Irie, Csordás, Schmidhuber, ICML 2022; IDSIA/modern-srwm,
the layer of IDSIA/fwp-formal-lang): one matrix per head that produces its own output, query,
key and learning rates from the input, and rewrites itself with the delta rule.

Per head, with x_t ∈ R^E and W [3E + 4, E] (fwp's convention: W maps a key to a value; the
authors' W_y, W_q, W_k, w_b are the transposed blocks of rows of W):

  [y_t; q̂_t; k̂_t; b̂_t] = W_{t-1} φ(x_t)
  q_t = softmax(q̂_t),  k_t = softmax(k̂_t),  β_t = σ(b̂_t) ∈ (0, 1)^4
  W_t = W_{t-1} + (β_t ⊙ (W_{t-1} q_t − W_{t-1} k_t)) k_tᵀ

where β_t's four rates are spread over the four blocks of rows (y, q, k, b). The output y_t is
read with W_{t-1}, before the step's write, as the authors' kernel and loop (theirs skip the last
write, which no output reads; the final state returned here includes it). φ is the identity in
fwp-formal-lang's SRWMlayer (use_input_softmax=False) and may be softmax.

Shapes: x [B, T, H, E]; w0 [B, H, 3E + 4, E]; y [B, T, H, E]; the final state [B, H, 3E + 4, E].
The scan keeps W once per REMAT_SEGMENT steps and a hand-written backward undoes the writes
(below), as the other recurrences' (fwp.rfwp_scan).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from fwp.layers import FastWeightState, at_least_f32
from fwp.ops.linalg import equal_segments, matvec, outer, vecmat

REMAT_SEGMENT = 64
PHIS = ("identity", "softmax")


def rows(d: int) -> int:
  """The rows of one head's matrix for inputs of size d: y, q, k (d each) and 4 rates."""
  return 3 * d + 4


def _phi(x, phi: str):
  if phi not in PHIS:
    raise ValueError(f"Unknown SRWM input map {phi!r}; valid choices: {', '.join(PHIS)}.")
  return jax.nn.softmax(x, axis=-1) if phi == "softmax" else x


def _parts(w, x):
  """The step's vectors from W_{t-1} and φ(x_t): y, q, k, β and the rates per row."""
  e = x.shape[-1]
  out = matvec(w, x)
  y, q, k, b = out[..., :e], out[..., e:2 * e], out[..., 2 * e:3 * e], out[..., 3 * e:]
  q, k, beta = jax.nn.softmax(q, -1), jax.nn.softmax(k, -1), jax.nn.sigmoid(b)
  rates = jnp.concatenate([jnp.repeat(beta[..., :3], e, axis=-1),
                           jnp.repeat(beta[..., 3:], 4, axis=-1)], axis=-1)
  return y, q, k, beta, rates


def _write(w, x):
  """(y_t, W_t, u_t, k_t): the read with W_{t-1}, then W_t = W_{t-1} + u_t k_tᵀ with
  u_t = rates ⊙ W_{t-1}(q_t − k_t)."""
  y, q, k, _, rates = _parts(w, x)
  u = rates * matvec(w, q - k)
  return y, w + outer(u, k), u, k


def srwm_step(w, x, *, phi: str = "identity"):
  """One step on w [B, H, 3E + 4, E] and x [B, H, E]: (y_t [B, H, E], W_t)."""
  e = x.shape[-1]
  if w.shape[-2:] != (rows(e), e):
    raise ValueError(f"An SRWM state for inputs of size {e} is [..., {rows(e)}, {e}]; got "
                     f"{w.shape}.")
  y, w, _, _ = _write(w, _phi(x, phi))
  return y, w


# ---------------------------------------------------------------------------------------------
# The scan, with a hand-written backward (as fwp.rfwp_scan's): the forward keeps W at the end of
# each segment of at most REMAT_SEGMENT steps and each step's write (u_t, k_t); the backward
# walks each segment back from its exact end, undoing one write at a time
# (W_{t-1} = W_t − u_t k_tᵀ), and differentiates the step by hand. Differentiating the
# checkpointed lax.scan instead ran ~4x slower than the Delta Net's step on this CPU.

def _step_backward(w_prev, x, dw, dy):
  """The cotangents of (W_{t-1}, φ(x_t)) from those of (W_t, y_t)."""
  e = x.shape[-1]
  _, q, k, beta, rates = _parts(w_prev, x)
  d = q - k
  m = matvec(w_prev, d)
  u = rates * m
  du = matvec(dw, k)                             # W_t = W_{t-1} + u kᵀ
  dk = vecmat(u, dw)
  dm = du * rates
  drates = du * m
  dd = vecmat(dm, w_prev)
  dq, dk = dd, dk - dd
  dbeta = jnp.stack([drates[..., :e].sum(-1), drates[..., e:2 * e].sum(-1),
                     drates[..., 2 * e:3 * e].sum(-1), drates[..., 3 * e:].sum(-1)], -1)
  softmax_bwd = lambda p, g: p * (g - jnp.sum(p * g, -1, keepdims=True))
  do = jnp.concatenate([dy, softmax_bwd(q, dq), softmax_bwd(k, dk),
                        dbeta * beta * (1.0 - beta)], -1)
  dw_prev = dw + outer(dm, d) + outer(do, x)
  return dw_prev, vecmat(do, w_prev)


def _segments(xs):
  """Time-major xs [T, ...] -> [N, S, ...], zero-padded at the end: a zero input reads
  y = 0 and writes nothing (q = k, so u = 0), so the padding leaves W unchanged."""
  t = xs.shape[0]
  num, size = equal_segments(t, REMAT_SEGMENT)
  xs = jnp.pad(xs, [(0, num * size - t)] + [(0, 0)] * (xs.ndim - 1))
  return xs.reshape((num, size) + xs.shape[1:])


def _forward(w0, xs):
  def step(w, x):
    y, w, u, k = _write(w, x)
    return w, (y, u, k)

  def segment(w, x_segment):
    w, out = jax.lax.scan(step, w, x_segment)
    return w, (w, out)

  x_segments = _segments(xs)
  w_t, (ends, (ys, us, ks)) = jax.lax.scan(segment, w0, x_segments)
  return ys.reshape((-1,) + ys.shape[2:])[:xs.shape[0]], w_t, (ends, us, ks, x_segments)


@jax.custom_vjp
def _scan(w0, xs):
  """Time-major xs = φ(x) [T, B, H, E], W_0 [B, H, 3E + 4, E] -> (ys [T, B, H, E], W_T)."""
  ys, w_t, _ = _forward(w0, xs)
  return ys, w_t


def _scan_fwd(w0, xs):
  ys, w_t, residuals = _forward(w0, xs)
  return (ys, w_t), (residuals, xs.shape[0])


def _scan_bwd(saved, cotangents):
  (ends, us, ks, x_segments), t = saved
  dys, dw = cotangents
  dy_segments = _segments(dys)

  def back_step(carry, inputs):
    w, dw = carry
    x, u, k, dy = inputs
    w_prev = w - outer(u, k)
    dw, dx = _step_backward(w_prev, x, dw, dy)
    return (w_prev, dw), dx

  def back_segment(dw, inputs):
    w_end, x, u, k, dy = inputs
    (_, dw), dx = jax.lax.scan(back_step, (w_end, dw), (x, u, k, dy), reverse=True)
    return dw, dx

  dw0, dxs = jax.lax.scan(back_segment, dw, (ends, x_segments, us, ks, dy_segments),
                          reverse=True)
  return dw0, dxs.reshape((-1,) + dxs.shape[2:])[:t]


_scan.defvjp(_scan_fwd, _scan_bwd)


def srwm(x, w0, *, phi: str = "identity"):
  """The SRWM over a sequence: (y [B, T, H, E], W_T [B, H, 3E + 4, E])."""
  if x.ndim != 4:
    raise ValueError(f"x is [B, T, H, E]; got shape {x.shape}.")
  b, t, h, e = x.shape
  if w0.shape[1:] != (h, rows(e), e) or w0.shape[0] not in (1, b):
    raise ValueError(f"w0 is [B or 1, H, 3E + 4, E] = [{b}, {h}, {rows(e)}, {e}]; got "
                     f"{w0.shape}.")
  dtype = jnp.result_type(x, w0)
  w0 = jnp.broadcast_to(w0, (b, h, rows(e), e)).astype(dtype)
  ys, w_t = _scan(w0, jnp.moveaxis(_phi(x, phi), 1, 0).astype(dtype))
  return jnp.moveaxis(ys, 0, 1), w_t


# ---------------------------------------------------------------------------------------------
# The layer (fwp-formal-lang layers.SRWMlayer), used by fwp.lm.Block for recurrence="srwm".

class SRWMAttention(nnx.Module):
  """x [B, T, D] -> out_proj(srwm(x as H heads of E = D / H)) [B, T, D]: no input projection
  (each head's slice of x is its input), the learned initial matrix W_0 [H, 3E + 4, E] shared by
  every sequence, and a bias-free output projection. The block around it adds the residual
  (theirs: LayerNorm(h) + the layer's output, fwp.lm.Block's pre-norm SRWM branch).

  Initialisation as SRWMlayer.reset_parameters (std 1/√E): W_y, W_k ~ N(0, std), W_q ~
  N(0, 0.01 std), w_b ~ N(beta_init = −1, std), so every learning rate starts near σ(−1)."""

  def __init__(self, d_model: int, num_heads: int, d_head: int, *, rngs: nnx.Rngs, dtype=None,
               beta_init: float = -1.0):
    if num_heads * d_head != d_model:
      raise ValueError(f"The SRWM reads each head's slice of the input: num_heads × d_head = "
                       f"d_model, got {num_heads} × {d_head} != {d_model}.")
    self.num_heads, self.d_head = num_heads, d_head
    e, std = d_head, 1.0 / math.sqrt(d_head)
    normal = lambda mean, scale, n: mean + scale * jax.random.normal(rngs.params(),
                                                                     (num_heads, n, e))
    self.w0 = nnx.Param(jnp.concatenate([normal(0.0, std, e), normal(0.0, 0.01 * std, e),
                                         normal(0.0, std, e), normal(beta_init, std, 4)], 1))
    self.out_proj = nnx.Linear(d_model, d_model, use_bias=False, dtype=dtype, rngs=rngs)

  def init_state(self, batch_size: int, dtype=jnp.float32):
    """The state before a sequence: the learned W_0 for every row of the batch."""
    w0 = self.w0[...]
    return FastWeightState(jnp.broadcast_to(w0, (batch_size,) + w0.shape).astype(
        jnp.promote_types(dtype, jnp.float32)))

  def __call__(self, x, *, initial_state=None, return_state: bool = False,
               projection_key=None):
    del projection_key
    b, t, d = x.shape
    w = self.w0[...][None] if initial_state is None else initial_state.w
    y, w_t = srwm(at_least_f32(x).reshape(b, t, self.num_heads, self.d_head), w)
    out = self.out_proj(y.reshape(b, t, d).astype(x.dtype))
    return (out, FastWeightState(w_t)) if return_state else out
