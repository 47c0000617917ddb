"""Orbax checkpoints of a run: keep the latest N and, separately, the best by the task's
selection metric (lowest eval loss, highest BLEU, ...).

A checkpoint holds the whole training state as one pytree (experiments.train.TrainState:
parameters, optimizer state, the model's other variables such as FAVOR+ projections, the
train-loss sums, step, early-stopping state and wall time), so that resuming is exact: the data
is a function of (seed, step).
"""

from __future__ import annotations

import json
import os
import time

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from experiments import distributed


SELECTION = "selection"      # the metric's name in the checkpoints' metadata
STEP = "step"                # ... and the step's, to break ties


def _ranking(direction: str):
  """The selection metric as a key where higher is better, the earlier step winning a tie (as
  early stopping's strict improvement does)."""
  sign = -1.0 if direction == "min" else 1.0
  return lambda m: (sign * m[SELECTION], -m[STEP])


def manager(directory: str, keep: int, direction: str = "min") -> ocp.CheckpointManager:
  """The training run's own manager: it saves, prunes and clears its unfinished temporaries,
  and keeps the checkpoint whose selection metric is best in `direction` ("min" | "max"). The
  metrics are written beside each checkpoint (orbax does so when `best_fn` is set), so the best
  one is still known, and kept, after a relaunch."""
  ranking = _ranking(direction)
  for step in _unreadable_metrics(directory):     # orbax cannot even open a manager over them
    print(f"Warning: checkpoint at step {step} has an unreadable metrics file; set aside.",
          flush=True)
    _set_aside(os.path.abspath(directory), step)
  policy = pp.AnyPreservationPolicy([
      pp.LatestN(keep),
      pp.BestN(get_metric_fn=ranking, reverse=False, n=1,
               keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=ranking,
                                         best_mode="max", enable_async_checkpointing=False,
                                         cleanup_tmp_directories=True)
  # The handler named up front lets item_metadata read a checkpoint's tree before restoring it.
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_handlers=ocp.StandardCheckpointHandler())


def _set_aside(directory: str, step: int) -> None:
  """Renames the checkpoint of `step` to `<step>.unreadable-<time>` (kept for inspection, out of
  the manager's way), on the main process, the others waiting for it."""
  if distributed.is_main():
    path = os.path.join(directory, str(step))
    os.replace(path, f"{path}.unreadable-{int(time.time())}")
  distributed.barrier(f"set-aside-{step}")


def step_dirs(directory: str) -> list[int]:
  """The steps of the checkpoint directories in `directory` (names that are step numbers; not
  `<step>.unreadable`), ascending; [] when there is no such directory."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _unreadable_metrics(directory: str) -> list[int]:
  """Steps whose selection metrics file (written beside the checkpoint) does not parse: orbax
  reads them all when it opens a manager, and one bad file would stop it opening at all."""
  out = []
  if not os.path.isdir(directory):
    return out
  for name in os.listdir(directory):
    path = os.path.join(directory, name, "metrics", "metrics")
    if name.isdigit() and os.path.exists(path):
      try:
        with open(path, encoding="utf-8") as f:
          json.load(f)
      except (OSError, ValueError):
        out.append(int(name))
  return sorted(out)


def reader(directory: str, direction: str | None = None) -> ocp.CheckpointManager:
  """A manager that only reads: it creates, deletes and cleans up nothing, so it may open a
  run that is still training (generate, --restore_from) without touching its half-written
  checkpoint. With the run's selection `direction` ("min" | "max"), best_step reads it."""
  if not os.path.isdir(directory):
    raise ValueError(f"{directory!r} holds no checkpoints (no such directory).")
  damaged = _unreadable_metrics(directory)
  if damaged:
    steps = step_dirs(directory)
    which = ("None of the checkpoints" if damaged == steps else
             f"The checkpoints at steps {', '.join(map(str, damaged))} among those")
    raise ValueError(f"{which} in {os.path.abspath(directory)} (steps "
                     f"{', '.join(map(str, steps))}) can be restored: they are damaged or "
                     f"incomplete (an unreadable metrics file). Relaunching the training run "
                     f"sets them aside.")
  best = {} if direction is None else dict(best_fn=_ranking(direction), best_mode="max")
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                         cleanup_tmp_directories=False,
                                         enable_async_checkpointing=False, **best)
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)      # orbax warns that a read-only manager is read-only
  try:
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())
  finally:
    logging.set_verbosity(verbosity)


def save(mngr: ocp.CheckpointManager, step: int, state, selection: float | None) -> None:
  """Writes the checkpoint of `step` (with the selection metric's value when this step was
  evaluated); a failure (a full disk) raises ValueError saying so. The manager keeps the older
  checkpoints and clears the half-written one when the run restarts."""
  metrics = None if selection is None else {SELECTION: float(selection), STEP: int(step)}
  try:
    mngr.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
    mngr.wait_until_finished()
  except Exception as error:  # noqa: BLE001 - orbax wraps I/O errors in several types
    raise ValueError(f"Saving the checkpoint of step {step} in {mngr.directory} failed "
                     f"({type(error).__name__}: {error}). The checkpoints before it are kept: "
                     f"free some space and relaunch to resume.") from error


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, *, set_aside: bool = True):
  """(step, state) from the newest checkpoint that restores; older ones are tried in turn when
  the newest is incomplete or corrupt. (None, None) when there is none; a reader
  (`set_aside=False`) gets a ValueError when checkpoints exist and none of them restores.

  An unreadable checkpoint is renamed to `<step>.unreadable` (kept for inspection, out of the
  manager's way) so that training can write that step again; `set_aside=False` leaves it.
  A checkpoint that reads but holds a different model (other shapes or leaves) is not damage: it
  raises ValueError naming the differences and touches nothing.
  """
  steps, pruned = sorted(mngr.all_steps(), reverse=True), []
  for step in steps:
    mismatch = _structure_mismatch(mngr, step, abstract_state)
    if mismatch:
      raise ValueError(f"The checkpoint at step {step} in {mngr.directory} holds a different "
                       f"model than this config builds ({mismatch}). Nothing was changed: use "
                       f"a new --workdir, or the config that made this run.")
    try:
      state = mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
      return step, state
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is skipped, loudly
      if not set_aside and not os.path.isdir(os.path.join(str(mngr.directory), str(step))):
        # A reader beside a live run: the trainer pruned this one while it was read. Not damage.
        print(f"Checkpoint at step {step} was removed while it was read (the training run "
              f"keeps only its latest and best); trying the next.", flush=True)
        pruned.append(step)
        continue
      logging.warning("Checkpoint at step %d cannot be restored (%s: %s); trying an older one.",
                      step, type(error).__name__, error)
      print(f"Warning: checkpoint at step {step} cannot be restored; using an older one.",
            flush=True)
      if set_aside:
        _set_aside(str(mngr.directory), step)
        mngr.reload()
  if pruned and len(pruned) == len(steps):
    raise Pruned(f"Every checkpoint listed in {mngr.directory} (steps "
                 f"{', '.join(map(str, sorted(steps)))}) was removed while it was read.")
  if steps and not set_aside:   # a reader: say that checkpoints exist and none reads
    raise ValueError(f"None of the checkpoints in {mngr.directory} (steps "
                     f"{', '.join(map(str, sorted(steps)))}) can be restored: they are damaged "
                     f"or incomplete (see the warnings above).")
  return None, None


class Pruned(ValueError):
  """A reader found every checkpoint it had listed removed by the training run (which prunes
  as it saves): the run's newer ones are there to be listed again."""


def best_step(mngr: ocp.CheckpointManager) -> int | None:
  """The kept checkpoint whose selection metric is best (the first on a tie), or None when no
  kept checkpoint was saved at an evaluation."""
  if not any(mngr.metrics(step) for step in mngr.all_steps()):
    return None
  return mngr.best_step()


def restore_step(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """The state saved at `step` (which must exist)."""
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def _leaf_shapes(tree) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  key = lambda path: "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                              for k in path)
  return {key(path): tuple(getattr(leaf, "shape", ())) for path, leaf in flat}


def _structure_mismatch(mngr, step, abstract_state) -> str:
  """'' when the saved tree matches abstract_state (or its metadata cannot be read: then the
  restore decides), else the first differences: saved vs requested leaves and shapes."""
  try:
    saved = _leaf_shapes(mngr.item_metadata(step))
  except Exception:  # noqa: BLE001 - unreadable metadata is damage, handled by the restore
    return ""
  wanted = _leaf_shapes(abstract_state)
  if not saved:
    return ""
  diffs = [f"{k}: saved {saved.get(k, 'absent')} vs requested {wanted.get(k, 'absent')}"
           for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
  return "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")


def abstract(state):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
