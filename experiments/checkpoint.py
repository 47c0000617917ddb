"""Orbax checkpoints of a run: keep the latest N and, separately, the best by eval loss.

A checkpoint holds the whole training state as one pytree (parameters, optimizer state, the
model's other variables such as FAVOR+ projections, step, early-stopping state, the train-loss
accumulator and wall time), so that resuming is exact: the data is a function of (seed, step).
"""

from __future__ import annotations

import os
import time

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from experiments import distributed


def manager(directory: str, keep: int) -> ocp.CheckpointManager:
  policy = pp.AnyPreservationPolicy([
      pp.LatestN(keep),
      pp.BestN(get_metric_fn=lambda m: m["eval_loss"], reverse=True, n=1,
               keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(preservation_policy=policy,
                                         enable_async_checkpointing=False,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, eval_loss: float | None) -> None:
  metrics = None if eval_loss is None else {"eval_loss": float(eval_loss)}
  mngr.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
  mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, *, set_aside: bool = True):
  """(step, state) from the newest checkpoint that restores; older ones are tried in turn when
  the newest is incomplete or corrupt. (None, None) when there is none.

  An unreadable checkpoint is renamed to `<step>.unreadable` (kept for inspection, out of the
  manager's way) so that training can write that step again; `set_aside=False` leaves it.
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      state = mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
      return step, state
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is skipped, loudly
      logging.warning("Checkpoint at step %d cannot be restored (%s: %s); trying an older one.",
                      step, type(error).__name__, error)
      print(f"Warning: checkpoint at step {step} cannot be restored; using an older one.",
            flush=True)
      if set_aside:
        if distributed.is_main():
          path = os.path.join(str(mngr.directory), str(step))
          os.replace(path, f"{path}.unreadable-{int(time.time())}")
        distributed.barrier(f"set-aside-{step}")
        mngr.reload()
  return None, None


def abstract(state):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
