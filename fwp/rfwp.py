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
the fast weights once per REMAT_SEGMENT steps and walks back by undoing writes (see "The scan").
With the recurrent parts at zero (R_0 = 0 and v^r = 0, so R stays 0; or R_q = R_k = R_v = 0 and
r_b = 0) the Delta RNN and the RDN are exactly the Delta Net (tests/test_rfwp.py proves it).
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
# Each model is one fast weight matrix M (a gate axis for the LSTM) between two vector functions:
#   vec_in(params, vectors_{t-1}, x_t) -> (k, v, β, r): the write M_t = M_{t-1} + β (v − M k) kᵀ
#                                         and the read-out vector r
#   vec_out(params, vectors_{t-1}, x_t, M_t r) -> (y_t, vectors_t)
# The backward pass differentiates the vector functions with jax.vjp (small) and the matrix
# step by hand (see "The scan").

class _Model(NamedTuple):
  vec_in: Callable
  vec_out: Callable


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


DELTA_RNN = _Model(_delta_rnn_in, _delta_rnn_out)
DELTA_LSTM = _Model(_delta_lstm_in, _delta_lstm_out)


def _rdn_model(phi) -> _Model:
  return _Model(functools.partial(_rdn_in, phi), _rdn_out)


def _step(model: _Model, params, m, vectors, x):
  """One step: (y, M_t, vectors_t, (u, k, c, read)) with c = v − M_{t-1} k, u = β c,
  M_t = M_{t-1} + u kᵀ and read = M_t r (c and read are kept for the backward, which then need
  not recompute them from the matrices)."""
  k, v, beta, r = model.vec_in(params, vectors, x)
  c = v - _read(m, k)
  u = beta[..., None] * c
  m = m + _outer(u, k)
  read = _read(m, r)
  y, vectors = model.vec_out(params, vectors, x, read)
  return y, m, vectors, (u, k, c, read)


def _read_t(m, x):           # Mᵀ x
  return jnp.einsum("...vk,...v->...k", m, x)


def _outer(a, b):
  return a[..., :, None] * b[..., None, :]


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
    y = z + _read(state.r, jax.nn.softmax(state.y, axis=-1))
    return y, DeltaRNNState(state.r, y)
  y, r, _, _ = _step(DELTA_RNN, (), state.r, (state.y,), (z, kr, vr, br))
  return y, DeltaRNNState(r, y)


def delta_lstm_step(state: DeltaLSTMState, z, kr, vr, br, *, write: bool = True):
  """z, kr, vr [B, H, 3, V], br [B, H, 3]: the gates' feed-forward outputs and recurrent writes
  (`write=False`: read only, kr, vr, br unused)."""
  if not write:   # a write with β = 0 changes nothing
    kr, vr, br = jnp.zeros_like(z), jnp.zeros_like(z), jnp.zeros(z.shape[:-1], z.dtype)
  y, r, (_, c), _ = _step(DELTA_LSTM, (), state.r, (state.y, state.c), (z, kr, vr, br))
  return y, DeltaLSTMState(r, y, c)


def rdn_step(state: RDNState, qx, kx, vx, bx, weights: RDNWeights,
             phi: Callable | None = None, *, write: bool = True):
  """qx, kx [B, H, D], vx [B, H, V], bx [B, H] (β's logit): the feed-forward parts of q, k, v, β.
  `phi(x, is_query)` maps [..., D] to [..., K] (None: the identity, K = D). `write=False` reads
  W with the recurrent query and writes nothing (kx, vx, bx unused)."""
  phi = _identity if phi is None else phi
  if not write:
    _, _, _, q = _rdn_in(phi, weights, (state.y,), (qx, None, None, None))
    return _read(state.w, q), state
  y, w, _, _ = _step(_rdn_model(phi), weights, state.w, (state.y,), (qx, kx, vx, bx))
  return y, RDNState(w, y)


def _identity(x, is_query):
  del is_query
  return x


# ---------------------------------------------------------------------------------------------
# The scan, with a hand-written backward. Differentiating lax.scan stores every step's fast
# weights (T·V² numbers per memory); on a CPU it ran ~45x slower than the forward (Delta RNN,
# B = 32, T = 400, V = 200: 110 ms forward, 5.0 s forward + backward), and jax.vjp of a whole
# step inside the backward scan was no better (XLA:CPU ran its transposed products ~10x slower
# than the same products written out). Here the forward keeps M once per REMAT_SEGMENT steps
# plus a few vectors per step (the vector state before the step, each write's u, k and
# correction c = v − M_{t-1} k, and the read); the backward walks each segment back from its
# exact end, undoing one write at a time (M_{t-1} = M_t − u_t k_tᵀ), differentiates the matrix
# step by hand and the vector functions with jax.vjp. Rounding from the undoing cannot build up
# beyond one segment.

def _scan_segments(model, params, m, vectors, xs):
  """Forward over time-major xs: (ys, M_T, vectors_T, residuals)."""
  def body(carry, x):
    m, vectors = carry
    y, m_t, vectors_t, write = _step(model, params, m, vectors, x)
    return (m_t, vectors_t), (y, vectors, write)

  def segment(carry, seg_xs):
    start = carry[0]
    carry, per_step = jax.lax.scan(body, carry, seg_xs)
    return carry, (start, per_step)

  carry, ys, saved = (m, vectors), [], []
  for stacked, seg_xs in _split_segments(xs):
    carry, (starts, (y, vectors_prev, writes)) = (
        jax.lax.scan(segment, carry, seg_xs) if stacked else segment(carry, seg_xs))
    ys.append(_unstack(y, stacked))
    saved.append((starts, vectors_prev, writes))   # M at each segment's start; per-step vectors
  return jnp.concatenate(ys, axis=0), carry[0], carry[1], (params, carry[0], xs, saved)


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


def _step_backward(model, params, m, dm, dvectors, x, vectors_prev, write, dy):
  """One step back: from M_t and the cotangents of y_t, M_t, vectors_t to M_{t-1} and the
  cotangents of M_{t-1}, vectors_{t-1}, x_t and params. The cotangent of M_t, dM + dread rᵀ, is
  never formed, only its products with k and u: at the authors' sizes the matrices outgrow the
  caches, and each pass over one costs more than all the vector work of the step."""
  u, k, c, read = write
  m_prev = m - _outer(u, k)
  (_, v, beta, r), vjp_in = jax.vjp(model.vec_in, params, vectors_prev, x)
  _, vjp_out = jax.vjp(model.vec_out, params, vectors_prev, x, read)
  dp_out, dvec_out, dx_out, dread = vjp_out((dy, dvectors))
  # read = M_t r;  M_t = M_{t-1} + u kᵀ;  u = β c;  c = v − M_{t-1} k
  dot = lambda a, b: jnp.sum(a * b, axis=-1, keepdims=True)
  du = _read(dm, k) + dread * dot(r, k)                   # (dM + dread rᵀ) k
  dbeta = jnp.sum(du * c, axis=-1)
  dc = beta[..., None] * du
  dr = _read_t(m, dread)
  dk = _read_t(dm, u) + r * dot(dread, u) - _read_t(m_prev, dc)   # (dM + dread rᵀ)ᵀ u − …
  dm_prev = dm + _outer(dread, r) - _outer(dc, k)
  dp_in, dvec_in, dx_in = vjp_in((dk, dc, dbeta, dr))
  add = lambda a, b: jax.tree.map(jnp.add, a, b)
  return m_prev, dm_prev, add(dvec_in, dvec_out), add(dx_in, dx_out), add(dp_in, dp_out)


def _backward(model, residuals, cotangents):
  params, m_end, xs, saved = residuals
  dys, dm, dvectors = cotangents
  dparams = jax.tree.map(jnp.zeros_like, params)

  def step_back(carry, inputs):
    m, dm, dvectors, dparams = carry
    x, vectors_prev, write, dy = inputs
    m, dm, dvectors, dx, dp = _step_backward(model, params, m, dm, dvectors, x, vectors_prev,
                                             write, dy)
    return (m, dm, dvectors, jax.tree.map(jnp.add, dparams, dp)), dx

  def segment_back(carry, seg):
    end, per_step = seg
    return jax.lax.scan(step_back, (end,) + carry[1:], per_step, reverse=True)

  # Each segment's exact end state is the next one's start (the last one's: M_T).
  carry, end, dx_parts = (m_end, dm, dvectors, dparams), m_end, []
  for (starts, vectors_prev, writes), (stacked, seg_xs), (_, seg_dys) in reversed(
      list(zip(saved, _split_segments(xs), _split_segments(dys)))):
    per_step = (seg_xs, vectors_prev, writes, seg_dys)
    if stacked:
      ends = jnp.concatenate([starts[1:], end[None]], axis=0)
      carry, dx = jax.lax.scan(segment_back, carry, (ends, per_step), reverse=True)
      dx = jax.tree.map(lambda a: _unstack(a, True), dx)
      end = starts[0]
    else:
      carry, dx = segment_back(carry, (end, per_step))
      end = starts
    dx_parts.append(dx)
  _, dm0, dvectors0, dparams = carry
  dxs = jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *reversed(dx_parts))
  return dparams, dm0, dvectors0, dxs


def _fast_scan(model: _Model, params, m, vectors, xs):
  """(ys, M_T, vectors_T) of `model` over time-major xs, with the backward above. Arrays that
  the vector functions close over (e.g. a FAVOR+ projection inside φ) become explicit inputs."""
  x0 = jax.tree.map(lambda a: a[0], xs)
  vec_in, consts_in = jax.closure_convert(model.vec_in, params, vectors, x0)
  k, v, beta, r = jax.eval_shape(model.vec_in, params, vectors, x0)
  read = jax.ShapeDtypeStruct(v.shape, v.dtype)
  vec_out, consts_out = jax.closure_convert(model.vec_out, params, vectors, x0, read)
  return _scan_with_consts((vec_in, vec_out, len(consts_in)), (tuple(consts_in),
                           tuple(consts_out)), params, m, vectors, xs)


def _with_consts(converted, params):
  """The model whose vector functions take (params, consts) as their params."""
  vec_in, vec_out, _ = converted
  return _Model(lambda p, *a: vec_in(p[0], *a, *p[1][0]),
                lambda p, *a: vec_out(p[0], *a, *p[1][1]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan_with_consts(converted, consts, params, m, vectors, xs):
  ys, m, vectors, _ = _scan_segments(_with_consts(converted, params), (params, consts), m,
                                     vectors, xs)
  return ys, m, vectors


def _scan_with_consts_fwd(converted, consts, params, m, vectors, xs):
  ys, m, vectors, residuals = _scan_segments(_with_consts(converted, params), (params, consts),
                                             m, vectors, xs)
  return (ys, m, vectors), residuals


def _scan_with_consts_bwd(converted, residuals, cotangents):
  (dparams, dconsts), dm, dvectors, dxs = _backward(_with_consts(converted, None), residuals,
                                                    cotangents)
  return dconsts, dparams, dm, dvectors, dxs


_scan_with_consts.defvjp(_scan_with_consts_fwd, _scan_with_consts_bwd)


# The backward walks M and its cotangent back together. Once the two outgrow the last-level cache,
# every step of the walk goes to memory: the Delta LSTM at the retrieval task's S = 200 (three
# [200, 200] memories per sequence, 15 MB for a batch of 32) took 1.45 s for forward + backward
# where the forward took 0.17 s. The sequences of a batch are independent recurrences, so on a CPU
# the scan runs over blocks of the batch, one block after another, each block's fast weights at
# most CPU_BLOCK_BYTES (2-core CPU, one run: 1.45 s -> 0.81 s with blocks of 8; the Delta RNN's
# 5 MB batch was no faster split; see docs/performance.md). Other backends run the whole batch at
# once. None: never split.
CPU_BLOCK_BYTES = 6 << 20


def _batch_block(m) -> int:
  """The number of sequences per block: the largest divisor of the batch whose fast weights fit
  CPU_BLOCK_BYTES (the whole batch off the CPU)."""
  batch = m.shape[0]
  if CPU_BLOCK_BYTES is None or jax.default_backend() != "cpu":
    return batch
  per_sequence = m.size // batch * m.dtype.itemsize
  return max([d for d in range(1, batch + 1)
              if batch % d == 0 and d * per_sequence <= CPU_BLOCK_BYTES], default=1)


def _scan_outputs(model, params, m, vectors, xs):
  """Runs `model` over the time axis (1) of xs; returns (y [B, T, ...], M_T, vectors_T)."""
  def scan(args):
    m, vectors, xs = args
    ys, m, vectors = _fast_scan(model, params, m, vectors,
                                tuple(jnp.moveaxis(a, 1, 0) for a in xs))
    return jnp.moveaxis(ys, 0, 1), m, vectors

  batch, block = m.shape[0], _batch_block(m)
  if block == batch:
    return scan((m, vectors, xs))
  split = lambda a: a.reshape((batch // block, block) + a.shape[1:])
  out = jax.lax.map(scan, jax.tree.map(split, (m, vectors, xs)))
  return jax.tree.map(lambda a: a.reshape((batch,) + a.shape[2:]), out)


def delta_rnn(z, kr, vr, br, *, initial_state: DeltaRNNState | None = None):
  """y [B, T, H, V] and the final DeltaRNNState; see the module docstring."""
  _check(z, {"kr": kr, "vr": vr}, br, "z")
  b, _, h, v = z.shape
  dtype = jnp.result_type(z, kr, vr, br)
  if initial_state is None:
    initial_state = DeltaRNNState(jnp.zeros((b, h, v, v), dtype), jnp.zeros((b, h, v), dtype))
  _check_state(initial_state, DeltaRNNState((b, h, v, v), (b, h, v)))
  y, r, (y_last,) = _scan_outputs(DELTA_RNN, (), initial_state.r, (initial_state.y,),
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
  y, r, (y_last, c) = _scan_outputs(DELTA_LSTM, (), initial_state.r,
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
  y, w, (y_last,) = _scan_outputs(_rdn_model(phi_), weights, initial_state.w,
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
