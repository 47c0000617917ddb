"""Experiment families behind the one train loop, picked by `config.task`.

A family is a package experiments/tasks/<name>/ (or any importable module, see `register`)
whose module gives:
  validate(config)            every check that needs no computation (launch.py runs it at
                              parsing, before anything is read or compiled)
  make(config, mesh) -> Task  loads what the run needs (a corpus, a vocabulary) once
  RESUMABLE                   its config fields that may change when a run resumes (they change
                              neither the model nor the data), added to the loop's own;
  resumable(flat config)      (optional) instead of RESUMABLE, when they depend on the config
  ADDED_FIELDS                {field: value} for fields added after runs existed: a saved
                              config without one resumes when the current value is this one
  data_identity(config)       (optional) a record of the data read, checked on resume
  report                      (a module `<name>.report`, imported by experiments.report only):
                              collect(finished, previous) -> rows; write(rows, out) -> paths
and its Task object says what one run of that family computes:
  selection                   (metric, "min" | "max"): the evaluate() number that early stopping
                              and the best checkpoint follow, e.g. ("eval_loss", "min")
  summary_fields              what names the run in summary.json and the reports
  build_model(rngs)           the nnx.Module to train (the task holds its vocabularies)
  optimizer()                 (optional) the optax transformation; default experiments.optim's
                              from the config's fields
  host_batch(step)            this step's batch as NumPy arrays, or None when the batch is made
                              inside the jitted step (both are pure functions of (seed, step))
  initial_carry(model)        (optional) a state the task carries from one step to the next
                              (e.g. a language model's fast weights, stream by stream): a
                              pytree of batch-major arrays, or None for none. The loop keeps
                              it in the training state (checkpointed, split over the mesh as
                              the batch is) and calls loss(model, batch, step, carry) ->
                              (loss, aux, next carry); no gradient crosses from one step into
                              the carry of the next
  loss(model, batch, step) -> (loss, aux)
                              traced inside the jitted step; aux["weight"] is this batch's weight
                              in the running train loss (e.g. its token count; 1 for a plain
                              mean) and every other aux scalar is averaged with the same weights
                              into metrics.jsonl as train_<name>
  evaluate(graphdef, params, rest, step) -> dict of numbers (a line in metrics.jsonl); holds
                              the selection metric, and "eval_loss" where the family has one
                              (config.stop_loss reads it)
  final(graphdef, params, rest, step) -> dict of numbers for summary.json, computed once when
                              a run ends (e.g. test perplexity); `step`: how many training steps
                              made `params` (the last or the best checkpoint's)
  output_dir                  (optional) an attribute the loop sets to the run directory before
                              the first step, for files final() writes (e.g. translations)
  stop_at                     (optional) the selection metric's value that ends the run (stop
                              reason "target"), e.g. 100.0 for an accuracy in percent
  final_checkpoint            (optional) "last" (default): final() reads the run's last
                              parameters; "best": those of the kept checkpoint best by the
                              selection metric (every eval is checkpointed when checkpoint_every
                              = eval_every), its step in summary.json as final_from_step
The loop names no family and no family's field.
"""

from __future__ import annotations

import importlib
import types
from typing import Any, Protocol

import optax
from flax import nnx


class Task(Protocol):
  selection: tuple[str, str]
  summary_fields: dict

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module: ...
  def host_batch(self, step: int) -> dict | None: ...
  def loss(self, model, batch, step) -> tuple[Any, dict]: ...
  def evaluate(self, graphdef, params, rest, step: int) -> dict: ...
  def final(self, graphdef, params, rest, step: int) -> dict: ...


DIRECTIONS = ("min", "max")

# name -> module path, imported only when a run names it (a retrieval run never loads the text
# code of the language models).
_FAMILIES = {"associative_recall": "experiments.tasks.associative_recall",
             "language_model": "experiments.tasks.language_model",
             "algorithmic": "experiments.tasks.algorithmic",
             "translation": "experiments.tasks.translation",
             "formal_languages": "experiments.tasks.formal_languages"}
TASKS = tuple(_FAMILIES)


def register(name: str, module: str | types.ModuleType) -> None:
  """Adds a family from outside this package (a module path, or the module itself): a new
  family needs no change to experiments/."""
  global TASKS
  _FAMILIES[name] = module
  TASKS = tuple(_FAMILIES)


def get(name: str) -> types.ModuleType:
  if name not in _FAMILIES:
    raise ValueError(f"Unknown task {name!r}; valid choices: {', '.join(_FAMILIES)}.")
  module = _FAMILIES[name]
  return importlib.import_module(module) if isinstance(module, str) else module


def report(name: str) -> types.ModuleType:
  """The family's report module (`<family>.report`)."""
  family = get(name)
  return getattr(family, "report", None) or importlib.import_module(f"{family.__name__}.report")


def optimizer(task: Task, config) -> optax.GradientTransformation:
  """The task's own optimizer, or the one the config's fields describe."""
  from experiments import optim
  return task.optimizer() if hasattr(task, "optimizer") else optim.optimizer(config)


def initial_carry(task: Task, model: nnx.Module):
  """The state `task` carries from step to step, built for `model`; None when it keeps none."""
  make_carry = getattr(task, "initial_carry", None)
  return None if make_carry is None else make_carry(model)


def selection(task: Task) -> tuple[str, str]:
  metric, direction = task.selection
  if direction not in DIRECTIONS:
    raise ValueError(f"Task selection direction {direction!r} for {metric!r}; valid choices: "
                     f"{', '.join(DIRECTIONS)}.")
  return metric, direction
