"""The recurrent form: a segmented scan over time with a hand-written backward, and each rule's
single step (forward, its inverse, its backward) that the scan runs."""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fwp.ops.linalg import equal_segments, matvec, outer, vecmat

# Differentiating a plain lax.scan stores W after every step (T·V·K numbers)
# and reads it back: on a CPU that memory traffic made the backward pass 20-50x the forward. Our
# backward keeps W once per segment of REMAT_SEGMENT steps and one V-vector per step (the write's
# correction r_t = v_t − W_{t-1} k_t): it walks back from the exact state at each segment's end,
# undoing one step at a time (W_{t-1} = W_t − β_t r_t k_tᵀ), so rounding cannot build up beyond
# one segment, and the per-step work stays in cache.
# Steps work on [N, ·] arrays, N = batch·heads: w [N, V, K], k, q [N, K], v [N, V], beta [N].

REMAT_SEGMENT = 64   # the backward restarts from a stored W once per this many steps
# fwm's backward reruns a segment forward and stacks its states ([segment, N, V, K]) to walk them
# back; short segments keep that stack in cache (DPFP-1 FWM training step at S = 40 on a 2-core
# CPU: 28 ms with 64-step segments, 17 ms with 16; see docs/performance.md).
FWM_SEGMENT = 16


class Step(NamedTuple):
  """One rule's step, its inverse and its backward. `forward(w, *x)` with x = (k, v, beta) (the
  gated rules add the log-decay g [N, 1] or [N, K]) returns (W_t, res) with res a few numbers per
  step; `inverse(w_t, *x, res)` returns W_{t-1} (None: not undone, see `_backward`);
  `backward(w_prev, w_t, dw_t, *x, res)` returns (dW_{t-1}, dk, dv, dβ[, dg])."""
  forward: Callable
  inverse: Callable
  backward: Callable


def _sum_forward(w, k, v, beta):
  return w + outer(v, k), ()


def _sum_backward(w_prev, w, dw, k, v, beta, res):
  return dw, vecmat(v, dw), matvec(dw, k), jnp.zeros_like(beta)


def _delta_forward(w, k, v, beta):
  r = v - matvec(w, k)                       # the correction the write makes, before β
  return w + outer(beta[..., None] * r, k), r


def _delta_backward(w_prev, w, dw, k, v, beta, r):
  du = matvec(dw, k)                         # u = β r, W_t = W_{t-1} + u kᵀ
  dr = beta[..., None] * du                   # r = v − W_{t-1} k
  dk = vecmat(beta[..., None] * r, dw) - vecmat(dr, w_prev)
  return dw - outer(dr, k), dk, dr, jnp.sum(du * r, axis=-1)


def _fwm_forward(w, k, v, beta):
  p, r = _delta_forward(w, k, v, beta)
  scale = jnp.maximum(1.0, jnp.sqrt(jnp.sum(p * p, axis=(-2, -1))))   # W_t = P / scale
  return p / scale[..., None, None], (r, scale)


def _fwm_backward(w_prev, w, dw, k, v, beta, res):
  r, scale = res
  # W = P / max(1, ‖P‖): dP = (dW − [‖P‖ > 1] ⟨dW, W⟩ W) / scale.
  along = jnp.where(scale > 1.0, jnp.sum(dw * w, axis=(-2, -1)), 0.0)
  dp = (dw - along[..., None, None] * w) / scale[..., None, None]
  return _delta_backward(w_prev, None, dp, k, v, beta, r)


def _decay(g):
  """α = exp(g) as a column scale of W [N, V, K]: g [N, 1] (one gate per head) or [N, K]."""
  return jnp.exp(g)[..., None, :]


def _decay_grad(dw_decayed, w_prev, alpha, g):
  """∂/∂g of W_{t-1} diag(α) given its cotangent: Σ_v dW ⊙ W_{t-1} · α, summed to g's shape."""
  dg = jnp.sum(dw_decayed * w_prev, axis=-2) * alpha[..., 0, :]
  return jnp.sum(dg, axis=-1, keepdims=True) if g.shape[-1] == 1 else dg


def _gated_sum_forward(w, k, v, beta, g):
  return w * _decay(g) + outer(v, k), ()


def _gated_sum_backward(w_prev, w, dw, k, v, beta, g, res):
  alpha = _decay(g)
  return (dw * alpha, vecmat(v, dw), matvec(dw, k), jnp.zeros_like(beta),
          _decay_grad(dw, w_prev, alpha, g))


def _gated_delta_forward(w, k, v, beta, g):
  return _delta_forward(w * _decay(g), k, v, beta)     # W' = W diag(α), then the delta write


def _gated_delta_backward(w_prev, w, dw, k, v, beta, g, r):
  alpha = _decay(g)
  dw_decayed, dk, dv, dbeta = _delta_backward(w_prev * alpha, None, dw, k, v, beta, r)
  return dw_decayed * alpha, dk, dv, dbeta, _decay_grad(dw_decayed, w_prev, alpha, g)


SUM = Step(_sum_forward, lambda w, k, v, beta, res: w - outer(v, k), _sum_backward)
DELTA = Step(_delta_forward, lambda w, k, v, beta, r: w - outer(beta[..., None] * r, k),
             _delta_backward)
FWM = Step(_fwm_forward, None, _fwm_backward)
# The gated steps are not undone: W_{t-1} = (W_t − u kᵀ) / α divides by gates that may be
# e^-8, which would amplify rounding 3000-fold per step; their backward reruns each segment
# forward from its stored start, as fwm's does.
GATED_SUM = Step(_gated_sum_forward, None, _gated_sum_backward)
GATED_DELTA = Step(_gated_delta_forward, None, _gated_delta_backward)




def read(w, q):
  """y = W q, or None when there is no query (only the final state is wanted)."""
  return None if q is None else matvec(w, q)


def recurrent(step: Step, segment: int, w0, q, k, v, beta, g=None):
  """The recurrent form of the rule whose step is `step`: a scan over time in segments of at
  most `segment` steps, with the hand-written backward of `_scan`. Public layout: q, k
  [B, T, H, K], v [B, T, H, V], beta [B, T, H] or None, g (the gated rules' log-decay)
  [B, T, H, 1] or [B, T, H, K], w0 [B, H, V, K]; returns (y, W_T)."""
  b, t, h, d_key = k.shape
  d_value = v.shape[-1]
  num_segments, seg = equal_segments(t, segment)
  pad = num_segments * seg - t         # < num_segments
  if beta is None:
    beta = jnp.ones(k.shape[:3], k.dtype)

  def segments(x):  # [B, T, H, ...] -> [S, seg, B·H, ...]; zero k, v, β, g leave W unchanged
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x, 1, 0).reshape((num_segments, seg, b * h) + x.shape[3:])

  xs = tuple(segments(x) for x in (k, v, beta) + (() if g is None else (g,)))
  qs = None if q is None else segments(q)
  y, w = _scan(step, w0.reshape(b * h, d_value, d_key), qs, xs)
  w = w.reshape(b, h, d_value, d_key)
  if q is None:
    return None, w
  y = y.reshape(num_segments * seg, b, h, d_value)[:t]
  return jnp.moveaxis(y, 0, 1), w


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(step, w0, qs, xs):
  return _forward(step, w0, qs, xs)[0]


def _forward(step, w0, qs, xs):
  """(y, W_T) and what the backward needs: W at each segment start and each step's residual."""
  def inner(w, x):
    q_t, x = x
    w, res = step.forward(w, *x)
    return w, (read(w, q_t), res)

  def outer(w, x):
    w_end, (y, res) = jax.lax.scan(inner, w, x)
    return w_end, (w, y, res)

  w_last, (starts, y, res) = jax.lax.scan(outer, w0, (qs, xs))
  return (y, w_last), (starts, w_last, qs, xs, res)


def _backward(step, saved, cotangents):
  """Walks each segment back from its end. Invertible steps (sum, delta) undo one step at a time
  from the exact end state; fwm, whose normalisation would amplify rounding when undone, reruns
  the segment forward from its stored start and keeps its states."""
  starts, w_last, qs, xs, res = saved
  dy, dw_last = cotangents

  def step_back(w_prev, w, dw, x):
    q_t, dy_t, x_t, res_t = x
    dq = None
    if q_t is not None:                 # y_t = W_t q_t
      dq = vecmat(dy_t, w)
      dw = dw + outer(dy_t, q_t)
    dw, *dx = step.backward(w_prev, w, dw, *x_t, res_t)
    return dw, (dq, tuple(dx))

  def undo(carry, x):
    w, dw = carry
    w_prev = step.inverse(w, *x[2], x[3])
    dw, grads = step_back(w_prev, w, dw, x)
    return (w_prev, dw), grads

  def redo(dw, x):
    w_prev, x = x
    w, _ = step.forward(w_prev, *x[2])
    return step_back(w_prev, w, dw, x)

  def segment(dw, x):
    w_start, w_end, x = x
    if step.inverse is not None:
      (_, dw), grads = jax.lax.scan(undo, (w_end, dw), x, reverse=True)
    else:
      _, w_prevs = jax.lax.scan(lambda w, x_t: (step.forward(w, *x_t)[0], w), w_start, x[2])
      dw, grads = jax.lax.scan(redo, dw, (w_prevs, x), reverse=True)
    return dw, grads

  ends = jnp.concatenate([starts[1:], w_last[None]])
  dw0, (dqs, dxs) = jax.lax.scan(segment, dw_last, (starts, ends, (qs, dy, xs, res)),
                                 reverse=True)
  return dw0, dqs, dxs


_scan.defvjp(_forward, _backward)
