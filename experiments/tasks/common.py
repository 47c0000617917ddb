"""What several families share: the config's attention fields as fwp's layer configs."""

from __future__ import annotations

import jax

from fwp import layers, ops


def step_key(seed: int, stream: int, index) -> jax.Array:
  """The random key of (seed, stream, step or index): every family draws its data, dropout and
  redraws from one, so a run's randomness is a function of (seed, step) and resumes exactly."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), index)

# Attention baselines, by config.model.update_rule: no fast weights, and their scoring.
ATTENTION_BASELINES = {"softmax": "dot", "additive": "additive"}


def chunk_size(value) -> int | str:
  """config.model.chunk_size, a string so that `--config.model.chunk_size=auto` parses, as the
  int or "auto" that fwp.ops takes (older runs saved an int: taken as it is)."""
  if isinstance(value, str) and value.strip() == ops.AUTO:
    return ops.AUTO
  number = int(value) if isinstance(value, str) and value.strip().isdigit() else value
  if isinstance(number, int) and not isinstance(number, bool) and number > 0:
    return number
  raise ValueError(f"config.model.chunk_size must be a positive integer or 'auto', got "
                   f"{value!r}.")


# Model fields added after runs existed, with the value every run before them computed with: a
# config.json without the field (generate and the reports read those) means that value.
# The modern rules' and FLA's layer options: every run before them computed the layer's defaults.
LAYER_OPTIONS = {name: layers.FastWeightConfig.__dataclass_fields__[name].default
                 for name in ("gate", "beta_max", "num_writes", "short_conv", "qk_norm",
                              "output_norm", "output_gate")}
BEFORE = {"favor_scaling": "performer", "favor_eps": 0.0, "favor_stabilize": True,
          "sum_query_eps": 0.0, "fwm_normalize_first": True, "favor_projection": "orthogonal",
          **LAYER_OPTIONS}


def fast_weight_config(model_config) -> layers.FastWeightConfig | None:
  """None for an attention baseline; raises ValueError naming the valid choices otherwise."""
  if model_config.update_rule in ATTENTION_BASELINES:
    return None
  before = {name: model_config.get(name, value) for name, value in BEFORE.items()}
  return layers.FastWeightConfig(
      feature_map=model_config.feature_map, nu=model_config.nu,
      num_features=model_config.num_features, update_rule=model_config.update_rule,
      normalization=model_config.normalization, form=model_config.form,
      chunk_size=chunk_size(model_config.chunk_size), recurrence=model_config.recurrence,
      # .get: a retrieval config has no dtype, hence no accumulate field.
      accumulate=model_config.get("accumulate", "float32"),
      eps=model_config.get("attention_eps", 1e-6), **before)


def inert_fields(flat: dict) -> set[str]:
  """The model fields of a flattened config that cannot change what its model computes (FAVOR+'s
  without favor_plus, fwm's without fwm, the query eps without sum normalisation), so that a
  resume is not refused over a field added later that its model never reads."""
  get = lambda name: flat.get(f"model.{name}")
  inert = set()
  if get("feature_map") != "favor_plus":
    inert |= {"model.favor_scaling", "model.favor_eps", "model.favor_stabilize",
              "model.favor_projection"}
  if get("update_rule") != "fwm":
    inert |= {"model.fwm_normalize_first", "model.readout_affine", "model.readout_eps"}
  if get("normalization") not in ("sum", "sum_attention"):   # the sum-normalised queries
    inert.add("model.sum_query_eps")
  rule = ops.rules.BY_NAME.get(get("update_rule"))      # None: an attention baseline
  if get("update_rule") in ATTENTION_BASELINES or (rule is not None and not rule.uses_beta):
    inert |= {"model.beta_init", "model.beta_max"}          # no β
  if rule is None or not rule.gated:
    inert.add("model.gate")
  if rule is None or not rule.writes_per_token:
    inert.add("model.num_writes")
  return inert


def scoring(model_config) -> str:
  """The attention baseline's scoring ("dot" for softmax and for every fast weight model)."""
  return ATTENTION_BASELINES.get(model_config.update_rule, "dot")
