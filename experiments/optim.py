"""Optimizers and learning-rate schedules from the config's fields: one table of each.

  config.optimizer     adam | adamw (decoupled weight decay, config.weight_decay)
  config.lr_schedule   constant | cosine | rsqrt, each after a linear warm-up of warmup_steps
  config.beta1, beta2  Adam's moment decays (the authors' LM: 0.9, 0.999; fairseq's big
                       Transformer recipe: 0.9, 0.98; the algorithmic tasks: 0.9, 0.995)
  config.adam_eps      Adam's ε (1e-8; the algorithmic tasks' authors: 1e-9)
  config.grad_clip     global-norm clipping before the update; 0 = none
A task may bring its own optimizer instead (a `Task.optimizer()`, see experiments.tasks).
"""

from __future__ import annotations

import math

import optax

from fwp import checks


def _cosine(config) -> optax.Schedule:
  """Linear warm-up, then cosine to 0 at max_steps."""
  return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                            max(config.max_steps, config.warmup_steps + 1), 0.0)


def _constant(config) -> optax.Schedule:
  """Linear warm-up, then constant."""
  if config.warmup_steps:
    return optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
  return optax.constant_schedule(config.learning_rate)


def _rsqrt(config) -> optax.Schedule:
  """Linear warm-up, then lr·sqrt(warmup / step): fairseq's inverse_sqrt (Vaswani et al.)."""
  lr, warmup = config.learning_rate, config.warmup_steps
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup),
       lambda count: lr * (warmup / (warmup + count)) ** 0.5], [warmup])


SCHEDULES = {"constant": _constant, "cosine": _cosine, "rsqrt": _rsqrt}


def _eps(config) -> float:
  return config.get("adam_eps", 1e-8)       # .get: a config.json from before the field


OPTIMIZERS = {
    "adam": lambda lr, c: optax.adam(lr, b1=c.beta1, b2=c.beta2, eps=_eps(c)),
    "adamw": lambda lr, c: optax.adamw(lr, b1=c.beta1, b2=c.beta2, eps=_eps(c),
                                       weight_decay=c.weight_decay),
}


def validate(config) -> None:
  """The optimizer's fields, with the valid choices in every message."""
  if not (config.learning_rate > 0 and math.isfinite(config.learning_rate)):
    raise ValueError(f"config.learning_rate must be a finite number > 0, got "
                     f"{config.learning_rate!r}.")
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(f"Unknown config.optimizer {config.optimizer!r}; valid choices: "
                     f"{', '.join(OPTIMIZERS)}.")
  if config.lr_schedule not in SCHEDULES:
    raise ValueError(f"Unknown config.lr_schedule {config.lr_schedule!r}; valid choices: "
                     f"{', '.join(SCHEDULES)}.")
  warmup = config.warmup_steps
  checks.at_least("config.warmup_steps", warmup, 0)
  if config.lr_schedule == "rsqrt" and warmup < 1:
    raise ValueError("config.lr_schedule 'rsqrt' decays as sqrt(warmup_steps / step): it needs "
                     "config.warmup_steps >= 1.")
  for name in ("beta1", "beta2"):
    if not 0 <= config[name] < 1:
      raise ValueError(f"config.{name} must be in [0, 1), got {config[name]!r}.")
  if not _eps(config) > 0:
    raise ValueError(f"config.adam_eps must be > 0, got {config.adam_eps!r}.")
  if not config.weight_decay >= 0:
    raise ValueError(f"config.weight_decay must be >= 0, got {config.weight_decay!r}.")
  if config.weight_decay and config.optimizer != "adamw":
    raise ValueError(f"config.weight_decay={config.weight_decay} needs config.optimizer="
                     f"'adamw' (Adam's own L2 penalty is not offered), got "
                     f"{config.optimizer!r}.")
  if not config.grad_clip >= 0:
    raise ValueError(f"config.grad_clip must be >= 0 (0 turns clipping off), got "
                     f"{config.grad_clip!r}.")


def schedule(config) -> optax.Schedule:
  """The learning rate at each step."""
  return SCHEDULES[config.lr_schedule](config)


def optimizer(config) -> optax.GradientTransformation:
  """The config's optimizer over its schedule, after clipping when config.grad_clip > 0."""
  constant = config.lr_schedule == "constant" and not config.warmup_steps
  # A plain float keeps the optimizer state of a constant rate what it always was (no count).
  tx = OPTIMIZERS[config.optimizer](config.learning_rate if constant else schedule(config),
                                    config)
  if config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), tx)
  return tx
