"""Associative retrieval (Section 6.1): the paper's model, loss and evaluation as a task.

Batches are generated inside the jitted step from (seed, step) (the family's `data` module), so
there is no host batch. FAVOR+ redraws its projection at every forward pass, in training and
evaluation, as the authors do, from keys that are themselves functions of (seed, step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from experiments import distributed
from experiments.tasks.associative_recall import data
from experiments.tasks import common
from fwp import checks, retrieval


# Fields that may change when a run resumes (the loop adds its own), and fields added after
# runs existed, with the value those runs used implicitly.
RESUMABLE = ("model.form", "model.chunk_size")
ADDED_FIELDS = {"model.recurrence": "none", "model.qk_bias": False,
                "model.readout_affine": True, "model.readout_eps": 1e-6,
                "model.beta_init": "flax",
                **{f"model.{name}": value for name, value in common.BEFORE.items()}}

MAX_KEYS = 20_000


def _gib(config) -> str:
  s = config.num_keys
  return f"{(s * int(2.2 * s) + (s + int(2.2 * s)) * 2 * config.model.d) * 4 / 2 ** 30:.3g}"


def validate(config) -> None:
  """The retrieval fields; the loop's own fields are checked by experiments.train."""
  if config.setting not in (1, 2):
    raise ValueError(f"config.setting must be 1 or 2, got {config.setting!r}.")
  if isinstance(config.num_keys, bool) or not isinstance(config.num_keys, int) or (
      config.num_keys < 2):
    raise ValueError(f"config.num_keys must be an integer >= 2, got {config.num_keys!r}.")
  if config.num_keys > MAX_KEYS:
    raise ValueError(f"config.num_keys={config.num_keys} is beyond what this model can hold in "
                     f"memory (its embedding and key projection grow as S², ~{_gib(config)} GiB "
                     f"of parameters); the paper goes to 600, fwp allows up to {MAX_KEYS}.")
  d = config.model.d
  checks.positive_int("config.model.d", d, " (the paper: 64)")
  for name in ("eval_sequences", "eval_max_queries"):
    checks.positive_int(f"config.{name}", config[name])
  options = _model_options(config.model)
  for name in ("qk_bias", "readout_affine"):
    if not isinstance(options[name], bool):
      raise ValueError(f"config.model.{name} must be True or False, got {options[name]!r}.")
  eps = options["readout_eps"]
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
    raise ValueError(f"config.model.readout_eps must be a number > 0, got {eps!r}.")
  if options["beta_init"] not in retrieval.BETA_INITS:
    raise ValueError(f"Unknown config.model.beta_init {options['beta_init']!r}; valid choices: "
                     f"{', '.join(retrieval.BETA_INITS)}.")
  common.fast_weight_config(config.model)
  rule = config.model.update_rule
  if rule not in retrieval.RULES:
    raise ValueError(f"The retrieval model takes update_rule {', '.join(retrieval.RULES)}, got "
                     f"{rule!r} (the modern rules' layers are in the LM and algorithmic "
                     f"families).")
  for name, default in common.LAYER_OPTIONS.items():
    if name != "gate" and config.model.get(name, default) != default:
      raise ValueError(f"config.model.{name} is a layer option of the LM and algorithmic "
                       f"families; the paper's retrieval model has none: leave it "
                       f"{default!r}, got {config.model[name]!r}.")


def build_model(config, rngs: nnx.Rngs) -> retrieval.RetrievalModel:
  m = config.model
  return retrieval.RetrievalModel(config.num_keys, common.fast_weight_config(m), d=m.d,
                                  rngs=rngs, scoring=common.scoring(m), **_model_options(m))


def _model_options(m) -> dict:
  """The retrieval model's own options; .get: a config.json from before these fields means the
  values ADDED_FIELDS holds (what those runs computed)."""
  return {name: m.get(name, ADDED_FIELDS[f"model.{name}"])
          for name in ("qk_bias", "readout_affine", "readout_eps", "beta_init")}


def retrieval_loss(predictions, targets, num_keys, mask=None):
  """½‖onehot(target) − ŷ‖² summed over outputs, averaged over (unmasked) queries."""
  per_query = 0.5 * jnp.sum((jax.nn.one_hot(targets, num_keys) - predictions) ** 2, axis=-1)
  if mask is None:
    return jnp.mean(per_query)
  return jnp.sum(per_query * mask) / jnp.sum(mask)


def make(config, mesh=None) -> "AssociativeRecall":
  return AssociativeRecall(config, mesh)


class AssociativeRecall:
  """One retrieval run: the loss is the paper's (½‖onehot − ŷ‖², a plain mean over queries),
  early stopping and the best checkpoint follow the eval loss."""

  selection = ("eval_loss", "min")

  def __init__(self, config, mesh=None):
    self.config, self.mesh = config, mesh
    self.summary_fields = dict(curve=config.curve, setting=config.setting,
                               num_keys=config.num_keys)
    self._eval = jax.jit(self._eval_loss, static_argnums=0)

  def _projection_key(self, stream, index):
    c = self.config
    if not c.model.redraw_projection:
      return None
    return common.step_key(c.seed + 7919, stream, index)

  def build_model(self, rngs: nnx.Rngs) -> retrieval.RetrievalModel:
    return build_model(self.config, rngs)

  def host_batch(self, step):
    return None

  def loss(self, model, batch, step):
    del batch
    c = self.config
    batch = data.train_batch(c.seed, step, batch_size=c.batch_size, num_keys=c.num_keys,
                             setting=c.setting)
    if self.mesh is not None:
      batch = distributed.shard_batch(batch, self.mesh)
    y = model(batch["keys"], batch["values"], batch["queries"],
              projection_key=self._projection_key(0, step))
    return retrieval_loss(y, batch["targets"], c.num_keys), {"weight": jnp.float32(1)}

  def _eval_loss(self, graphdef, params, rest, index):
    c = self.config
    batch = data.eval_batch(c.seed, index, num_keys=c.num_keys, setting=c.setting,
                            num_sequences=c.eval_sequences, max_queries=c.eval_max_queries,
                            full_length=c.eval_full_length)
    model = nnx.merge(graphdef, params, rest)
    y = model(batch["keys"], batch["values"], batch["queries"],
              projection_key=self._projection_key(1, index))
    return retrieval_loss(y, batch["targets"], c.num_keys, batch["mask"])

  def evaluate(self, graphdef, params, rest, step):
    return dict(eval_loss=self._eval(graphdef, params, rest, step))

  def final(self, graphdef, params, rest, step):
    del step
    return {}
