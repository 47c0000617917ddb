"""Opening a run directory to read it (generate, translate): its config, its task, and the
parameters of one of its checkpoints. Nothing is written or deleted there: the run may still be
training."""

from __future__ import annotations

import json
import os

import ml_collections
from flax import nnx

from experiments import checkpoint, tasks, train


def read_config(workdir: str, task: str, purpose: str) -> ml_collections.ConfigDict:
  """config.json of a `task` run in `workdir`; ValueError saying what is wrong otherwise
  (`purpose`: what the reader does, for the message, e.g. "generation")."""
  if not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir!r} is not a directory: give a {task} run's "
                     f"directory (the --workdir it was launched with).")
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"{workdir!r} holds no config.json: not a run directory.")
  try:
    with open(path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  except ValueError as error:
    raise ValueError(f"{path} is not valid JSON ({error}).") from None
  if config.get("task") != task:
    raise ValueError(f"{workdir!r} is a {config.get('task', 'associative_recall')!r} run; "
                     f"{purpose} needs a {task} run.")
  return config


WHICH = ("latest", "best")


def restore(workdir: str, config, task, which: str = "latest") -> tuple[nnx.Module, int]:
  """(the task's model with the parameters of the run's latest or best checkpoint, its step)."""
  if which not in WHICH:
    raise ValueError(f"Unknown checkpoint {which!r}; valid choices: {', '.join(WHICH)}.")
  graphdef, state = train.create_state(task, tasks.optimizer(task, config), 0)
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory) or not os.listdir(directory):
    if os.path.exists(os.path.join(workdir, "summary.json")):
      raise ValueError(f"{workdir!r} is a finished run with no checkpoints here (a run record "
                       f"keeps its config, metrics and summary, not its weights): read the "
                       f"directory it trained in.")
    raise ValueError(f"{workdir!r} has no checkpoint yet (the first is written at step "
                     f"{config.checkpoint_every}); wait for it or train longer.")
  abstract = checkpoint.abstract(state.checkpoint(0.0))
  for attempt in range(_ATTEMPTS):
    try:
      step, restored = _read(directory, task, abstract, which)
      break
    except checkpoint.Pruned:     # the live run saved newer ones meanwhile: list them again
      if attempt == _ATTEMPTS - 1:
        raise
  if restored is None:
    raise ValueError(f"{workdir!r} has no finished checkpoint yet (the first is written at step "
                     f"{config.checkpoint_every}); wait for it or train longer.")
  return nnx.merge(graphdef, restored["params"], restored["rest"]), step


_ATTEMPTS = 3        # listings of a live run's checkpoints before its pruning counts as a failure


def _read(directory: str, task, abstract, which: str):
  """(step, state) of the latest (or best) checkpoint in `directory`, through a read-only
  manager; checkpoint.Pruned when the trainer removed all those listed."""
  mngr = checkpoint.reader(directory, tasks.selection(task)[1])
  try:
    step, restored = checkpoint.restore_latest(mngr, abstract, set_aside=False)
    best = checkpoint.best_step(mngr) if which == "best" else None
    if best is not None and best != step:
      step, restored = best, checkpoint.restore_step(mngr, best, abstract)
    return step, restored
  finally:
    mngr.close()
