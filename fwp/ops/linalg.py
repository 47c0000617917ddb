"""Small helpers every form (and fwp.rfwp) shares: matrix-vector products over a leading batch,
outer products, the zero state, and cutting time into equal segments or blocks."""

from __future__ import annotations

import jax.numpy as jnp


def matvec(w, x):          # W x: [N, V, K] · [N, K] -> [N, V]
  return jnp.einsum("...vk,...k->...v", w, x)


def vecmat(x, w):          # Wᵀ x: [N, V] · [N, V, K] -> [N, K]
  return jnp.einsum("...v,...vk->...k", x, w)


def outer(a, b):
  return a[..., :, None] * b[..., None, :]




def zero_state(k, v, initial_state):
  """`initial_state`, or zeros [B, H, V, K] for k [B, T, H, K], v [B, T, H, V]."""
  if initial_state is not None:
    return initial_state
  b, _, h, d_key = k.shape
  return jnp.zeros((b, h, v.shape[-1], d_key), jnp.result_type(k, v))


def equal_segments(t: int, most: int) -> tuple[int, int]:
  """(number, length) of the fewest equal segments of at most `most` steps covering t."""
  num = -(-t // most)
  return num, -(-t // num)


def to_blocks(x, num_blocks, size):
  """[B, T, H, ...] -> [N, B, H, C, ...], zero-padded at the end to T = num_blocks·size (zero
  keys, values and β write nothing, so the padding leaves W_T unchanged)."""
  b, t, h = x.shape[:3]
  x = jnp.pad(x, [(0, 0), (0, num_blocks * size - t)] + [(0, 0)] * (x.ndim - 2))
  x = x.reshape((b, num_blocks, size, h) + x.shape[3:])
  return jnp.moveaxis(jnp.moveaxis(x, 3, 2), 1, 0)


def from_blocks(y):
  """[N, B, H, C, V] -> [B, N·C, H, V]."""
  n, b, h, c, d = y.shape
  return jnp.moveaxis(y, 0, 1).transpose(0, 1, 3, 2, 4).reshape(b, n * c, h, d)
