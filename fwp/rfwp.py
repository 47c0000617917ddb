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
the fast weights once per REMAT_SEGMENT steps and walks back by undoing writes (fwp.rfwp_scan,
the engine the three share).
With the recurrent parts at zero (R_0 = 0 and v^r = 0, so R stays 0; or R_q = R_k = R_v = 0 and
r_b = 0) the Delta RNN and the RDN are exactly the Delta Net (tests/fwp/test_rfwp.py proves it).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fwp import rfwp_scan
from fwp.ops.linalg import matvec
from fwp.rfwp_scan import Model, step

RECURRENCES = ("delta_rnn", "delta_lstm", "rdn")
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


def _delta_rnn_in(params, vectors, x):
  del params
  _, kr, vr, br = x
  return kr, vr, br, jax.nn.softmax(vectors[0], axis=-1)


def _delta_rnn_out(params, vectors, x, read):
  del params, vectors
  y = x[0] + read
  return y, (y,)


def _delta_lstm_in(params, vectors, x):
  del params
  z, kr, vr, br = x
  s = jax.nn.softmax(vectors[0], axis=-1)[:, :, None]                   # one read for 3 gates
  return kr, vr, br, jnp.broadcast_to(s, z.shape)


def _delta_lstm_out(params, vectors, x, read):
  del params
  a = x[0] + read                                                          # [B, H, 3, V]
  i, u, o = jax.nn.sigmoid(a[:, :, 0]), a[:, :, 1], jax.nn.sigmoid(a[:, :, 2])
  c = i * u + (1.0 - i) * vectors[1]
  y = o * c
  return y, (y, c)


def _rdn_in(phi, params: RDNWeights, vectors, x):
  h = jnp.tanh(vectors[0])
  qx, kx, vx, bx = x
  q = phi(qx + jnp.einsum("bhv,hvd->bhd", h, params.rq), True)
  if kx is None:
    return None, None, None, q
  k = phi(kx + jnp.einsum("bhv,hvd->bhd", h, params.rk), False)
  v = vx + jnp.einsum("bhv,hvu->bhu", h, params.rv)
  beta = jax.nn.sigmoid(bx + jnp.einsum("bhv,hv->bh", h, params.rb))
  return k, v, beta, q


def _rdn_out(params, vectors, x, read):
  del params, vectors, x
  return read, (read,)


DELTA_RNN = Model(_delta_rnn_in, _delta_rnn_out)
DELTA_LSTM = Model(_delta_lstm_in, _delta_lstm_out)


def _rdn_model(phi) -> Model:
  return Model(functools.partial(_rdn_in, phi), _rdn_out)


def recurrent_writes(projected, v: int):
  """The Delta RNN / LSTM's recurrent write from one projection [..., 2V + 1]: the key
  (softmax, as the authors'), the value and β (sigmoid)."""
  return (jax.nn.softmax(projected[..., :v], axis=-1), projected[..., v:2 * v],
          jax.nn.sigmoid(projected[..., 2 * v]))


# Single steps (streaming / generation): [B, H, ·] inputs, one time step. Each returns (y, state).

def delta_rnn_step(state: DeltaRNNState, z, kr, vr, br, *, write: bool = True):
  """z, kr, vr [B, H, V], br [B, H]. `write=False` reads without writing (kr, vr, br unused): a
  query after the sequence."""
  if not write:
    y = z + matvec(state.r, jax.nn.softmax(state.y, axis=-1))
    return y, DeltaRNNState(state.r, y)
  y, r, _, _ = step(DELTA_RNN, (), state.r, (state.y,), (z, kr, vr, br))
  return y, DeltaRNNState(r, y)


def delta_lstm_step(state: DeltaLSTMState, z, kr, vr, br, *, write: bool = True):
  """z, kr, vr [B, H, 3, V], br [B, H, 3]: the gates' feed-forward outputs and recurrent writes
  (`write=False`: read only, kr, vr, br unused)."""
  if not write:   # a write with β = 0 changes nothing
    kr, vr, br = jnp.zeros_like(z), jnp.zeros_like(z), jnp.zeros(z.shape[:-1], z.dtype)
  y, r, (_, c), _ = step(DELTA_LSTM, (), state.r, (state.y, state.c), (z, kr, vr, br))
  return y, DeltaLSTMState(r, y, c)


def rdn_step(state: RDNState, qx, kx, vx, bx, weights: RDNWeights,
             phi: Callable | None = None, *, write: bool = True):
  """qx, kx [B, H, D], vx [B, H, V], bx [B, H] (β's logit): the feed-forward parts of q, k, v, β.
  `phi(x, is_query)` maps [..., D] to [..., K] (None: the identity, K = D). `write=False` reads
  W with the recurrent query and writes nothing (kx, vx, bx unused)."""
  phi = _identity if phi is None else phi
  if not write:
    _, _, _, q = _rdn_in(phi, weights, (state.y,), (qx, None, None, None))
    return matvec(state.w, q), state
  y, w, _, _ = step(_rdn_model(phi), weights, state.w, (state.y,), (qx, kx, vx, bx))
  return y, RDNState(w, y)


def _identity(x, is_query):
  del is_query
  return x


def delta_rnn(z, kr, vr, br, *, initial_state: DeltaRNNState | None = None):
  """y [B, T, H, V] and the final DeltaRNNState; see the module docstring."""
  _check(z, {"kr": kr, "vr": vr}, br, "z")
  b, _, h, v = z.shape
  dtype = jnp.result_type(z, kr, vr, br)
  if initial_state is None:
    initial_state = DeltaRNNState(jnp.zeros((b, h, v, v), dtype), jnp.zeros((b, h, v), dtype))
  _check_state(initial_state, DeltaRNNState((b, h, v, v), (b, h, v)))
  y, r, (y_last,) = rfwp_scan.scan_outputs(DELTA_RNN, (), initial_state.r, (initial_state.y,),
                                  (z, kr, vr, br))
  return y, DeltaRNNState(r, y_last)


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
  y, r, (y_last, c) = rfwp_scan.scan_outputs(DELTA_LSTM, (), initial_state.r,
                                    (initial_state.y, initial_state.c), (z, kr, vr, br))
  return y, DeltaLSTMState(r, y_last, c)


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
  y, w, (y_last,) = rfwp_scan.scan_outputs(_rdn_model(phi_), weights, initial_state.w,
                                  (initial_state.y,), (qx, kx, vx, bx))
  return y, RDNState(w, y_last)


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
