"""Reads after the whole sequence: W_T alone, W_T q for queries that come after the writes, and
the coefficients c with W_T q = Σ_t c_t v_t that never form W (the retrieval model's read)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fwp.ops import chunked, rules
from fwp.ops.api import AUTO, apply_rule, check_shapes, choose_chunk_size, choose_form, validate
from fwp.ops.linalg import equal_segments, to_blocks


def final_state(rule: str, k, v, beta=None, *, log_decay=None, form: str, chunk_size: int = 64,
                initial_state=None, normalize_first: bool = True):
  """W_T alone, without the T read-outs: for models that read the memory only at the end.

  Same forms and checks as `apply_rule` (`log_decay`: the gated rules'); the parallel form for
  the sum rule is then just W0 + Vᵀ K, and the delta rule's blocks skip the QKᵀ products.
  """
  _, w = apply_rule(rule, None, k, v, beta, log_decay=log_decay, form=form,
                    chunk_size=chunk_size, initial_state=initial_state,
                    normalize_first=normalize_first)
  return w


def read_final(rule: str, q, k, v, beta=None, *, form: str, chunk_size: int = 64,
               normalize_first: bool = True):
  """W_T q for queries q [B, Q, H, K] that read the memory after the whole sequence (from a zero
  initial state): y [B, Q, H, V].

  The parallel form never forms W: y = (q Kᵀ) U with U = V for the sum rule and the delta
  rule's solved writes, which is cheapest when Q·d_dot is small against d_value·d_dot. The
  delta rule's recurrent form with fewer queries than value dimensions carries the queries back
  in time and never forms W either (both: `read_coefficients`). The other cases build W_T with
  `final_state` and read it. `form="auto"` takes the cheapest of these for the shapes.
  `normalize_first`: fwm's option (apply_rule).
  """
  if q.ndim != 4 or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"q must be [batch, queries, heads, d_key] = [{k.shape[0]}, Q, "
                     f"{k.shape[2]}, {k.shape[3]}] to match k, got {q.shape}.")
  validate(rule, form, chunk_size)
  _ungated_only(rule, "read_final")
  uses_beta = rules.get(rule).uses_beta
  if uses_beta and beta is None:
    raise ValueError(f"The {rule} rule needs beta [batch, time, heads].")
  check_shapes(None, k, v, beta if uses_beta else None, None)
  c = read_coefficients(rule, q, k, beta, form=form, d_value=v.shape[-1], chunk_size=chunk_size)
  if c is not None:
    return jnp.einsum("bqht,bthv->bqhv", c, v)
  w = final_state(rule, k, v, beta, form=_read_form(rule, form, q.shape[1], v.shape[-1],
                                                    k.shape[1]), chunk_size=chunk_size,
                  normalize_first=normalize_first)
  return jnp.einsum("bhvk,bqhk->bqhv", w, q)


def _ungated_only(rule: str, name: str) -> None:
  record = rules.get(rule)
  if record.gated or record.writes_per_token:
    ungated = rules.names(lambda r: not (r.gated or r.writes_per_token))
    raise ValueError(f"{name} reads the rules {ungated}; for {rule}, read "
                     f"final_state({rule!r}, k, v, ..., log_decay=...) with the queries.")


def _read_form(rule: str, form: str, num_queries: int, d_value: int, t: int) -> str:
  """The form "auto" reads with: the one that never forms W when there is one (parallel for a
  rule without β, carrying the queries back for few queries), else the rule's own choice."""
  if form != AUTO:
    return form
  record = rules.get(rule)
  if not record.uses_beta:
    return "parallel"
  if record.carries_queries and num_queries < d_value:
    return "recurrent"
  return choose_form(rule, form, t)


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
  _ungated_only(rule, "read_coefficients")
  form = _read_form(rule, form, q.shape[1], d_value, k.shape[1])
  record = rules.get(rule)
  few_queries = record.carries_queries and q.shape[1] < d_value
  if form == "recurrent" and few_queries:
    time_major = lambda x: jnp.moveaxis(x, 1, 0)
    c = _query_coefficients(jnp.moveaxis(q, 1, 2), time_major(k), time_major(beta))
    return jnp.transpose(c, (1, 3, 2, 0))                 # [T, B, H, Q] -> [B, Q, H, T]
  if form == "chunked" and few_queries:
    return _query_coefficients_chunked(q, k, beta, choose_chunk_size(chunk_size, k.shape[1]))
  if form != "parallel" or record.block is None:
    return None
  if record.uses_beta:   # the delta rule's parallel read is the chunked one with one chunk
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
  kc, bc = to_blocks(k, num, size), to_blocks(beta, num, size)   # [N, B, H, C, (K)]
  right = chunked.unit_lower_inverse(chunked.write_system(kc, bc)) * bc[..., None, :]   # A⁻¹ diag(β)

  def chunk(q_top, x):
    k_c, right_c = x
    c = jnp.einsum("bhqk,bhck->bhqc", q_top, k_c) @ right_c  # [B, H, Q, C]
    return q_top - jnp.einsum("bhqc,bhck->bhqk", c, k_c), c

  _, c = jax.lax.scan(chunk, jnp.moveaxis(q, 1, 2), (kc, right), reverse=True)
  c = jnp.moveaxis(c, 0, 3).reshape(b, h, q.shape[1], num * size)[..., :t]   # [B, H, Q, T]
  return jnp.moveaxis(c, 1, 2)                                 # [B, Q, H, T]


QUERY_SEGMENT = 64   # the query read-out's backward keeps q_t once per this many steps


def _query_segments(t: int):
  num, seg = equal_segments(t, QUERY_SEGMENT)
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
