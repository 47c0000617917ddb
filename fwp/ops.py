"""The fast-weight rules as pure functions, each in several forms that compute the same function.

Shapes (public): q, k [B, T, H, K] (already feature-mapped); v [B, T, H, V]; beta [B, T, H];
w and initial_state [B, H, V, K] (the paper's W, mapping keys to values); y [B, T, H, V].

Every rule writes before it reads:
  sum:   W_t = W_{t-1} + v_t ⊗ k_t
  delta: W_t = W_{t-1} + β_t (v_t − W_{t-1} k_t) ⊗ k_t
  fwm:   the delta update, then W_t ← W_t / max(1, ‖W_t‖_F)        (nonlinear in W)
  y_t = W_t q_t, and the returned w is W_T.

Forms (picked by name, one small function each):
  recurrent  jax.lax.scan over time with the single-step function; O(T) time, O(VK) state, and
             a hand-written backward that keeps W only once per REMAT_SEGMENT steps.
  parallel   the whole sequence as one block of matrix products; O(T²).
  chunked    parallel inside blocks of `chunk_size`, recurrent across blocks.
  auto       `choose_form`: for the sum rule parallel up to PARALLEL_MAX_T steps, chunked beyond;
             chunked for delta; recurrent for fwm; chunk_size="auto" is AUTO_CHUNK. Both
             constants come from the benchmark.

Inside a block of C steps starting from state W0 (rows of Q, K, V, U are time steps):
  sum:    Y = Q W0ᵀ + tril(QKᵀ) V,              W = W0 + Vᵀ K
  delta:  the write u_t = β_t (v_t − W_{t-1} k_t) satisfies (I + tril(diag(β) KKᵀ, −1)) U =
          diag(β)(V − K W0ᵀ), a unit lower-triangular system (the UT / WY form); then
          Y = Q W0ᵀ + tril(QKᵀ) U,              W = W0 + Uᵀ K
Internally blocks use the layout [B, H, T, ·] so every product is a batched matmul.
"""

from __future__ import annotations

import functools
import numbers
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

FORMS = ("recurrent", "parallel", "chunked")
AUTO = "auto"            # form="auto" / chunk_size="auto": chosen per shape, see choose_form
RULES = ("sum", "delta", "fwm")
# What the rules compute in (`accumulate=`): "float32" upcasts bfloat16/float16 inputs, so the
# state W is summed in float32 (float64 inputs stay float64); "input" computes in the inputs'
# dtype (pure bfloat16: half the memory traffic, and the errors of results/precision.md).
ACCUMULATE = ("float32", "input")
FWM_FORMS = ("recurrent",)


# ---------------------------------------------------------------------------------------------
# Validation: plain Python on static shapes, so it runs before anything is traced.

def validate(rule: str, form: str, chunk_size: int, accumulate: str = "float32") -> None:
  """ValueError naming the valid choices for an unknown rule, form, accumulation or a bad chunk
  size."""
  if accumulate not in ACCUMULATE:
    raise ValueError(f"Unknown accumulate {accumulate!r}; valid choices: "
                     f"{', '.join(ACCUMULATE)}.")
  if rule not in RULES:
    raise ValueError(f"Unknown update rule {rule!r}; valid choices: {', '.join(RULES)}.")
  valid = (FWM_FORMS if rule == "fwm" else FORMS) + (AUTO,)
  if form not in valid:
    if rule == "fwm" and form in FORMS:
      raise ValueError(
          f"The fwm rule has no {form!r} form: its update divides W by max(1, ‖W‖_F) after "
          f"every step, which is nonlinear in W, so it cannot be unrolled into matrix products. "
          f"Valid choices for fwm: {', '.join(valid)}.")
    raise ValueError(f"Unknown form {form!r} for the {rule} rule; valid choices: "
                     f"{', '.join(valid)}.")
  if chunk_size == AUTO:
    return
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or (
      chunk_size <= 0):
    raise ValueError(f"chunk_size must be a positive integer or 'auto', got {chunk_size!r}.")


# Crossovers measured with `python -m experiments.bench` on a 2-core CPU (results/bench.md):
# the O(T²) parallel form wins up to PARALLEL_MAX_T steps, chunks of AUTO_CHUNK beyond.
PARALLEL_MAX_T = 128
AUTO_CHUNK = 32


def choose_form(rule: str, form: str, t: int) -> str:
  """The concrete form for `form` (which may be "auto") at sequence length t."""
  if form != AUTO:
    return form
  if rule == "fwm":
    return "recurrent"
  if rule == "delta":   # its parallel form inverts a T×T system: chunks win from T = 256 down
    return "chunked"    # (and a sequence within one chunk is the parallel form anyway)
  return "parallel" if t <= PARALLEL_MAX_T else "chunked"


def choose_chunk_size(chunk_size, t: int) -> int:
  return min(AUTO_CHUNK, t) if chunk_size == AUTO else int(chunk_size)


def _check_shapes(q, k, v, beta, initial_state) -> None:
  """Shapes and dtypes, on static information only (works on tracers, before compiling).
  Values (NaN, Inf) cannot be checked here: they propagate, and the train loop stops on them."""
  for name, x in (("q", q), ("k", k), ("v", v), ("beta", beta), ("initial_state", initial_state)):
    if x is not None and not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      raise ValueError(f"{name} must be a floating-point array (float32, float64, bfloat16 or "
                       f"float16), got dtype {getattr(x, 'dtype', type(x).__name__)}; cast it "
                       f"with .astype(jnp.float32).")
  if k.ndim != 4:
    raise ValueError(f"k must be [batch, time, heads, d_key], got shape {k.shape}.")
  if q is not None and k.shape != q.shape:
    raise ValueError(f"k must have q's shape {q.shape} [batch, time, heads, d_key], "
                     f"got {k.shape}.")
  b, t, h, d_key = k.shape
  if min(b, t, h, d_key) == 0:
    raise ValueError(f"q, k, v need at least one batch row, time step, head and feature; got k "
                     f"of shape {k.shape} [batch, time, heads, d_key]. An empty sequence (T = 0) "
                     f"has no outputs: skip the call.")
  if v.ndim != 4 or v.shape[:3] != (b, t, h):
    raise ValueError(f"v must be [batch, time, heads, d_value] = [{b}, {t}, {h}, d_value] to "
                     f"match k, got {v.shape}.")
  if beta is not None and beta.shape != (b, t, h):
    raise ValueError(f"beta must be [batch, time, heads] = {(b, t, h)}, got {beta.shape}.")
  expected = (b, h, v.shape[-1], d_key)
  if initial_state is not None and initial_state.shape != expected:
    raise ValueError(f"initial_state must be [batch, heads, d_value, d_key] = {expected}, "
                     f"got {initial_state.shape}.")


def _zero_state(k, v, initial_state):
  if initial_state is not None:
    return initial_state
  b, _, h, d_key = k.shape
  return jnp.zeros((b, h, v.shape[-1], d_key), jnp.result_type(k, v))


# ---------------------------------------------------------------------------------------------
# The recurrent form. Differentiating a plain lax.scan stores W after every step (T·V·K numbers)
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


def _segment_length(rule: str) -> int:
  return min(REMAT_SEGMENT, FWM_SEGMENT) if rule == "fwm" else REMAT_SEGMENT


def _matvec(w, x):          # W x: [N, V, K] · [N, K] -> [N, V]
  return jnp.einsum("...vk,...k->...v", w, x)


def _vecmat(x, w):          # Wᵀ x: [N, V] · [N, V, K] -> [N, K]
  return jnp.einsum("...v,...vk->...k", x, w)


def _outer(a, b):
  return a[..., :, None] * b[..., None, :]


class _Step(NamedTuple):
  """One rule's step, its inverse and its backward. `forward(w, k, v, beta)` returns (W_t, res)
  with res a few numbers per step; `inverse(w_t, k, v, beta, res)` returns W_{t-1} (None: not
  undone, see `_recurrent_backward`);
  `backward(w_prev, w_t, dw_t, k, v, beta, res)` returns (dW_{t-1}, dk, dv, dβ)."""
  forward: Callable
  inverse: Callable
  backward: Callable


def _sum_forward(w, k, v, beta):
  return w + _outer(v, k), ()


def _sum_backward(w_prev, w, dw, k, v, beta, res):
  return dw, _vecmat(v, dw), _matvec(dw, k), jnp.zeros_like(beta)


def _delta_forward(w, k, v, beta):
  r = v - _matvec(w, k)                       # the correction the write makes, before β
  return w + _outer(beta[..., None] * r, k), r


def _delta_backward(w_prev, w, dw, k, v, beta, r):
  du = _matvec(dw, k)                         # u = β r, W_t = W_{t-1} + u kᵀ
  dr = beta[..., None] * du                   # r = v − W_{t-1} k
  dk = _vecmat(beta[..., None] * r, dw) - _vecmat(dr, w_prev)
  return dw - _outer(dr, k), dk, dr, jnp.sum(du * r, axis=-1)


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


_RECURRENT = {
    "sum": _Step(_sum_forward, lambda w, k, v, beta, res: w - _outer(v, k), _sum_backward),
    "delta": _Step(_delta_forward,
                   lambda w, k, v, beta, r: w - _outer(beta[..., None] * r, k), _delta_backward),
    "fwm": _Step(_fwm_forward, None, _fwm_backward),
}


# ---------------------------------------------------------------------------------------------
# Single steps (streaming / generation). Shapes: w [B, H, V, K], q, k [B, H, K], v [B, H, V],
# beta [B, H]. Each returns (y [B, H, V], new w).

def _read(w, q):
  return None if q is None else _matvec(w, q)


def _check_step(w, q, k, v, beta=None) -> None:
  """Shapes of one step: w [B, H, V, K], q, k [B, H, K], v [B, H, V], beta [B, H]."""
  if w.ndim != 4:
    raise ValueError(f"w must be [batch, heads, d_value, d_key], got shape {w.shape}.")
  b, h, d_value, d_key = w.shape
  for name, x, shape in (("q", q, (b, h, d_key)), ("k", k, (b, h, d_key)),
                         ("v", v, (b, h, d_value)), ("beta", beta, (b, h))):
    if x is not None and tuple(x.shape) != shape:
      raise ValueError(f"{name} must have shape {shape} to match w {w.shape} (one time step), "
                       f"got {x.shape}.")


def sum_rule_step(w, q, k, v):
  _check_step(w, q, k, v)
  w, _ = _sum_forward(w, k, v, None)
  return _read(w, q), w


def delta_rule_step(w, q, k, v, beta):
  _check_step(w, q, k, v, beta)
  w, _ = _delta_forward(w, k, v, beta)
  return _read(w, q), w


def fwm_rule_step(w, q, k, v, beta):
  """The delta (interpolated) update, then W / max(1, ‖W‖_F), then the read-out."""
  _check_step(w, q, k, v, beta)
  w, _ = _fwm_forward(w, k, v, beta)
  return _read(w, q), w


# ---------------------------------------------------------------------------------------------
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


def _sum_block(w0, q, k, v, beta=None):
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


def _write_system(k, beta):
  """A = I + tril(diag(β) K Kᵀ, −1) for blocks k [..., C, K], beta [..., C]: the delta rule's
  writes U of a block solve A U = diag(β)(V − K W0ᵀ)."""
  gram = jnp.einsum("...ck,...sk->...cs", k, k)
  return jnp.eye(k.shape[-2], dtype=k.dtype) + jnp.tril(beta[..., :, None] * gram, -1)


def _delta_writes(w0, k, v, beta):
  """U [B, H, C, V], the writes u_t = β_t (v_t − W_{t-1} k_t) of one block: the unit
  lower-triangular system (I + tril(diag(β) KKᵀ, −1)) U = diag(β)(V − K W0ᵀ)."""
  a = _write_system(k, beta)
  rhs = beta[..., None] * (v if w0 is None else v - jnp.einsum("bhck,bhvk->bhcv", k, w0))
  return unit_lower_inverse(a) @ rhs


def _delta_block(w0, q, k, v, beta):
  u = _delta_writes(w0, k, v, beta)
  return _block_read(w0, q, k, u), _add_writes(w0, u, k)


# ---------------------------------------------------------------------------------------------
# Forms. Each takes public-layout arrays (beta may be None for the sum rule) and returns (y, w).

def _recurrent(rule: str, w0, q, k, v, beta):
  """A scan over time in segments of at most REMAT_SEGMENT steps, with the backward pass of
  `_recurrent_scan` (see "Single steps")."""
  b, t, h, d_key = k.shape
  d_value = v.shape[-1]
  num_segments, seg = _equal_segments(t, _segment_length(rule))
  pad = num_segments * seg - t         # < num_segments
  if beta is None:
    beta = jnp.ones(k.shape[:3], k.dtype)

  def segments(x):  # [B, T, H, ...] -> [S, seg, B·H, ...]; zero k, v, β leave W unchanged
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x, 1, 0).reshape((num_segments, seg, b * h) + x.shape[3:])

  xs = tuple(segments(x) for x in (k, v, beta))
  qs = None if q is None else segments(q)
  y, w = _recurrent_scan(rule, w0.reshape(b * h, d_value, d_key), qs, xs)
  w = w.reshape(b, h, d_value, d_key)
  if q is None:
    return None, w
  y = y.reshape(num_segments * seg, b, h, d_value)[:t]
  return jnp.moveaxis(y, 0, 1), w


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrent_scan(rule, w0, qs, xs):
  return _recurrent_forward(rule, w0, qs, xs)[0]


def _recurrent_forward(rule, w0, qs, xs):
  """(y, W_T) and what the backward needs: W at each segment start and each step's residual."""
  step = _RECURRENT[rule]

  def inner(w, x):
    q_t, x = x
    w, res = step.forward(w, *x)
    return w, (_read(w, q_t), res)

  def outer(w, x):
    w_end, (y, res) = jax.lax.scan(inner, w, x)
    return w_end, (w, y, res)

  w_last, (starts, y, res) = jax.lax.scan(outer, w0, (qs, xs))
  return (y, w_last), (starts, w_last, qs, xs, res)


def _recurrent_backward(rule, saved, cotangents):
  """Walks each segment back from its end. Invertible steps (sum, delta) undo one step at a time
  from the exact end state; fwm, whose normalisation would amplify rounding when undone, reruns
  the segment forward from its stored start and keeps its states."""
  step = _RECURRENT[rule]
  starts, w_last, qs, xs, res = saved
  dy, dw_last = cotangents

  def step_back(w_prev, w, dw, x):
    q_t, dy_t, x_t, res_t = x
    dq = None
    if q_t is not None:                 # y_t = W_t q_t
      dq = _vecmat(dy_t, w)
      dw = dw + _outer(dy_t, q_t)
    dw, dk, dv, dbeta = step.backward(w_prev, w, dw, *x_t, res_t)
    return dw, (dq, (dk, dv, dbeta))

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


_recurrent_scan.defvjp(_recurrent_forward, _recurrent_backward)


def _equal_segments(t: int, most: int) -> tuple[int, int]:
  """(number, length) of the fewest equal segments of at most `most` steps covering t."""
  num = -(-t // most)
  return num, -(-t // num)


def _to_blocks(x, num_blocks, size):
  """[B, T, H, ...] -> [N, B, H, C, ...], zero-padded at the end to T = num_blocks·size (zero
  keys, values and β write nothing, so the padding leaves W_T unchanged)."""
  b, t, h = x.shape[:3]
  x = jnp.pad(x, [(0, 0), (0, num_blocks * size - t)] + [(0, 0)] * (x.ndim - 2))
  x = x.reshape((b, num_blocks, size, h) + x.shape[3:])
  return jnp.moveaxis(jnp.moveaxis(x, 3, 2), 1, 0)


def _from_blocks(y):
  """[N, B, H, C, V] -> [B, N·C, H, V]."""
  n, b, h, c, d = y.shape
  return jnp.moveaxis(y, 0, 1).transpose(0, 1, 3, 2, 4).reshape(b, n * c, h, d)


def _chunked(block: Callable, w0, q, k, v, beta, chunk_size):
  t = k.shape[1]
  size = min(chunk_size, t)
  num_blocks = -(-t // size)
  if beta is None:
    beta = jnp.ones(k.shape[:3], k.dtype)
  blocks = lambda x: None if x is None else _to_blocks(x, num_blocks, size)
  xs = (blocks(q),) + tuple(blocks(x) for x in (k, v, beta))

  def body(w, x):
    y, w = block(w, *x)
    return w, y

  if num_blocks == 1:
    y, w = block(w0, *(None if x is None else x[0] for x in xs))
    y = None if y is None else y[None]
  else:
    w, y = jax.lax.scan(body, _zero_state(k, v, w0), xs)
  return (None if q is None else _from_blocks(y)[:, :t]), w


_BLOCKS = {"sum": _sum_block, "delta": _delta_block}


def apply_rule(rule: str, q, k, v, beta=None, *, form: str, chunk_size: int = 64,
               initial_state=None, accumulate: str = "float32"):
  """Runs fast-weight rule `rule` in form `form`; see the module docstring for shapes."""
  validate(rule, form, chunk_size, accumulate)
  if rule != "sum" and beta is None:
    raise ValueError(f"The {rule} rule needs beta [batch, time, heads].")
  _check_shapes(q, k, v, beta, initial_state)
  form, chunk_size = choose_form(rule, form, k.shape[1]), choose_chunk_size(chunk_size, k.shape[1])
  if rule == "sum":
    beta = None
  # One compute dtype for all inputs, by default at least float32: a bfloat16 memory summed over
  # thousands of steps loses the small writes (results/precision.md), so W accumulates (and is
  # returned) in float32; the outputs come back in the inputs' dtype.
  present = [x for x in (q, k, v, beta, initial_state) if x is not None]
  dtype = jnp.result_type(*present)
  compute = dtype if accumulate == "input" else jnp.promote_types(dtype, jnp.float32)
  q, k, v, beta, w0 = (None if x is None else x.astype(compute)
                       for x in (q, k, v, beta, initial_state))
  if form == "recurrent":
    y, w = _recurrent(rule, _zero_state(k, v, w0), q, k, v, beta)
  else:
    # The parallel form is the chunked form with one chunk spanning the sequence.
    size = k.shape[1] if form == "parallel" else chunk_size
    y, w = _causal_in_non_finite(_BLOCKS[rule], w0, q, k, v, beta, size)
  return (None if y is None else y.astype(dtype)), w


def _causal_in_non_finite(block, w0, q, k, v, beta, size):
  """The matrix forms multiply data by a causal mask, and 0 · NaN = NaN: a non-finite input
  would reach earlier outputs (and padding holding Inf, real ones). So they run on finite inputs
  (non-finite entries zeroed) and then mark what the recurrence would make non-finite, as NaN:
  every output and the state from the first non-finite k, v, β (or initial state) on, since W
  holds it from then; a non-finite q only its own read-out."""
  finite = lambda x, axes: jnp.all(jnp.isfinite(x), axis=axes)
  bad_write = ~(finite(k, -1) & finite(v, -1))                               # [B, T, H]
  if beta is not None:
    bad_write |= ~jnp.isfinite(beta)
  bad_state = jax.lax.cummax(bad_write.astype(jnp.int8), axis=1).astype(bool)
  if w0 is not None:
    bad_state |= ~finite(w0, (-2, -1))[:, None]
  clean = lambda x: None if x is None else jnp.where(jnp.isfinite(x), x, jnp.zeros((), x.dtype))
  y, w = _chunked(block, clean(w0), clean(q), clean(k), clean(v), clean(beta), size)
  w = jnp.where(bad_state[:, -1, :, None, None], jnp.nan, w)
  if y is not None:
    y = jnp.where((bad_state | ~finite(q, -1))[..., None], jnp.nan, y)
  return y, w


def sum_rule(q, k, v, *, form: str, chunk_size: int = 64, initial_state=None,
             accumulate: str = "float32"):
  """W_t = W_{t-1} + v_t ⊗ k_t; y_t = W_t q_t. Returns (y, W_T)."""
  return apply_rule("sum", q, k, v, form=form, chunk_size=chunk_size,
                    initial_state=initial_state, accumulate=accumulate)


def delta_rule(q, k, v, beta, *, form: str, chunk_size: int = 64, initial_state=None,
               accumulate: str = "float32"):
  """W_t = W_{t-1} + β_t (v_t − W_{t-1} k_t) ⊗ k_t; y_t = W_t q_t. Returns (y, W_T)."""
  return apply_rule("delta", q, k, v, beta, form=form, chunk_size=chunk_size,
                    initial_state=initial_state, accumulate=accumulate)


def final_state(rule: str, k, v, beta=None, *, form: str, chunk_size: int = 64,
                initial_state=None):
  """W_T alone, without the T read-outs: for models that read the memory only at the end.

  Same forms and checks as `apply_rule`; the parallel form for the sum rule is then just
  W0 + Vᵀ K, and the delta rule's blocks skip the QKᵀ products.
  """
  _, w = apply_rule(rule, None, k, v, beta, form=form, chunk_size=chunk_size,
                    initial_state=initial_state)
  return w


def read_final(rule: str, q, k, v, beta=None, *, form: str, chunk_size: int = 64):
  """W_T q for queries q [B, Q, H, K] that read the memory after the whole sequence (from a zero
  initial state): y [B, Q, H, V].

  The parallel form never forms W: y = (q Kᵀ) U with U = V for the sum rule and the delta
  rule's solved writes, which is cheapest when Q·d_dot is small against d_value·d_dot. The
  delta rule's recurrent form with fewer queries than value dimensions carries the queries back
  in time and never forms W either (both: `read_coefficients`). The other cases build W_T with
  `final_state` and read it. `form="auto"` takes the cheapest of these for the shapes.
  """
  if q.ndim != 4 or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"q must be [batch, queries, heads, d_key] = [{k.shape[0]}, Q, "
                     f"{k.shape[2]}, {k.shape[3]}] to match k, got {q.shape}.")
  validate(rule, form, chunk_size)
  if rule != "sum" and beta is None:
    raise ValueError(f"The {rule} rule needs beta [batch, time, heads].")
  _check_shapes(None, k, v, beta if rule != "sum" else None, None)
  c = read_coefficients(rule, q, k, beta, form=form, d_value=v.shape[-1], chunk_size=chunk_size)
  if c is not None:
    return jnp.einsum("bqht,bthv->bqhv", c, v)
  w = final_state(rule, k, v, beta, form=_read_form(rule, form, q.shape[1], v.shape[-1],
                                                    k.shape[1]), chunk_size=chunk_size)
  return jnp.einsum("bhvk,bqhk->bqhv", w, q)


def _read_form(rule: str, form: str, num_queries: int, d_value: int, t: int) -> str:
  if form != AUTO:
    return form
  if rule == "sum":
    return "parallel"
  return "recurrent" if rule == "delta" and num_queries < d_value else choose_form(rule, form, t)


def read_coefficients(rule: str, q, k, beta=None, *, form: str, d_value: int,
                      chunk_size: int = 64):
  """c [B, Q, H, T] with read_final(rule, q, k, v, beta, form=form) = Σ_t c[..., t] v_t, for the
  reads that never form W (so never touch v): the parallel reads, c = q Kᵀ for the sum rule
  and (q Kᵀ)(I + tril(diag(β)KKᵀ, −1))⁻¹ diag(β) for the delta rule, and the delta rule's recurrent
  read with fewer queries than d_value, c_t = β_t (k_t · q_t) along the queries carried back in
  time (q_{t−1} = q_t − c_t k_t, from q_T = q; W_0 = 0), step by step (recurrent) or a chunk at
  a time (chunked: within a chunk the parallel read's coefficients, then the query below it is
  q − Σ c_t k_t). None for the reads that build W_T.

  With values that are indices (one-hot v_t = e_{id_t}), y is c scattered by id: no [B, T, V]
  array at all (the retrieval model's read)."""
  form = _read_form(rule, form, q.shape[1], d_value, k.shape[1])
  few_queries = rule == "delta" and q.shape[1] < d_value
  if form == "recurrent" and few_queries:
    time_major = lambda x: jnp.moveaxis(x, 1, 0)
    c = _query_coefficients(jnp.moveaxis(q, 1, 2), time_major(k), time_major(beta))
    return jnp.transpose(c, (1, 3, 2, 0))                 # [T, B, H, Q] -> [B, Q, H, T]
  if form == "chunked" and few_queries:
    return _query_coefficients_chunked(q, k, beta, choose_chunk_size(chunk_size, k.shape[1]))
  if form != "parallel" or rule not in ("sum", "delta"):
    return None
  if rule == "delta":   # the parallel read is the chunked one with one chunk
    return _query_coefficients_chunked(q, k, beta, k.shape[1])
  return jnp.einsum("bqhk,bthk->bqht", q, k)


def _query_coefficients_chunked(q, k, beta, size: int):
  """The delta rule's query read-out a chunk at a time, from the last chunk down: c [B, Q, H, T].

  In a chunk of C steps the query's coefficients are the parallel read's, (q Kᵀ) A⁻¹ diag(β)
  with A = I + tril(diag(β) K Kᵀ, −1), and the query below the chunk is q − Σ_t c_t k_t. The
  inverses depend on k and β only: all are formed at once, outside the scan, which then does
  three small products per chunk (T/C steps instead of T)."""
  b, t, h = k.shape[:3]
  size = min(size, t)
  num = -(-t // size)
  kc, bc = _to_blocks(k, num, size), _to_blocks(beta, num, size)   # [N, B, H, C, (K)]
  right = unit_lower_inverse(_write_system(kc, bc)) * bc[..., None, :]   # A⁻¹ diag(β)

  def chunk(q_top, x):
    k_c, right_c = x
    c = jnp.einsum("bhqk,bhck->bhqc", q_top, k_c) @ right_c  # [B, H, Q, C]
    return q_top - jnp.einsum("bhqc,bhck->bhqk", c, k_c), c

  _, c = jax.lax.scan(chunk, jnp.moveaxis(q, 1, 2), (kc, right), reverse=True)
  c = jnp.moveaxis(c, 0, 3).reshape(b, h, q.shape[1], num * size)[..., :t]   # [B, H, Q, T]
  return jnp.moveaxis(c, 1, 2)                                 # [B, Q, H, T]


QUERY_SEGMENT = 64   # the query read-out's backward keeps q_t once per this many steps


def _query_segments(t: int):
  num, seg = _equal_segments(t, QUERY_SEGMENT)
  # Padding at the end of time: the reverse scan meets it first, and k = 0, β = 0 change nothing.
  pad = lambda x: jnp.pad(x, [(0, num * seg - t)] + [(0, 0)] * (x.ndim - 1)).reshape(
      (num, seg) + x.shape[1:])
  return pad, lambda x: x.reshape((num * seg,) + x.shape[2:])[:t]


def _query_scan(q, k, beta):
  """(c [T, B, H, Q], q at the low end of each segment [S, B, H, Q, K]) for time-major k
  [T, B, H, K], beta [T, B, H]."""
  pad, unpad = _query_segments(k.shape[0])

  def step(q_t, x):
    k_t, beta_t = x                                          # [B, H, K], [B, H]
    c = beta_t[..., None] * jnp.einsum("bhqk,bhk->bhq", q_t, k_t)
    return q_t - c[..., None] * k_t[:, :, None], c

  def segment(q_top, x):
    q_low, c = jax.lax.scan(step, q_top, x, reverse=True)
    return q_low, (c, q_low)

  _, (c, q_lows) = jax.lax.scan(segment, q, (pad(k), pad(beta)), reverse=True)
  return unpad(c), q_lows


@jax.custom_vjp
def _query_coefficients(q, k, beta):
  """c_t = β_t (k_t · q_t) along the queries carried back in time. Its backward is written out:
  autodiff through the reverse scan ran ~18× the forward on XLA:CPU (a DPFP-1 delta retrieval
  step at S = 100: 20 ms, of which the forward 1 ms). It walks forward in time, rebuilding
  q_t = q_{t−1} + c_t k_t from the exact q kept once per QUERY_SEGMENT steps (rounding cannot
  build up beyond a segment; storing every q_t cost more than recomputing it)."""
  return _query_scan(q, k, beta)[0]


def _query_coefficients_fwd(q, k, beta):
  c, q_lows = _query_scan(q, k, beta)
  return c, (k, beta, c, q_lows)


def _query_coefficients_bwd(residuals, dc):
  k, beta, c, q_lows = residuals
  pad, unpad = _query_segments(k.shape[0])

  def step(carry, x):    # g = ∂L/∂q_{t-1}, the adjoint of this step's output carry
    g, q_prev = carry
    k_t, beta_t, c_t, dc_t = x
    q_t = q_prev + c_t[..., None] * k_t[:, :, None]
    c_hat = dc_t - jnp.einsum("bhqk,bhk->bhq", g, k_t)       # total adjoint of c_t
    dk = (jnp.einsum("bhq,bhqk->bhk", c_hat * beta_t[..., None], q_t)
          - jnp.einsum("bhq,bhqk->bhk", c_t, g))
    dbeta = jnp.einsum("bhq,bhqk,bhk->bh", c_hat, q_t, k_t)
    g = g + (beta_t[..., None] * c_hat)[..., None] * k_t[:, :, None]
    return (g, q_t), (dk, dbeta)

  def segment(g, x):
    q_low, xs = x
    (g, _), grads = jax.lax.scan(step, (g, q_low), xs)
    return g, grads

  dq, (dk, dbeta) = jax.lax.scan(segment, jnp.zeros_like(q_lows[0]),
                                 (q_lows, tuple(pad(x) for x in (k, beta, c, dc))))
  return dq, unpad(dk), unpad(dbeta)


_query_coefficients.defvjp(_query_coefficients_fwd, _query_coefficients_bwd)


def fwm_rule(q, k, v, beta, *, form: str = "recurrent", chunk_size: int = 64,
             initial_state=None, accumulate: str = "float32"):
  """The delta update followed by W / max(1, ‖W‖_F); recurrent only. Returns (y, W_T)."""
  return apply_rule("fwm", q, k, v, beta, form=form, chunk_size=chunk_size,
                    initial_state=initial_state, accumulate=accumulate)
