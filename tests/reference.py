"""Plain-loop references for the tests: one head, one time step at a time, readable by eye.

Written with jax.numpy so the tests can differentiate them too; run them in float64.
"""

import jax
import jax.numpy as jnp


def _one_head(update, q, k, v, beta, w):
  """q, k [T, K], v [T, V], beta [T], w [V, K]: one write, then one read, per step."""
  ys = []
  for t in range(q.shape[0]):
    w = update(w, k[t], v[t], beta[t])
    ys.append(w @ q[t])                                  # read after the write
  return jnp.stack(ys), w


def _per_head(update, q, k, v, beta, w0):
  """Applies `_one_head` to every batch element and head ([B, T, H, ...] inputs)."""
  b, t, h, d_key = q.shape
  if beta is None:
    beta = jnp.ones((b, t, h), q.dtype)
  if w0 is None:
    w0 = jnp.zeros((b, h, v.shape[-1], d_key), q.dtype)
  one = lambda q, k, v, beta, w: _one_head(update, q, k, v, beta, w)
  over_heads = jax.vmap(one, in_axes=(1, 1, 1, 1, 0), out_axes=(1, 0))
  return jax.vmap(over_heads)(q, k, v, beta, w0)


def sum_update(w, k, v, beta):
  return w + jnp.outer(v, k)


def delta_update(w, k, v, beta):
  v_old = w @ k
  return w + beta * jnp.outer(v - v_old, k)


def fwm_update(w, k, v, beta):
  w = delta_update(w, k, v, beta)
  return w / jnp.maximum(1.0, jnp.sqrt(jnp.sum(w * w)))


UPDATES = {"sum": sum_update, "delta": delta_update, "fwm": fwm_update}


def rule(name, q, k, v, beta=None, w0=None):
  return _per_head(UPDATES[name], q, k, v, beta, w0)


def masked_linear_attention(q, k, v):
  """(QKᵀ ⊙ M) V per batch and head, M the inclusive causal mask."""
  t = q.shape[1]
  mask = jnp.tril(jnp.ones((t, t)))
  scores = jnp.einsum("bthk,bshk->bhts", q, k) * mask
  return jnp.einsum("bhts,bshv->bthv", scores, v)
