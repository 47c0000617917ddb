"""The public API of the fast weight rules: checks, the dtype policy, the choice of form
(`choose_form`), apply_rule and the named rules, and the rules as single steps (streaming,
generation). Shapes and the rules' equations: the package docstring (fwp.ops).
"""

from __future__ import annotations

import numbers

import jax.numpy as jnp

from fwp.ops import chunked, recurrent, rules
from fwp.ops.linalg import zero_state
from fwp.ops.rules import AUTO, AUTO_CHUNK, FORMS, PARALLEL_MAX_T, RULES  # noqa: F401 (re-exported)

# What the rules compute in (`accumulate=`): "float32" upcasts bfloat16/float16 inputs, so the
# state W is summed in float32 (float64 inputs stay float64); "input" computes in the inputs'
# dtype (pure bfloat16: half the memory traffic, and the errors of results/precision.md).
ACCUMULATE = ("float32", "input")
FWM_FORMS = rules.BY_NAME["fwm"].forms


# Validation: plain Python on static shapes, so it runs before anything is traced.

def validate(rule: str, form: str, chunk_size: int, accumulate: str = "float32") -> None:
  """ValueError naming the valid choices for an unknown rule, form, accumulation or a bad chunk
  size."""
  if accumulate not in ACCUMULATE:
    raise ValueError(f"Unknown accumulate {accumulate!r}; valid choices: "
                     f"{', '.join(ACCUMULATE)}.")
  record = rules.get(rule)
  valid = record.forms + (AUTO,)
  if form not in valid:
    if form in FORMS:
      raise ValueError(f"The {rule} rule has no {form!r} form: {record.why_recurrent_only}. "
                       f"Valid choices for {rule}: {', '.join(valid)}.")
    raise ValueError(f"Unknown form {form!r} for the {rule} rule; valid choices: "
                     f"{', '.join(valid)}.")
  if chunk_size == AUTO:
    return
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or (
      chunk_size <= 0):
    raise ValueError(f"chunk_size must be a positive integer or 'auto', got {chunk_size!r}.")


def choose_form(rule: str, form: str, t: int) -> str:
  """The concrete form for `form` (which may be "auto") at sequence length t."""
  return rules.get(rule).auto_form(t) if form == AUTO else form


def choose_chunk_size(chunk_size, t: int) -> int:
  return min(rules.AUTO_CHUNK, t) if chunk_size == AUTO else int(chunk_size)


def check_shapes(q, k, v, beta, initial_state) -> None:
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


# Single steps (streaming / generation). Shapes: w [B, H, V, K], q, k [B, H, K], v [B, H, V],
# beta [B, H]. Each returns (y [B, H, V], new w).

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
  w, _ = recurrent.SUM.forward(w, k, v, None)
  return recurrent.read(w, q), w


def delta_rule_step(w, q, k, v, beta):
  _check_step(w, q, k, v, beta)
  w, _ = recurrent.DELTA.forward(w, k, v, beta)
  return recurrent.read(w, q), w


def fwm_rule_step(w, q, k, v, beta):
  """The delta (interpolated) update, then W / max(1, ‖W‖_F), then the read-out."""
  _check_step(w, q, k, v, beta)
  w, _ = recurrent.FWM.forward(w, k, v, beta)
  return recurrent.read(w, q), w



def apply_rule(rule: str, q, k, v, beta=None, *, form: str, chunk_size: int = 64,
               initial_state=None, accumulate: str = "float32", normalize_first: bool = True):
  """Runs fast-weight rule `rule` in form `form`; see the module docstring for shapes.

  `normalize_first=False` (fwm only; other rules ignore it) leaves the first write from the
  empty memory unnormalised, W_1 = β_1 v_1 k_1ᵀ, as the authors' retrieval code, which divides
  by max(1, ‖W‖) from the second write on. With an `initial_state` it changes nothing (the
  sequence does not start from the empty memory)."""
  validate(rule, form, chunk_size, accumulate)
  record = rules.get(rule)
  if record.uses_beta and beta is None:
    raise ValueError(f"The {rule} rule needs beta [batch, time, heads].")
  check_shapes(q, k, v, beta, initial_state)
  if rule == "fwm" and not normalize_first and initial_state is None:
    return _fwm_first_write_plain(q, k, v, beta, form, chunk_size, accumulate)
  form, chunk_size = choose_form(rule, form, k.shape[1]), choose_chunk_size(chunk_size, k.shape[1])
  if not record.uses_beta:
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
    y, w = recurrent.recurrent(record.step, record.segment, zero_state(k, v, w0), q, k, v, beta)
  else:
    # The parallel form is the chunked form with one chunk spanning the sequence.
    size = k.shape[1] if form == "parallel" else chunk_size
    y, w = chunked.causal_in_non_finite(record.block, w0, q, k, v, beta, size)
  return (None if y is None else y.astype(dtype)), w


def _fwm_first_write_plain(q, k, v, beta, form, chunk_size, accumulate):
  """fwm with W_1 = β_1 v_1 k_1ᵀ (the delta rule's write from W = 0, not normalised), then the
  fwm steps from W_1."""
  first = lambda x: None if x is None else x[:, :1]
  rest = lambda x: None if x is None else x[:, 1:]
  y1, w1 = apply_rule("delta", first(q), first(k), first(v), first(beta), form="recurrent",
                      accumulate=accumulate)
  if k.shape[1] == 1:
    return y1, w1
  y, w = apply_rule("fwm", rest(q), rest(k), rest(v), rest(beta), form=form,
                    chunk_size=chunk_size, initial_state=w1, accumulate=accumulate)
  if y is None:
    return None, w
  return jnp.concatenate([y1, y], axis=1).astype(y1.dtype), w


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




def fwm_rule(q, k, v, beta, *, form: str = "recurrent", chunk_size: int = 64,
             initial_state=None, accumulate: str = "float32", normalize_first: bool = True):
  """The delta update followed by W / max(1, ‖W‖_F); recurrent only. Returns (y, W_T).
  `normalize_first=False`: the first write from W = 0 is not normalised (see apply_rule)."""
  return apply_rule("fwm", q, k, v, beta, form=form, chunk_size=chunk_size,
                    initial_state=initial_state, accumulate=accumulate,
                    normalize_first=normalize_first)
