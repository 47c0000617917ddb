"""The engine of the recurrent FWPs (fwp.rfwp): one fast weight matrix between two vector
functions, a step, and its scan over time with a hand-written backward.

Each model is one fast weight matrix M (a gate axis for the LSTM) between two vector functions:
  vec_in(params, vectors_{t-1}, x_t) -> (k, v, β, r): the write M_t = M_{t-1} + β (v − M k) kᵀ
                                        and the read-out vector r
  vec_out(params, vectors_{t-1}, x_t, M_t r) -> (y_t, vectors_t)
The backward pass differentiates the vector functions with jax.vjp (small) and the matrix
step by hand (see "The scan").
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fwp.ops.linalg import matvec, outer, vecmat

REMAT_SEGMENT = 64


class Model(NamedTuple):
  vec_in: Callable
  vec_out: Callable


def step(model: Model, params, m, vectors, x):
  """One step: (y, M_t, vectors_t, (u, k, c, read)) with c = v − M_{t-1} k, u = β c,
  M_t = M_{t-1} + u kᵀ and read = M_t r (c and read are kept for the backward, which then need
  not recompute them from the matrices)."""
  k, v, beta, r = model.vec_in(params, vectors, x)
  c = v - matvec(m, k)
  u = beta[..., None] * c
  m = m + outer(u, k)
  read = matvec(m, r)
  y, vectors = model.vec_out(params, vectors, x, read)
  return y, m, vectors, (u, k, c, read)


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
    y, m_t, vectors_t, write = step(model, params, m, vectors, x)
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
  m_prev = m - outer(u, k)
  (_, v, beta, r), vjp_in = jax.vjp(model.vec_in, params, vectors_prev, x)
  _, vjp_out = jax.vjp(model.vec_out, params, vectors_prev, x, read)
  dp_out, dvec_out, dx_out, dread = vjp_out((dy, dvectors))
  # read = M_t r;  M_t = M_{t-1} + u kᵀ;  u = β c;  c = v − M_{t-1} k
  dot = lambda a, b: jnp.sum(a * b, axis=-1, keepdims=True)
  du = matvec(dm, k) + dread * dot(r, k)                   # (dM + dread rᵀ) k
  dbeta = jnp.sum(du * c, axis=-1)
  dc = beta[..., None] * du
  dr = vecmat(dread, m)
  dk = vecmat(u, dm) + r * dot(dread, u) - vecmat(dc, m_prev)   # (dM + dread rᵀ)ᵀ u − …
  dm_prev = dm + outer(dread, r) - outer(dc, k)
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


def _fast_scan(model: Model, params, m, vectors, xs):
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
  return Model(lambda p, *a: vec_in(p[0], *a, *p[1][0]),
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


def scan_outputs(model, params, m, vectors, xs):
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
