"""Feature maps: the definitions written out, and FAVOR+ as a softmax-kernel estimator."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fwp import feature_maps
from tests import helpers

pytestmark = pytest.mark.fast   # φ against its definitions


def test_dpfp_matches_definition():
  x = np.random.default_rng(0).normal(size=(3, 4))
  for nu in (1, 2, 3):
    phi = np.asarray(feature_maps.dpfp(jnp.asarray(x), nu))
    assert phi.shape == (3, 2 * 4 * nu)
    r = np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=-1)
    for row in range(3):
      expected = [r[row, i] * r[row, (i - j) % 8] for j in range(1, nu + 1) for i in range(8)]
      np.testing.assert_allclose(phi[row], expected, rtol=1e-6)


def test_dpfp_backward_is_the_definitions_derivative_float64():
  """DPFP's hand-written backward against autodiff of the definition written out, every ν."""
  def definition(x, nu):
    r = jnp.concatenate([jnp.maximum(x, 0), jnp.maximum(-x, 0)], axis=-1)
    return jnp.concatenate([r * jnp.roll(r, j, axis=-1) for j in range(1, nu + 1)], axis=-1)

  with helpers.x64():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 6)))
    cotangent = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 36)))
    for nu in (1, 2, 3):
      loss = lambda f: lambda x: jnp.sum(f(x, nu) * cotangent[..., :12 * nu])
      chex.assert_trees_all_close(jax.grad(loss(feature_maps.dpfp))(x),
                                  jax.grad(loss(definition))(x), rtol=1e-12, atol=1e-14)


def test_elementwise_maps_and_dims():
  x = jnp.linspace(-3, 3, 12).reshape(2, 6)
  np.testing.assert_allclose(feature_maps.elu_plus_one(x), jnp.where(x > 0, x + 1, jnp.exp(x)),
                             rtol=1e-6)
  assert float(jnp.min(feature_maps.elu_plus_one(x))) > 0
  np.testing.assert_array_equal(feature_maps.identity(x), x)
  np.testing.assert_allclose(feature_maps.tanh(x), np.tanh(np.asarray(x)), rtol=1e-6)
  assert feature_maps.output_dim("dpfp", 64, nu=3) == 384
  assert feature_maps.output_dim("favor_plus", 64, num_features=128) == 256
  assert feature_maps.output_dim("elu_plus_one", 64) == 64


def test_orthogonal_projection_rows_are_orthogonal_within_blocks():
  w = np.asarray(feature_maps.orthogonal_projection(jax.random.key(0), 10, 4))
  assert w.shape == (10, 4)
  for start in (0, 4):
    block = w[start:start + 4]
    gram = block @ block.T
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-5)


def numpy_lmtool_draw(randn_calls):
  """IDSIA/lmtool-fwp src/utils/performer_helper.py `draw_orthogonal_random_matrix(nb_rows,
  nb_columns)` in NumPy, called as their LM layers call it, (d_head, proj_dim), with its
  torch.randn results handed in order: one [m, m] per block, then the [d, m] of the norms."""
  randn = iter(randn_calls)
  norm_shape = randn_calls[-1].shape
  nb_rows, nb_columns = norm_shape
  chunk = lambda: np.linalg.qr(next(randn))[0].T            # orthogonal_matrix_chunk: q.t()
  block_list = [chunk() for _ in range(nb_rows // nb_columns)]
  remaining_rows = nb_rows - (nb_rows // nb_columns) * nb_columns
  if remaining_rows > 0:
    block_list.append(chunk()[:remaining_rows])
  final_matrix = np.concatenate(block_list)
  multiplier = np.linalg.norm(next(randn), axis=1)         # scaling == 0
  return np.diag(multiplier) @ final_matrix                # [d_head, proj_dim]


@pytest.mark.parametrize("d,m", [(16, 16), (32, 16), (16, 64), (20, 8)])
def test_lmtool_projection_is_their_draw(d, m):
  """favor_projection='lmtool' builds their matrix from the same Gaussians (float64), in fwp's
  [m, d] layout; its rows are not orthogonal (the law differs from orthogonal_projection's)."""
  rng = np.random.default_rng(d + m)
  blocks = rng.standard_normal((-(-d // m), m, m))
  norms = rng.standard_normal((d, m))
  with helpers.x64():
    ours = np.asarray(feature_maps.lmtool_projection_from(jnp.asarray(blocks),
                                                          jnp.asarray(norms)))
  theirs = numpy_lmtool_draw(list(blocks) + [norms])
  np.testing.assert_allclose(ours, theirs.T, rtol=1e-12, atol=1e-12)
  w = np.asarray(feature_maps.lmtool_projection(jax.random.key(0), m, d))
  assert w.shape == (m, d)
  gram = w[:min(m, d)] @ w[:min(m, d)].T
  assert np.max(np.abs(gram - np.diag(np.diag(gram)))) > 1e-2


@functools.partial(jax.jit, static_argnums=0)
def _favor_attention_error(m, q, k, key):
  """Mean absolute error of FAVOR+'s normalised attention weights against softmax(qkᵀ/√d): with
  Performer's scaling, the estimate is of exp(q·k/√d)."""
  w = feature_maps.orthogonal_projection(key, m, q.shape[-1])
  fq = feature_maps.favor_plus(q, w, is_query=True, scaling="performer")
  fk = feature_maps.favor_plus(k, w, scaling="performer")
  approx = fq @ fk.T
  approx = approx / approx.sum(-1, keepdims=True)
  exact = jax.nn.softmax(q @ k.T / np.sqrt(q.shape[-1]), axis=-1)
  return jnp.mean(jnp.abs(approx - exact))


def test_favor_plus_estimates_softmax_kernel_better_with_more_features():
  """Averaged over 8 fixed keys per m, the error falls as m grows. With fixed keys the errors are
  deterministic. Measured: 7.2e-3, 5.3e-3, 3.6e-3, 2.1e-3, 1.3e-3 for m = 16 … 4096 (the ratio per
  ×4 tends to ½ = 1/√4 as the estimator's heavy tail fades), against 7.6e-3 for uniform weights."""
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(32, 16)) * 0.7, jnp.float32)
  k = jnp.asarray(rng.normal(size=(48, 16)) * 0.7, jnp.float32)
  errors = {}
  ms = (16, 64, 256, 1024, 4096)
  for m in ms:
    keys = jax.random.split(jax.random.key(42), 8)
    errors[m] = np.mean([float(_favor_attention_error(m, q, k, key)) for key in keys])
  for small, large in zip(ms, ms[1:]):
    assert errors[large] < 0.8 * errors[small], errors
  uniform = float(jnp.mean(jnp.abs(1 / 48 - jax.nn.softmax(q @ k.T / 4.0, axis=-1))))
  assert errors[4096] < 0.25 * uniform, (errors, uniform)


def _authors_prime(x, projection, kernel_eps=0.0):
  """The authors' `prime`, written out in NumPy: ischlag/fast-weight-transformers synthetic/
  linearAttention.py (offset ½‖x‖² + ½ log m + ½ log 2 in log space; no kernel_eps) and
  IDSIA/lmtool-fwp src/utils/performer_helper.py ((exp(u − ½‖x‖²) + kernel_eps) · (2m)^-½).
  Their projection matrix is [d, m]: ours transposed."""
  omega = np.asarray(projection).T
  m = omega.shape[1]
  u = x @ omega
  half_norm = 0.5 * np.sum(x ** 2, axis=-1, keepdims=True)
  if kernel_eps == 0.0:   # the synthetic code's form
    offset = half_norm + 0.5 * np.log(m) + 0.5 * np.log(2)
    return np.concatenate([np.exp(u - offset), np.exp(-u - offset)], axis=-1)
  out = np.concatenate([np.exp(u - half_norm), np.exp(-u - half_norm)], axis=-1) + kernel_eps
  return out * (2 * m) ** -0.5


@pytest.mark.parametrize("kernel_eps", [0.0, 1e-4])
def test_favor_plus_default_is_the_authors_prime_float64(kernel_eps):
  """fwp's default FAVOR+ is the authors' function (no d^(-1/4), offset as lmtool's), to 1e-14;
  the stabilised query features are exactly proportional to it, offset included."""
  with helpers.x64():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 7, 16)) * 0.8
    w = feature_maps.orthogonal_projection(jax.random.key(2), 24, 16, jnp.float64)
    expected = _authors_prime(x, w, kernel_eps)
    got = np.asarray(feature_maps.favor_plus(jnp.asarray(x), w, kernel_eps=kernel_eps))
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=0)
    query = np.asarray(feature_maps.favor_plus(jnp.asarray(x), w, kernel_eps=kernel_eps,
                                               is_query=True))
    ratio = query / expected
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[..., :1], ratio.shape), rtol=1e-13)
    assert not np.allclose(ratio, 1.0)       # it did rescale
    # Performer's scaling is the same map on x · d^(-1/4).
    performer = feature_maps.favor_plus(jnp.asarray(x), w, scaling="performer",
                                        kernel_eps=kernel_eps)
    np.testing.assert_allclose(performer, _authors_prime(x * 16 ** -0.25, w, kernel_eps),
                               rtol=1e-14)


def test_favor_plus_bad_options():
  w = feature_maps.orthogonal_projection(jax.random.key(0), 4, 3)
  with pytest.raises(ValueError, match="'performr'.*none, performer"):
    feature_maps.favor_plus(jnp.ones((2, 3)), w, scaling="performr")
  with pytest.raises(ValueError, match="kernel_eps must be a number >= 0, got -1"):
    feature_maps.favor_plus(jnp.ones((2, 3)), w, kernel_eps=-1)


def test_favor_plus_is_finite_and_queries_are_stabilised():
  w = feature_maps.orthogonal_projection(jax.random.key(1), 512, 64)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(100, 64)) * 10, jnp.float32)
  keys, queries = feature_maps.favor_plus(x, w), feature_maps.favor_plus(x, w, is_query=True)
  assert bool(jnp.all(jnp.isfinite(keys))) and float(jnp.min(keys)) >= 0.0
  np.testing.assert_allclose(jnp.max(queries, axis=-1), 1 / np.sqrt(1024), rtol=1e-6)
  # The query shift is a per-row scale: normalised, it is the same as the unshifted features.
  unshifted = feature_maps.favor_plus(x[:3] * 0.05, w)
  shifted = feature_maps.favor_plus(x[:3] * 0.05, w, is_query=True)
  np.testing.assert_allclose(shifted / shifted.sum(-1, keepdims=True),
                             unshifted / unshifted.sum(-1, keepdims=True), rtol=1e-5)


@pytest.mark.parametrize("name", ["relu", "softmax", ""])
def test_unknown_feature_map(name):
  with pytest.raises(ValueError, match="identity, elu_plus_one, tanh, dpfp, favor_plus"):
    feature_maps.apply(name, jnp.ones((2, 3)))


def test_dpfp_bad_nu():
  with pytest.raises(ValueError, match="nu >= 1"):
    feature_maps.dpfp(jnp.ones((2, 3)), 0)
