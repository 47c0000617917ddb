"""Plain-loop references for the tests: one head, one time step at a time, readable by eye.

Written with jax.numpy so the tests can differentiate them too; run them in float64.
"""

import jax
import jax.numpy as jnp


def _one_head(update, q, k, v, beta, w):
  """q, k [T, K], v [T, V], beta [T], w [V, K]: one write, then one read, per step."""
  q, k, v, beta = (steps(x) for x in (q, k, v, beta))
  ys = []
  for t in range(len(q)):
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


# The gated rules and DeltaProduct, one head, by explicit loops over time (and writes).

def _gated_one_head(write, q, k, v, beta, g, w):
  """q [T, K], k [T, (N,) K], v [T, (N,) V], beta [T, (N)], g [T, 1 or K], w [V, K]: per step
  W ← W diag(exp(g_t)) (column k scaled by α_k; every column by one α), then the write(s),
  then the read."""
  q, k, v, beta, g = (steps(x) for x in (q, k, v, beta, g))
  ys = []
  for t in range(len(q)):
    w = w * jnp.exp(g[t])[None, :]
    if k[t].ndim == 1:
      w = write(w, k[t], v[t], beta[t])
    else:
      for i in range(k[t].shape[0]):                     # DeltaProduct: N writes in order
        w = write(w, k[t][i], v[t][i], beta[t][i])
    ys.append(w @ q[t])
  return jnp.stack(ys), w


def steps(x):
  """x [T, ...] as the list of its T steps, by one split: x[t] is a slice at offset t, whose
  gradient (a pad to offset t) would compile once per step."""
  return [s[0] for s in jnp.split(x, x.shape[0])]


def _gated_per_head(write, q, k, v, beta, log_decay, w0):
  """`_gated_one_head` for every batch element and head ([B, T, H, ...] inputs); no
  log_decay is no gate (g = 0), no w0 the zero state."""
  b, t, h, d_key = q.shape
  if beta is None:
    beta = jnp.ones(k.shape[:-1], q.dtype)
  if w0 is None:
    w0 = jnp.zeros((b, h, v.shape[-1], d_key), q.dtype)
  if log_decay is None:
    log_decay = jnp.zeros((b, t, h), q.dtype)
  g = log_decay[..., None] if log_decay.ndim == 3 else log_decay
  one = lambda *x: _gated_one_head(write, *x)
  over_heads = jax.vmap(one, in_axes=(1, 1, 1, 1, 1, 0), out_axes=(1, 0))
  return jax.vmap(over_heads)(q, k, v, beta, g, w0)


def gated_rule(name, q, k, v, beta, log_decay, w0=None):
  """gated_sum / gated_delta: q, k [B, T, H, K], v [B, T, H, V], beta [B, T, H] (gated_sum:
  None), log_decay [B, T, H] or [B, T, H, K]."""
  write = {"gated_sum": sum_update, "gated_delta": delta_update}[name]
  return _gated_per_head(write, q, k, v, beta, log_decay, w0)


def delta_product(q, k, v, beta, log_decay=None, w0=None):
  """q [B, T, H, K], k [B, T, H, N, K], v [B, T, H, N, V], beta [B, T, H, N]: per token the gate
  (if any), then the N delta writes in order, then the read."""
  return _gated_per_head(delta_update, q, k, v, beta, log_decay, w0)


def masked_linear_attention(q, k, v):
  """(QKᵀ ⊙ M) V per batch and head, M the inclusive causal mask."""
  t = q.shape[1]
  mask = jnp.tril(jnp.ones((t, t)))
  scores = jnp.einsum("bthk,bshk->bhts", q, k) * mask
  return jnp.einsum("bhts,bshv->bthv", scores, v)


# Recurrent fast weight programmers (fwp.rfwp), one head: every step written out.

def softmax(x):
  e = jnp.exp(x - jnp.max(x))
  return e / jnp.sum(e)


def delta_rnn_one_head(z, kr, vr, br, r, y):
  """z, kr, vr [T, V], br [T]; r [V, V], y [V]: the recurrent write, then y = z + R softmax(y)."""
  ys = []
  for t in range(z.shape[0]):
    r = delta_update(r, kr[t], vr[t], br[t])
    y = z[t] + r @ softmax(y)
    ys.append(y)
  return jnp.stack(ys), (r, y)


def delta_lstm_one_head(z, kr, vr, br, r, y, c):
  """z, kr, vr [T, 3, V] (gates i, u, o), br [T, 3]; r [3, V, V]; y, c [V]."""
  ys = []
  for t in range(z.shape[0]):
    s = softmax(y)
    a = []
    new_r = []
    for g in range(3):
      r_g = delta_update(r[g], kr[t, g], vr[t, g], br[t, g])
      new_r.append(r_g)
      a.append(z[t, g] + r_g @ s)
    r = jnp.stack(new_r)
    i, u, o = jax.nn.sigmoid(a[0]), a[1], jax.nn.sigmoid(a[2])
    c = i * u + (1 - i) * c
    y = o * c
    ys.append(y)
  return jnp.stack(ys), (r, y, c)


def rdn_one_head(qx, kx, vx, bx, rq, rk, rv, rb, phi, w, y):
  """qx, kx [T, D], vx [T, V], bx [T]; rq, rk [V, D], rv [V, V], rb [V]; w [V, K], y [V]."""
  ys = []
  for t in range(qx.shape[0]):
    h = jnp.tanh(y)
    q = phi(qx[t] + h @ rq, True)
    k = phi(kx[t] + h @ rk, False)
    v = vx[t] + h @ rv
    beta = jax.nn.sigmoid(bx[t] + h @ rb)
    w = delta_update(w, k, v, beta)
    y = w @ q
    ys.append(y)
  return jnp.stack(ys), (w, y)
