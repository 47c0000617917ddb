"""The public API of the fast weight rules: checks, the dtype policy, the choice of form
(`choose_form`), apply_rule and the named rules, and the rules as single steps (streaming,
generation). Shapes and the rules' equations: the package docstring (fwp.ops).
"""

from __future__ import annotations

import numbers

import jax
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


def check_log_decay(log_decay, k_shape) -> None:
  """log_decay [B, T, H] (one gate per head) or [B, T, H, K] (one per key channel), floating."""
  b, t, h, d_key = k_shape
  if not jnp.issubdtype(jnp.result_type(log_decay), jnp.floating):
    raise ValueError(f"log_decay must be a floating-point array, got dtype "
                     f"{getattr(log_decay, 'dtype', type(log_decay).__name__)}.")
  if tuple(log_decay.shape) not in ((b, t, h), (b, t, h, d_key)):
    raise ValueError(f"log_decay must be [batch, time, heads] = {(b, t, h)} (one gate per head) "
                     f"or [batch, time, heads, d_key] = {(b, t, h, d_key)} (one per key "
                     f"channel), got {tuple(log_decay.shape)}.")


def check_product_shapes(q, k, v, beta, log_decay, initial_state) -> None:
  """delta_product: k [B, T, H, N, K], v [B, T, H, N, V], beta [B, T, H, N], q [B, T, H, K]."""
  if k.ndim != 5:
    raise ValueError(f"delta_product's k must be [batch, time, heads, writes, d_key] (N ≥ 1 "
                     f"writes per token), got shape {k.shape}.")
  b, t, h, n, d_key = k.shape
  if n == 0:
    raise ValueError(f"delta_product needs N ≥ 1 writes per token, got k of shape {k.shape} "
                     f"[batch, time, heads, writes, d_key].")
  if v.ndim != 5 or v.shape[:4] != (b, t, h, n):
    raise ValueError(f"delta_product's v must be [batch, time, heads, writes, d_value] = "
                     f"[{b}, {t}, {h}, {n}, d_value] to match k, got {v.shape}.")
  if beta.shape != (b, t, h, n):
    raise ValueError(f"delta_product's beta must be [batch, time, heads, writes] = "
                     f"{(b, t, h, n)}, got {beta.shape}.")
  if q is not None and q.shape != (b, t, h, d_key):
    raise ValueError(f"delta_product's q must be [batch, time, heads, d_key] = "
                     f"{(b, t, h, d_key)} (one read per token), got {q.shape}.")
  # The rest (dtypes, empty axes, the initial state) as for the N·T writes it runs as.
  writes = lambda x: jax.ShapeDtypeStruct((b, t * n, h, x.shape[-1]), jnp.result_type(x))
  check_shapes(None, writes(k), writes(v), None, initial_state)
  for name, x in (("q", q), ("beta", beta)):
    if x is not None and not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype}.")
  if log_decay is not None:
    check_log_decay(log_decay, (b, t, h, d_key))


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



def _step_gate(w, log_decay):
  """A single step's log-decay [B, H] or [B, H, K] as [B, H, 1 or K], checked against w."""
  b, h, _, d_key = w.shape
  if tuple(log_decay.shape) not in ((b, h), (b, h, d_key)):
    raise ValueError(f"log_decay must have shape {(b, h)} (one gate per head) or "
                     f"{(b, h, d_key)} (per key channel) to match w {w.shape} (one time step), "
                     f"got {tuple(log_decay.shape)}.")
  return log_decay[..., None] if log_decay.ndim == 2 else log_decay


def gated_sum_rule_step(w, q, k, v, log_decay):
  """W ← W diag(exp(log_decay)) + v kᵀ, then the read-out; log_decay [B, H] or [B, H, K]."""
  _check_step(w, q, k, v)
  w, _ = recurrent.GATED_SUM.forward(w, k, v, None, _step_gate(w, log_decay))
  return recurrent.read(w, q), w


def gated_delta_rule_step(w, q, k, v, beta, log_decay):
  """W' = W diag(exp(log_decay)), W ← W' + β (v − W' k) kᵀ, then the read-out."""
  _check_step(w, q, k, v, beta)
  w, _ = recurrent.GATED_DELTA.forward(w, k, v, beta, _step_gate(w, log_decay))
  return recurrent.read(w, q), w


def delta_product_rule_step(w, q, k, v, beta, log_decay=None):
  """One token of delta_product: the optional gate, N delta writes k [B, H, N, K],
  v [B, H, N, V], beta [B, H, N] in order, then the read-out."""
  if k.ndim != 4 or v.ndim != 4 or beta.ndim != 3 or k.shape[2] == 0:
    raise ValueError(f"delta_product_rule_step takes k [batch, heads, writes, d_key], "
                     f"v [batch, heads, writes, d_value], beta [batch, heads, writes] (N ≥ 1), "
                     f"got {k.shape}, {v.shape}, {beta.shape}.")
  _check_step(w, q, k[:, :, 0], v[:, :, 0], beta[:, :, 0])
  for i in range(k.shape[2]):          # the gate with the first write, as _delta_product
    x = (k[:, :, i], v[:, :, i], beta[:, :, i])
    if i == 0 and log_decay is not None:
      w, _ = recurrent.GATED_DELTA.forward(w, *x, _step_gate(w, log_decay))
    else:
      w, _ = recurrent.DELTA.forward(w, *x)
  return recurrent.read(w, q), w


def apply_rule(rule: str, q, k, v, beta=None, *, log_decay=None, form: str,
               chunk_size: int = 64, initial_state=None, accumulate: str = "float32",
               normalize_first: bool = True):
  """Runs fast-weight rule `rule` in form `form`; see the module docstring for shapes.

  `log_decay` (the gated rules: gated_sum, gated_delta, delta_product's optional gate) is
  [B, T, H] (α = exp(log_decay), one gate per head) or [B, T, H, K] (one per key channel).
  delta_product's k, v, beta carry an axis of N writes per token: [B, T, H, N, K],
  [B, T, H, N, V], [B, T, H, N]; `chunk_size` counts tokens.

  `normalize_first=False` (fwm only; other rules ignore it) leaves the first write from the
  empty memory unnormalised, W_1 = β_1 v_1 k_1ᵀ, as the authors' retrieval code, which divides
  by max(1, ‖W‖) from the second write on. With an `initial_state` it changes nothing (the
  sequence does not start from the empty memory)."""
  validate(rule, form, chunk_size, accumulate)
  record = rules.get(rule)
  if record.uses_beta and beta is None:
    shape = "[batch, time, heads, writes]" if record.writes_per_token else "[batch, time, heads]"
    raise ValueError(f"The {rule} rule needs beta {shape}.")
  if record.gated and not record.gate_optional and log_decay is None:
    raise ValueError(f"The {rule} rule needs log_decay [batch, time, heads] (one gate per head) "
                     f"or [batch, time, heads, d_key] (one per key channel).")
  if log_decay is not None and not record.gated:
    raise ValueError(f"The {rule} rule takes no log_decay; the gated rules are "
                     f"{rules.names(lambda r: r.gated)}.")
  if record.writes_per_token:
    check_product_shapes(q, k, v, beta, log_decay, initial_state)
    return _delta_product(q, k, v, beta, log_decay, form, chunk_size, initial_state, accumulate)
  check_shapes(q, k, v, beta if record.uses_beta else None, initial_state)
  if record.gated:
    check_log_decay(log_decay, k.shape)
  if rule == "fwm" and not normalize_first and initial_state is None:
    return _fwm_first_write_plain(q, k, v, beta, form, chunk_size, accumulate)
  return _run(record, q, k, v, beta, log_decay, form, chunk_size, initial_state, accumulate)


def _run(record, q, k, v, beta, log_decay, form, chunk_size, initial_state, accumulate):
  """apply_rule after its checks."""
  form, chunk_size = choose_form(record.name, form, k.shape[1]), choose_chunk_size(chunk_size,
                                                                                   k.shape[1])
  if not record.uses_beta:
    beta = None
  g = None
  if log_decay is not None:   # [B, T, H, 1] (per head) or [B, T, H, K]: W's columns scale by e^g
    g = log_decay[..., None] if log_decay.ndim == 3 else log_decay
  # One compute dtype for all inputs, by default at least float32: a bfloat16 memory summed over
  # thousands of steps loses the small writes (results/precision.md), so W accumulates (and is
  # returned) in float32; the outputs come back in the inputs' dtype.
  present = [x for x in (q, k, v, beta, initial_state, g) if x is not None]
  dtype = jnp.result_type(*present)
  compute = dtype if accumulate == "input" else jnp.promote_types(dtype, jnp.float32)
  q, k, v, beta, w0, g = (None if x is None else x.astype(compute)
                          for x in (q, k, v, beta, initial_state, g))
  if form == "recurrent":
    y, w = recurrent.recurrent(record.step, record.segment, zero_state(k, v, w0), q, k, v, beta,
                               g)
  else:
    # The parallel form is the chunked form with one chunk spanning the sequence.
    size = k.shape[1] if form == "parallel" else chunk_size
    y, w = chunked.causal_in_non_finite(record.block, w0, q, k, v, beta, size, g)
  return (None if y is None else y.astype(dtype)), w


def _delta_product(q, k, v, beta, log_decay, form, chunk_size, initial_state, accumulate):
  """N writes per token as one sequence of N·T writes: the gate at each token's first write (no
  decay at the others), the query at its last (the reads after the other writes are dropped);
  the gated delta rule over them, or the delta rule when there is no gate."""
  b, t, h, n, d_key = k.shape
  flat = lambda x: jnp.moveaxis(x, 3, 2).reshape((b, t * n, h) + x.shape[4:])
  def at(x, index):          # x [B, T, H, ...] placed at write `index` of each token, 0 elsewhere
    spread = jnp.zeros((b, t, n) + x.shape[2:], x.dtype).at[:, :, index].set(x)
    return spread.reshape((b, t * n) + x.shape[2:])
  record = rules.BY_NAME["delta" if log_decay is None else "gated_delta"]
  g = None if log_decay is None else at(log_decay, 0)
  form = choose_form("delta_product", form, t)
  chunk_size = choose_chunk_size(chunk_size, t)
  y, w = _run(record, None if q is None else at(q, n - 1), flat(k), flat(v), flat(beta), g,
              form, chunk_size * n, initial_state, accumulate)
  return (None if y is None else y.reshape((b, t, n) + y.shape[2:])[:, :, -1]), w


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




def gated_sum_rule(q, k, v, log_decay, *, form: str, chunk_size: int = 64, initial_state=None,
                   accumulate: str = "float32"):
  """W_t = W_{t-1} diag(α_t) + v_t ⊗ k_t, α_t = exp(log_decay_t) ([B, T, H]: one gate per head,
  RetNet / Mamba-2; [B, T, H, K]: per key channel, GLA); y_t = W_t q_t. Returns (y, W_T)."""
  return apply_rule("gated_sum", q, k, v, log_decay=log_decay, form=form,
                    chunk_size=chunk_size, initial_state=initial_state, accumulate=accumulate)


def gated_delta_rule(q, k, v, beta, log_decay, *, form: str, chunk_size: int = 64,
                     initial_state=None, accumulate: str = "float32"):
  """W' = W_{t-1} diag(α_t); W_t = W' + β_t (v_t − W' k_t) ⊗ k_t; y_t = W_t q_t (per-head gates:
  Gated DeltaNet; per key channel: KDA). Returns (y, W_T)."""
  return apply_rule("gated_delta", q, k, v, beta, log_decay=log_decay, form=form,
                    chunk_size=chunk_size, initial_state=initial_state, accumulate=accumulate)


def delta_product_rule(q, k, v, beta, *, log_decay=None, form: str, chunk_size: int = 64,
                       initial_state=None, accumulate: str = "float32"):
  """Per token: the optional gate W ← W diag(α_t), then N delta writes W ← W + β_ti (v_ti −
  W k_ti) ⊗ k_ti (i = 1..N; k [B, T, H, N, K], v [B, T, H, N, V], beta [B, T, H, N]), then
  y_t = W q_t (DeltaProduct; N = 1 is the (gated) delta rule). Returns (y, W_T)."""
  return apply_rule("delta_product", q, k, v, beta, log_decay=log_decay, form=form,
                    chunk_size=chunk_size, initial_state=initial_state, accumulate=accumulate)


def fwm_rule(q, k, v, beta, *, form: str = "recurrent", chunk_size: int = 64,
             initial_state=None, accumulate: str = "float32", normalize_first: bool = True):
  """The delta update followed by W / max(1, ‖W‖_F); recurrent only. Returns (y, W_T).
  `normalize_first=False`: the first write from W = 0 is not normalised (see apply_rule)."""
  return apply_rule("fwm", q, k, v, beta, form=form, chunk_size=chunk_size,
                    initial_state=initial_state, accumulate=accumulate,
                    normalize_first=normalize_first)
