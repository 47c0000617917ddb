"""Experiment families behind the one train loop, picked by `config.task`.

A task module has three functions:
  validate(config)           every check that needs no computation (launch.py runs it at parsing)
  build_model(config, rngs)  the nnx.Module to train
  make(config) -> Task       loads what the run needs (a corpus, ...) once
and its Task object says what one run of that family computes:
  host_batch(step)           this step's batch as NumPy arrays, or None when the batch is made
                             inside the jitted step (both are pure functions of (seed, step))
  loss(model, batch, step)   the training loss, traced inside the jitted step
  evaluate(graphdef, params, rest, step) -> dict with "eval_loss" (early stopping) and any other
                             numbers worth a column in metrics.jsonl
  final(graphdef, params, rest) -> dict of numbers for summary.json, computed once when a run
                             ends (e.g. test perplexity)
  summary_fields             what names the run in summary.json and the reports
Adding a family is a new module here and its name in TASKS; the loop does not change.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol


class Task(Protocol):
  summary_fields: dict

  def host_batch(self, step: int) -> dict | None: ...
  def loss(self, model, batch, step) -> Any: ...
  def evaluate(self, graphdef, params, rest, step: int) -> dict: ...
  def final(self, graphdef, params, rest) -> dict: ...


# Each family's module, imported when a run asks for it (a retrieval run never loads the text
# code of the language models).
TASKS = ("associative_recall", "language_model")


def get(name: str):
  if name not in TASKS:
    raise ValueError(f"Unknown task {name!r}; valid choices: {', '.join(TASKS)}.")
  return importlib.import_module(f"experiments.tasks.{name}")
