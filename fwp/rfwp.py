"""Recurrent fast weight programmers (Irie, Schlag, Csordás, Schmidhuber, NeurIPS 2021), as pure
functions: the recurrences of the authors' CUDA kernels (IDSIA/recurrent-fwp,
language_modeling/src/utils/{fast_weight_rnn_v2, fast_lstm_v4, rec_update_fwm_tanh}).

Shapes (public, per head V = d_value): z, kr, vr [B, T, H, V]; br [B, T, H]; states below.
Matrices map keys to values as in fwp.ops: R [.., V, V], W [.., V, K], read as R s, W q.

Delta RNN (the authors' "Delta RNN v2", attn_type 134). A Delta Net gives z_t = W_t q_t (any
form of `fwp.ops.delta_rule`: it does not depend on the outputs, so it runs in parallel or in
chunks); a second fast weight R, written by the delta rule with softmax keys, maps the previous
output back in:
    R_t = R_{t-1} + β^r_t (v^r_t − R_{t-1} k^r_t) ⊗ k^r_t,    k^r_t = softmax(·)
    y_t = z_t + R_t softmax(y_{t-1}),                          y_0 = 0
Delta LSTM (the authors' "Delta LSTM v4", attn_type 254). Three Delta Nets z^i, z^u, z^o (the
feed-forward parts, again in any form) and three recurrent fast weights R^g as above:
    a^g_t = z^g_t + R^g_t softmax(y_{t-1});  i = σ(a^i), o = σ(a^o), u = a^u
    c_t = i ⊙ u + (1 − i) ⊙ c_{t-1};         y_t = o ⊙ c_t
RDN, the Recurrent Delta Net (attn_type 934): the slow net itself is recurrent,
    h = tanh(y_{t-1});  q_t = φ(q^x_t + h R_q), k_t = φ(k^x_t + h R_k), v_t = v^x_t + h R_v,
    β_t = σ(b^x_t + h · r_b);  W_t = W_{t-1} + β_t (v_t − W_{t-1} k_t) ⊗ k_t;  y_t = W_t q_t
with R_q, R_k [H, V, D], R_v [H, V, V], r_b [H, V] learned per head (the kernel's layout) and φ
any feature map (the authors' kernel uses softmax; fwp's layers use their configured φ).

Every one of these is nonlinear in time (y_{t-1} goes through a softmax, tanh or the gates), so
its recurrent part is a scan of the single-step function, with a hand-written backward that keeps
the fast weights once per REMAT_SEGMENT steps and walks back by undoing writes (see "The scan"). With the recurrent weights at zero
(R = 0 and β^r = 0, or R_q = R_k = R_v = 0 and r_b = 0) the Delta RNN and the RDN are exactly the
Delta Net (tests/test_rfwp.py proves it).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

RECURRENCES = ("delta_rnn", "delta_lstm", "rdn")
REMAT_SEGMENT = 64
GATES = 3            # Delta LSTM: input gate i, update u, output gate o (in this order)


class DeltaRNNState(NamedTuple):
  r: jax.Array       # [B, H, V, V] the recurrent fast weight
  y: jax.Array       # [B, H, V] the last output


class DeltaLSTMState(NamedTuple):
  r: jax.Array       # [B, H, 3, V, V] one recurrent fast weight per gate (i, u, o)
  y: jax.Array       # [B, H, V]
  c: jax.Array       # [B, H, V] the cell


class RDNState(NamedTuple):
  w: jax.Array       # [B, H, V, K] the fast weight
  y: jax.Array       # [B, H, V]


class RDNWeights(NamedTuple):
  """The recurrent slow weights of an RDN: q, k, v and β also read tanh(y_{t-1})."""
  rq: jax.Array      # [H, V, D] (D: q, k before φ)
  rk: jax.Array      # [H, V, D]
  rv: jax.Array      # [H, V, V]
  rb: jax.Array      # [H, V]


def _read(m, x):
  return jnp.einsum("...vk,...k->...v", m, x)


# ---------------------------------------------------------------------------------------------
# One step of each model on its state split into fast weight matrices and vectors. Each returns
# (y, matrices, vectors, writes): writes holds, per matrix, the (u, k) of its update
# M_t = M_{t-1} + u kᵀ, which the backward pass subtracts to walk back in time.

def _write(m, k, v, beta):
  """The delta rule's write: (M + u kᵀ, (u, k)) with u = β (v − M k)."""
  u = beta[..., None] * (v - _read(m, k))
  return m + u[..., :, None] * k[..., None, :], (u, k)


def _delta_rnn_core(params, matrices, vectors, x):
  del params
  (r,), (y_prev,) = matrices, vectors
  z, kr, vr, br = x
  r, writes = _write(r, kr, vr, br)
  y = z + _read(r, jax.nn.softmax(y_prev, axis=-1))
  return y, (r,), (y,), (writes,)


def _delta_lstm_core(params, matrices, vectors, x):
  del params
  (r,), (y_prev, c_prev) = matrices, vectors
  z, kr, vr, br = x
  r, writes = _write(r, kr, vr, br)
  a = z + _read(r, jax.nn.softmax(y_prev, axis=-1)[:, :, None])             # [B, H, 3, V]
  i, u, o = jax.nn.sigmoid(a[:, :, 0]), a[:, :, 1], jax.nn.sigmoid(a[:, :, 2])
  c = i * u + (1.0 - i) * c_prev
  y = o * c
  return y, (r,), (y, c), (writes,)


def _rdn_inputs(weights: RDNWeights, phi, y_prev, qx, kx, vx, bx):
  h = jnp.tanh(y_prev)
  q = phi(qx + jnp.einsum("bhv,hvd->bhd", h, weights.rq), True)
  if kx is None:
    return q, None, None, None
  k = phi(kx + jnp.einsum("bhv,hvd->bhd", h, weights.rk), False)
  v = vx + jnp.einsum("bhv,hvu->bhu", h, weights.rv)
  beta = jax.nn.sigmoid(bx + jnp.einsum("bhv,hv->bh", h, weights.rb))
  return q, k, v, beta


def _rdn_core(phi, params, matrices, vectors, x):
  (w,), (y_prev,) = matrices, vectors
  q, k, v, beta = _rdn_inputs(params, phi, y_prev, *x)
  w, writes = _write(w, k, v, beta)
  y = _read(w, q)
  return y, (w,), (y,), (writes,)


# Single steps (streaming / generation): [B, H, ·] inputs, one time step. Each returns (y, state).

def delta_rnn_step(state: DeltaRNNState, z, kr, vr, br, *, write: bool = True):
  """z, kr, vr [B, H, V], br [B, H]. `write=False` reads without writing (kr, vr, br unused): a
  query after the sequence."""
  if not write:
    y = z + _read(state.r, jax.nn.softmax(state.y, axis=-1))
    return y, DeltaRNNState(state.r, y)
  y, (r,), _, _ = _delta_rnn_core((), (state.r,), (state.y,), (z, kr, vr, br))
  return y, DeltaRNNState(r, y)


def delta_lstm_step(state: DeltaLSTMState, z, kr, vr, br, *, write: bool = True):
  """z, kr, vr [B, H, 3, V], br [B, H, 3]: the gates' feed-forward outputs and recurrent writes
  (`write=False`: read only, kr, vr, br unused)."""
  if not write:   # a write with β = 0 changes nothing
    kr, vr, br = jnp.zeros_like(z), jnp.zeros_like(z), jnp.zeros(z.shape[:-1], z.dtype)
  y, (r,), (_, c), _ = _delta_lstm_core((), (state.r,), (state.y, state.c), (z, kr, vr, br))
  return y, DeltaLSTMState(r, y, c)


def rdn_step(state: RDNState, qx, kx, vx, bx, weights: RDNWeights,
             phi: Callable | None = None, *, write: bool = True):
  """qx, kx [B, H, D], vx [B, H, V], bx [B, H] (β's logit): the feed-forward parts of q, k, v, β.
  `phi(x, is_query)` maps [..., D] to [..., K] (None: the identity, K = D). `write=False` reads
  W with the recurrent query and writes nothing (kx, vx, bx unused)."""
  phi = _identity if phi is None else phi
  if not write:
    q, _, _, _ = _rdn_inputs(weights, phi, state.y, qx, None, None, None)
    return _read(state.w, q), state
  y, (w,), _, _ = _rdn_core(phi, weights, (state.w,), (state.y,), (qx, kx, vx, bx))
  return y, RDNState(w, y)


def _identity(x, is_query):
  del is_query
  return x


# ---------------------------------------------------------------------------------------------
# The scan, with a hand-written backward. Differentiating lax.scan stores every step's fast
# weights (T·V² numbers per memory) and on a CPU ran ~45x slower than the forward (Delta RNN,
# B = 32, T = 400, V = 200: 110 ms forward, 5.0 s forward + backward). Here the forward keeps the
# matrices once per REMAT_SEGMENT steps plus a few vectors per step (the vector state before the
# step, and each write's u and k); the backward walks each segment back from its exact end,
# undoing one write at a time (M_{t-1} = M_t − u_t k_tᵀ), and takes each step's vjp at the
# reconstructed state. Rounding from the undoing cannot build up beyond one segment.

def _scan_segments(core, params, matrices, vectors, xs):
  """Forward over time-major xs: (ys, matrices_T, vectors_T, residuals)."""
  def body(carry, x):
    matrices, vectors = carry
    y, matrices_t, vectors_t, writes = core(params, matrices, vectors, x)
    return (matrices_t, vectors_t), (y, vectors, writes)

  def segment(carry, seg_xs):
    start = carry[0]
    carry, per_step = jax.lax.scan(body, carry, seg_xs)
    return carry, (start, per_step)

  carry, outputs = (matrices, vectors), []
  for stacked, seg_xs in _split_segments(xs):
    carry, (starts, per_step) = (jax.lax.scan(segment, carry, seg_xs) if stacked
                                 else segment(carry, seg_xs))
    outputs.append((starts, per_step[1:]))         # the matrices at each segment's start
    outputs[-1] = (starts, per_step[1:], _unstack(per_step[0], stacked))
  ys = jnp.concatenate([out[2] for out in outputs], axis=0)
  return ys, carry[0], carry[1], (params, carry[0], xs, [out[:2] for out in outputs])


def _split_segments(xs):
  """(True, [n, SEGMENT, ...]) for the full segments, then (False, the remainder [r, ...])."""
  t = jax.tree.leaves(xs)[0].shape[0]
  full, rest = divmod(t, REMAT_SEGMENT)
  parts = []
  if full:
    parts.append((True, jax.tree.map(lambda a: a[:full * REMAT_SEGMENT].reshape(
        (full, REMAT_SEGMENT) + a.shape[1:]), xs)))
  if rest:
    parts.append((False, jax.tree.map(lambda a: a[full * REMAT_SEGMENT:], xs)))
  return parts


def _unstack(a, stacked):
  return a.reshape((-1,) + a.shape[2:]) if stacked else a


def _backward(core, residuals, cotangents):
  params, matrices_end, xs, outputs = residuals
  dys, dmatrices, dvectors = cotangents
  dparams = jax.tree.map(jnp.zeros_like, params)

  def step_back(carry, inputs):
    matrices, dmatrices, dvectors, dparams = carry
    x, vectors_prev, writes, dy = inputs
    matrices_prev = tuple(m - u[..., :, None] * k[..., None, :]
                          for m, (u, k) in zip(matrices, writes))
    fn = lambda p, m, v, x_: core(p, m, v, x_)[:3]
    _, vjp = jax.vjp(fn, params, matrices_prev, vectors_prev, x)
    dp, dm, dv, dx = vjp((dy, dmatrices, dvectors))
    dparams = jax.tree.map(jnp.add, dparams, dp)
    return (matrices_prev, dm, dv, dparams), dx

  def segment_back(carry, seg):
    _, dmatrices, dvectors, dparams = carry
    end, (seg_xs, vectors_prev, writes, dy) = seg
    carry, dxs = jax.lax.scan(step_back, (end, dmatrices, dvectors, dparams),
                              (seg_xs, vectors_prev, writes, dy), reverse=True)
    return carry, dxs

  # Each segment's exact end state is the next one's start (the last one's: matrices_end).
  t = jax.tree.leaves(xs)[0].shape[0]
  seg_xs, seg_dys = _split_segments(xs), _split_segments(dys)
  carry = (matrices_end, dmatrices, dvectors, dparams)
  dx_parts = []
  end = matrices_end
  for (starts, (vectors_prev, writes)), (stacked, xs_i), (_, dy_i) in reversed(
      list(zip(outputs, seg_xs, seg_dys))):
    if stacked:
      ends = jax.tree.map(lambda s, e: jnp.concatenate([s[1:], e[None]], axis=0), starts, end)
      carry, dx = jax.lax.scan(segment_back, carry, (ends, (xs_i, vectors_prev, writes, dy_i)),
                               reverse=True)
      dx = jax.tree.map(lambda a: _unstack(a, True), dx)
      end = jax.tree.map(lambda s: s[0], starts)
    else:
      carry, dx = segment_back(carry, (end, (xs_i, vectors_prev, writes, dy_i)))
      end = starts
    dx_parts.append(dx)
  _, dmatrices0, dvectors0, dparams = carry
  dxs = jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *reversed(dx_parts))
  del t
  return dparams, dmatrices0, dvectors0, dxs


def _fast_scan(core, params, matrices, vectors, xs):
  """(ys, matrices_T, vectors_T) of `core` over time-major xs, with the backward above.
  Arrays that `core` closes over (e.g. a FAVOR+ projection inside φ) become explicit inputs."""
  x0 = jax.tree.map(lambda a: a[0], xs)
  converted, consts = jax.closure_convert(core, params, matrices, vectors, x0)
  return _scan_with_consts(converted, tuple(consts), params, matrices, vectors, xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan_with_consts(core, consts, params, matrices, vectors, xs):
  ys, m, v, _ = _scan_segments(lambda *a: core(*a, *consts), params, matrices, vectors, xs)
  return ys, m, v


def _scan_with_consts_fwd(core, consts, params, matrices, vectors, xs):
  full_params = (params, consts)
  split = lambda p, *a: core(p[0], *a, *p[1])
  ys, m, v, residuals = _scan_segments(split, full_params, matrices, vectors, xs)
  return (ys, m, v), residuals


def _scan_with_consts_bwd(core, residuals, cotangents):
  split = lambda p, *a: core(p[0], *a, *p[1])
  (dparams, dconsts), dmatrices, dvectors, dxs = _backward(split, residuals, cotangents)
  return dconsts, dparams, dmatrices, dvectors, dxs


_scan_with_consts.defvjp(_scan_with_consts_fwd, _scan_with_consts_bwd)


def _scan_outputs(core, params, state_to_parts, parts_to_state, state, *xs):
  """Runs `core` over the time axis (1) of xs from `state`; returns (y [B, T, ...], state)."""
  matrices, vectors = state_to_parts(state)
  ys, matrices, vectors = _fast_scan(core, params, matrices, vectors,
                                     tuple(jnp.moveaxis(a, 1, 0) for a in xs))
  return jnp.moveaxis(ys, 0, 1), parts_to_state(matrices, vectors)


def delta_rnn(z, kr, vr, br, *, initial_state: DeltaRNNState | None = None):
  """y [B, T, H, V] and the final DeltaRNNState; see the module docstring."""
  _check(z, {"kr": kr, "vr": vr}, br, "z")
  b, _, h, v = z.shape
  dtype = jnp.result_type(z, kr, vr, br)
  if initial_state is None:
    initial_state = DeltaRNNState(jnp.zeros((b, h, v, v), dtype), jnp.zeros((b, h, v), dtype))
  _check_state(initial_state, DeltaRNNState((b, h, v, v), (b, h, v)))
  return _scan_outputs(_delta_rnn_core, (), lambda s: ((s.r,), (s.y,)),
                       lambda m, v: DeltaRNNState(*m, *v), initial_state, z, kr, vr, br)


def delta_lstm(z, kr, vr, br, *, initial_state: DeltaLSTMState | None = None):
  """z, kr, vr [B, T, H, 3, V] (gates i, u, o), br [B, T, H, 3] -> y [B, T, H, V], state."""
  if z.ndim != 5 or z.shape[3] != GATES:
    raise ValueError(f"z must be [batch, time, heads, 3 gates (i, u, o), d_value], got shape "
                     f"{z.shape}.")
  _check(z, {"kr": kr, "vr": vr}, br, "z", extra=(GATES,))
  b, _, h, _, v = z.shape
  dtype = jnp.result_type(z, kr, vr, br)
  if initial_state is None:
    zeros = jnp.zeros((b, h, v), dtype)
    initial_state = DeltaLSTMState(jnp.zeros((b, h, GATES, v, v), dtype), zeros, zeros)
  _check_state(initial_state, DeltaLSTMState((b, h, GATES, v, v), (b, h, v), (b, h, v)))
  return _scan_outputs(_delta_lstm_core, (), lambda s: ((s.r,), (s.y, s.c)),
                       lambda m, v: DeltaLSTMState(*m, *v), initial_state, z, kr, vr, br)


def rdn(qx, kx, vx, bx, weights: RDNWeights, *, phi: Callable | None = None,
        initial_state: RDNState | None = None):
  """qx, kx [B, T, H, D], vx [B, T, H, V], bx [B, T, H] -> y [B, T, H, V], the final RDNState.
  `phi(x, is_query)`: [..., D] -> [..., K] (None: identity)."""
  _check(qx, {"kx": kx}, bx, "qx")
  b, t, h, d = qx.shape
  if vx.ndim != 4 or vx.shape[:3] != (b, t, h):
    raise ValueError(f"vx must be [batch, time, heads, d_value] = [{b}, {t}, {h}, V], got "
                     f"{vx.shape}.")
  v = vx.shape[-1]
  expected = RDNWeights((h, v, d), (h, v, d), (h, v, v), (h, v))
  for name, got, want in zip(RDNWeights._fields, weights, expected):
    if tuple(got.shape) != want:
      raise ValueError(f"RDN weight {name} must have shape {want} [heads, ...], got {got.shape}.")
  phi_ = _identity if phi is None else phi
  k_dim = jax.eval_shape(lambda x: phi_(x, False), jax.ShapeDtypeStruct((1, d), qx.dtype)).shape[-1]
  dtype = jnp.result_type(qx, kx, vx, bx)
  if initial_state is None:
    initial_state = RDNState(jnp.zeros((b, h, v, k_dim), dtype), jnp.zeros((b, h, v), dtype))
  _check_state(initial_state, RDNState((b, h, v, k_dim), (b, h, v)))
  return _scan_outputs(functools.partial(_rdn_core, phi_), weights, lambda s: ((s.w,), (s.y,)),
                       lambda m, v: RDNState(*m, *v), initial_state, qx, kx, vx, bx)


# ---------------------------------------------------------------------------------------------
# Validation on static shapes and dtypes: runs before anything is traced.

def _check(x, same_shape: dict, beta, name: str, extra=()) -> None:
  arrays = {name: x, **same_shape, "beta": beta}
  for key, a in arrays.items():
    if not jnp.issubdtype(jnp.result_type(a), jnp.floating):
      raise ValueError(f"{key} must be a floating-point array, got dtype {a.dtype}; cast it with "
                       f".astype(jnp.float32).")
  if x.ndim != 4 + len(extra):
    raise ValueError(f"{name} must be [batch, time, heads, ...], got shape {x.shape}.")
  if min(x.shape) == 0:
    raise ValueError(f"{name} needs at least one batch row, time step, head and feature; got "
                     f"shape {x.shape}.")
  for key, a in same_shape.items():
    if a.shape != x.shape:
      raise ValueError(f"{key} must have {name}'s shape {x.shape}, got {a.shape}.")
  want = x.shape[:3] + tuple(extra)
  if beta.shape != want:
    raise ValueError(f"The write strength must be [batch, time, heads{', gates' * bool(extra)}] "
                     f"= {want}, got {beta.shape}.")


def _check_state(state, expected) -> None:
  for name, got, want in zip(type(expected)._fields, state, expected):
    if tuple(got.shape) != tuple(want):
      raise ValueError(f"initial_state.{name} must have shape {tuple(want)}, got {got.shape}.")
