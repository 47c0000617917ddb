"""Normalisations that compose with any fast-weight rule and form.

Attention normalisation (Katharopoulos et al. 2020): y_t ← y_t / (z_t·φ(q_t) + eps) with
z_t = Σ_{s≤t} φ(k_s). z is itself a sum-rule fast weight whose values are all ones, so the
denominator is computed by the same rule function and form as the numerator.
Sum normalisation (Schlag et al. 2021): φ ← φ / Σφ, applied to keys and queries before the rule.
"sum_attention" does both, in that order: IDSIA/lmtool-fwp's delta-rule LM layers (attn_type
24-26) under their default flags, whose `--skip_attn_normalization` gives "sum".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fwp import ops

NORMALIZATIONS = ("none", "attention", "sum", "sum_attention")


def check_name(name: str) -> None:
  if name not in NORMALIZATIONS:
    raise ValueError(f"Unknown normalisation {name!r}; valid choices: "
                     f"{', '.join(NORMALIZATIONS)}.")


def sum_normalize(phi: jax.Array, eps: float = 0.0) -> jax.Array:
  """φ / Σ φ over the last axis (φ ≥ 0 assumed, as for ELU+1, DPFP and FAVOR+)."""
  return phi / (jnp.sum(phi, axis=-1, keepdims=True) + eps)


def attention_denominator(q, k, *, form: str, chunk_size: int = 64, initial_state=None,
                          accumulate: str = "float32"):
  """z_t·q_t with z_t = z_0 + Σ_{s≤t} k_s. Returns (den [B, T, H], z_T [B, H, 1, K])."""
  ones = jnp.ones(q.shape[:3] + (1,), q.dtype)
  den, z = ops.sum_rule(q, k, ones, form=form, chunk_size=chunk_size,
                        initial_state=initial_state, accumulate=accumulate)
  return den[..., 0], z


def attention_normalize(y, den, eps: float = 1e-6):
  """y_t / (z_t·φ(q_t) + eps); eps = 1e-6 as in the authors' code."""
  return y / (den[..., None] + eps)
