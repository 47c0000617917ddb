"""Feature maps φ: x[..., d] -> φ(x)[..., d_dot].

Each map is a pure function of its input (FAVOR+ also takes its projection explicitly, so the
caller owns the randomness). `output_dim` says d_dot for a name without computing anything.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp


def identity(x: jax.Array) -> jax.Array:
  """The 1991 fast weight programmer: no feature map (d_dot = d)."""
  return x


def elu_plus_one(x: jax.Array) -> jax.Array:
  """Katharopoulos et al. (2020), "Linear": elu(x) + 1 > 0 (d_dot = d)."""
  return jax.nn.elu(x) + 1.0


def tanh(x: jax.Array) -> jax.Array:
  """tanh, as used with the FWM rule (d_dot = d)."""
  return jnp.tanh(x)


def dpfp(x: jax.Array, nu: int = 1) -> jax.Array:
  """Deterministic parameter-free projection, DPFP-ν (d_dot = 2·d·ν).

  r = [relu(x), relu(-x)]; φ = concat_{j=1..ν} r ⊙ roll(r, j) along the last axis.
  """
  if not isinstance(nu, int) or nu < 1:
    raise ValueError(f"dpfp needs an integer nu >= 1, got nu={nu!r}.")
  return _dpfp(x, nu)


def _dpfp_forward(x, nu):
  r = jnp.concatenate([jax.nn.relu(x), jax.nn.relu(-x)], axis=-1)
  return jnp.concatenate([r * jnp.roll(r, j, axis=-1) for j in range(1, nu + 1)], axis=-1), r


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _dpfp(x, nu):
  """DPFP with its backward written out: XLA:CPU fused autodiff's backward of the rolled
  concatenations with the gathers that produce x in the retrieval model, and a DPFP-1 backward
  there took 10 ms for [32, 400, 64] against 2 ms written out (ν ≥ 2: no difference)."""
  return _dpfp_forward(x, nu)[0]


def _dpfp_fwd(x, nu):
  phi, r = _dpfp_forward(x, nu)
  return phi, (x, r)


def _dpfp_bwd(nu, residuals, dphi):
  x, r = residuals
  n = r.shape[-1]
  dr = None
  for j in range(1, nu + 1):   # φ_j = r ⊙ roll(r, j)
    dj = dphi[..., (j - 1) * n:j * n]
    term = dj * jnp.roll(r, j, axis=-1) + jnp.roll(dj * r, -j, axis=-1)
    dr = term if dr is None else dr + term
  d = x.shape[-1]
  zero = jnp.zeros((), dr.dtype)
  return (jnp.where(x > 0, dr[..., :d], zero) - jnp.where(x < 0, dr[..., d:], zero),)


_dpfp.defvjp(_dpfp_fwd, _dpfp_bwd)


def orthogonal_projection(key: jax.Array, num_features: int, dim: int,
                          dtype=jnp.float32) -> jax.Array:
  """FAVOR+'s random projection [num_features, dim]: blocks of orthogonal rows.

  Rows within each block of `dim` are exactly orthogonal; each row is rescaled to the norm of an
  independent Gaussian vector, so every row is marginally N(0, I) (Choromanski et al. 2021).
  """
  if num_features < 1 or dim < 1:
    raise ValueError(f"num_features and dim must be >= 1, got {num_features}, {dim}.")
  num_blocks = math.ceil(num_features / dim)
  block_key, norm_key = jax.random.split(key)
  gaussian = jax.random.normal(block_key, (num_blocks, dim, dim), dtype)
  q, _ = jnp.linalg.qr(gaussian)                       # columns orthonormal
  rows = jnp.swapaxes(q, -1, -2).reshape(num_blocks * dim, dim)[:num_features]
  norms = jnp.linalg.norm(jax.random.normal(norm_key, (num_features, dim), dtype), axis=-1)
  return rows * norms[:, None]


def lmtool_projection(key: jax.Array, num_features: int, dim: int,
                      dtype=jnp.float32) -> jax.Array:
  """The projection [num_features, dim] as IDSIA/lmtool-fwp's LM layers draw it:
  `draw_orthogonal_random_matrix(d_head, proj_dim)` (src/utils/performer_helper.py), whose
  arguments are in the opposite order to the helper it copies. So the [dim, m] matrix it returns
  stacks ⌈dim/m⌉ orthogonal m×m blocks (rows of Qᵀ, QR of a Gaussian, no sign fix) and scales
  each of its `dim` rows by the norm of an m-dim Gaussian; a feature is a column of it, not a
  block-orthogonal N(0, I) row. `lmtool_projection_from` is the construction given the draws."""
  if num_features < 1 or dim < 1:
    raise ValueError(f"num_features and dim must be >= 1, got {num_features}, {dim}.")
  block_key, norm_key = jax.random.split(key)
  blocks = jax.random.normal(block_key, (math.ceil(dim / num_features), num_features,
                                         num_features), dtype)
  return lmtool_projection_from(blocks, jax.random.normal(norm_key, (dim, num_features), dtype))


def lmtool_projection_from(blocks: jax.Array, norm_gaussian: jax.Array) -> jax.Array:
  """blocks [⌈d/m⌉, m, m] and norm_gaussian [d, m] (their torch.randn calls, in order) ->
  [m, d]: diag(‖norm_gaussian‖) · stack(Qᵀ of each block)[:d], transposed to fwp's layout."""
  d, m = norm_gaussian.shape
  q, _ = jnp.linalg.qr(blocks)
  rows = jnp.swapaxes(q, -1, -2).reshape(-1, m)[:d]                     # [d, m]
  return (rows * jnp.linalg.norm(norm_gaussian, axis=-1)[:, None]).T


PROJECTIONS = {"orthogonal": orthogonal_projection, "lmtool": lmtool_projection}
FAVOR_SCALINGS = ("none", "performer")


def favor_plus(x: jax.Array, projection: jax.Array, *, is_query: bool = False,
               scaling: str = "none", kernel_eps: float = 0.0) -> jax.Array:
  """FAVOR+ positive random features with the hyperbolic pairing (d_dot = 2m):

      φ(x) = (exp([Wx, −Wx] − ‖x‖²/2) + kernel_eps) / √(2m),   W = `projection` [m, d].

  `scaling="none"` is the authors' `prime` (ischlag/fast-weight-transformers `synthetic/
  linearAttention.py`, IDSIA/lmtool-fwp `src/utils/performer_helper.py`): φ(q)·φ(k) is an
  unbiased estimate of exp(q·k). `scaling="performer"` first scales x by d^{-1/4}, so that it
  estimates exp(q·k/√d), softmax attention's kernel (Choromanski et al. 2021's definition).
  `kernel_eps` is lmtool-fwp's offset on every feature (1e-4 in their LM layers, none in their
  synthetic code).

  `is_query=True` stabilises: the features are divided by exp of their own largest exponent (a
  per-position constant held out of the gradient; the offset is divided too, so the result is
  exactly proportional to the unstabilised features). It cancels under attention or sum
  normalisation up to the normaliser's eps; pass it only where that holds. Key features are left
  exact: their exponent w·x − ½‖x‖² never exceeds ½‖w‖² (≈ 55 for m = 512, d = 64), far inside
  float32's range, whereas a data-independent shift by that bound underflows φ(q)·φ(k).
  """
  dim = x.shape[-1]
  if projection.ndim != 2 or projection.shape[-1] != dim:
    raise ValueError(f"favor_plus projection must be [m, {dim}], got {projection.shape}.")
  check_favor_options(scaling, kernel_eps)
  m = projection.shape[0]
  if scaling == "performer":
    x = x * dim ** -0.25
  wx = jnp.einsum("...d,md->...m", x, projection.astype(x.dtype))
  features = jnp.concatenate([wx, -wx], axis=-1) - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
  if not is_query:
    return (jnp.exp(features) + kernel_eps) / math.sqrt(2 * m)
  shift = jax.lax.stop_gradient(jnp.max(features, axis=-1, keepdims=True))
  offset = kernel_eps * jnp.exp(-shift) if kernel_eps else 0.0
  return (jnp.exp(features - shift) + offset) / math.sqrt(2 * m)


def check_favor_options(scaling: str, kernel_eps: float) -> None:
  if scaling not in FAVOR_SCALINGS:
    raise ValueError(f"Unknown FAVOR+ scaling {scaling!r}; valid choices: "
                     f"{', '.join(FAVOR_SCALINGS)}.")
  if isinstance(kernel_eps, bool) or not isinstance(kernel_eps, (int, float)) or kernel_eps < 0:
    raise ValueError(f"FAVOR+ kernel_eps must be a number >= 0, got {kernel_eps!r}.")


@dataclasses.dataclass(frozen=True)
class FeatureMap:
  """What a φ name means: `fn(x, nu, projection, is_query, **favor_options)`, its output size
  `dim(d, nu, m)`,
  whether its features are positive (sum normalisation needs that) and whether it takes a
  random projection (FAVOR+: the caller draws and owns it)."""
  name: str
  fn: Callable
  dim: Callable[[int, int, int], int]
  positive: bool
  needs_projection: bool = False


def _favor_fn(x, nu, projection, is_query, **options):
  del nu
  if projection is None:
    raise ValueError("favor_plus needs a projection; draw one with orthogonal_projection.")
  return favor_plus(x, projection, is_query=is_query, **options)


_same = lambda d, nu, m: d
BY_NAME = {m.name: m for m in (
    FeatureMap("identity", lambda x, nu, p, q, **_: identity(x), _same, positive=False),
    FeatureMap("elu_plus_one", lambda x, nu, p, q, **_: elu_plus_one(x), _same, positive=True),
    FeatureMap("tanh", lambda x, nu, p, q, **_: tanh(x), _same, positive=False),
    FeatureMap("dpfp", lambda x, nu, p, q, **_: dpfp(x, nu), lambda d, nu, m: 2 * d * nu,
               positive=True),
    FeatureMap("favor_plus", _favor_fn, lambda d, nu, m: 2 * m, positive=True,
               needs_projection=True),
)}
FEATURE_MAPS = tuple(BY_NAME)
POSITIVE = tuple(name for name, m in BY_NAME.items() if m.positive)


def get(name: str) -> FeatureMap:
  if name not in BY_NAME:
    raise ValueError(f"Unknown feature map {name!r}; valid choices: {', '.join(FEATURE_MAPS)}.")
  return BY_NAME[name]


def check_name(name: str) -> None:
  get(name)


def output_dim(name: str, dim: int, *, nu: int = 1, num_features: int = 0) -> int:
  """d_dot of feature map `name` applied to inputs of size `dim`."""
  return get(name).dim(dim, nu, num_features)


def apply(name: str, x: jax.Array, *, nu: int = 1, projection: jax.Array | None = None,
          is_query: bool = False, **favor_options) -> jax.Array:
  """φ by name; `nu` is for dpfp; `projection`, `is_query` and `favor_options` (scaling,
  kernel_eps) for favor_plus."""
  return get(name).fn(x, nu, projection, is_query, **favor_options)
