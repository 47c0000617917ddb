"""Shared test helpers: float64 scope, relative closeness, random inputs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np


def x64():
  """Context manager turning on float64 (the API moved between jax versions)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  return jax.experimental.enable_x64()  # pragma: no cover - older jax


def assert_rel_close(actual, expected, rtol, name=""):
  """Each leaf: max |a − e| ≤ rtol · max |e|. Kept for float32 and low-precision comparisons
  only (float64 proofs use chex.assert_trees_all_close): chex's tolerance is elementwise, one
  atol for every leaf, and float32 gradients mix leaves of very different scales with entries
  near zero."""
  def check(a, e):
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    chex.assert_equal_shape([a, e])
    scale = max(np.max(np.abs(e)), 1e-30)
    err = np.max(np.abs(a - e)) / scale
    assert err <= rtol, f"{name}: relative error {err:.3e} > {rtol:.1e}"
  jax.tree.map(check, actual, expected)


def random_inputs(seed, b=2, t=12, h=2, d_key=5, d_value=3, dtype=jnp.float64):
  """Feature-mapped-like inputs: positive, sum-normalised keys (the delta rule is stable for
  β‖k‖² ≤ 2), queries of either sign, β in (0, 1), a non-zero initial state."""
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, t, h, d_key))
  k = np.exp(rng.normal(size=(b, t, h, d_key)))
  k = k / np.linalg.norm(k, axis=-1, keepdims=True)
  v = rng.normal(size=(b, t, h, d_value))
  beta = 1 / (1 + np.exp(-rng.normal(size=(b, t, h))))
  w0 = 0.3 * rng.normal(size=(b, h, d_value, d_key))
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v, beta, w0))

