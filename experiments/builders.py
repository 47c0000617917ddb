"""The boundary between configs and fwp: validation and typed objects built from a ConfigDict."""

from __future__ import annotations

from flax import nnx

from fwp import layers, models


def fast_weight_config(model_config) -> layers.FastWeightConfig | None:
  """None for the softmax baseline; raises ValueError naming the valid choices otherwise."""
  if model_config.update_rule == "softmax":
    return None
  return layers.FastWeightConfig(
      feature_map=model_config.feature_map, nu=model_config.nu,
      num_features=model_config.num_features, update_rule=model_config.update_rule,
      normalization=model_config.normalization, form=model_config.form,
      chunk_size=model_config.chunk_size)


def validate(config) -> None:
  """Every check that needs no computation; launch.py runs it at flag parsing."""
  def positive(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(f"config.{name} must be a positive integer, got {value!r}.")
  if config.setting not in (1, 2):
    raise ValueError(f"config.setting must be 1 or 2, got {config.setting!r}.")
  if isinstance(config.num_keys, bool) or not isinstance(config.num_keys, int) or (
      config.num_keys < 2):
    raise ValueError(f"config.num_keys must be an integer >= 2, got {config.num_keys!r}.")
  for name in ("batch_size", "max_steps", "eval_every", "eval_sequences", "eval_max_queries",
               "checkpoint_every", "keep_checkpoints", "patience"):
    positive(name, config[name])
  if not config.learning_rate > 0:
    raise ValueError(f"config.learning_rate must be > 0, got {config.learning_rate!r}.")
  mesh = tuple(config.mesh_shape)
  if len(mesh) != 1 or isinstance(mesh[0], bool) or not isinstance(mesh[0], int) or not (
      mesh[0] == -1 or mesh[0] >= 1):
    raise ValueError(f"config.mesh_shape must be (N,) with N >= 1 data-parallel devices, or (-1,) "
                     f"for all devices; got {config.mesh_shape!r}.")
  fast_weight_config(config.model)


def build_model(config, rngs: nnx.Rngs) -> models.RetrievalModel:
  return models.RetrievalModel(config.num_keys, fast_weight_config(config.model),
                               d=config.model.d, rngs=rngs)
