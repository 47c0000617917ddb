"""TensorBoard event files beside metrics.jsonl: `tensorboard --logdir runs/` shows every run.

metrics.jsonl stays the source of truth (reports read it). The event files are a view of it,
written with tensorboardX (pure Python; no TensorFlow): every number of each record as a scalar
under its own name, and the run's config as text at step 0. On every start the view is rebuilt
from the metrics that survived the resume (metrics.jsonl is cut back to the checkpoint's step),
so a resumed run never shows a step twice, however its previous process ended. Process 0 only.
"""

from __future__ import annotations

import json
import numbers
import os
import shutil

from experiments import distributed

DIRECTORY = "tensorboard"


EVENTS = "events.out.tfevents."     # the names tensorboardX gives its event files


def _clear(directory: str) -> None:
  """The previous launch's events gone. A `tensorboard` that is a symlink (to a shared logdir)
  keeps its link and whatever else its target holds: only event files are removed there (rmtree
  refused the link and the old steps showed twice)."""
  if os.path.islink(directory):
    target = os.path.realpath(directory)
    for name in os.listdir(target) if os.path.isdir(target) else ():
      if name.startswith(EVENTS):
        os.remove(os.path.join(target, name))
  else:
    shutil.rmtree(directory, ignore_errors=True)


class EventLog:

  def __init__(self, workdir: str, config: dict, history: list[dict], enabled: bool = True):
    self.writer = None
    if not enabled or not distributed.is_main():
      return
    from tensorboardX import SummaryWriter   # only runs that write events import it
    directory = os.path.join(workdir, DIRECTORY)
    _clear(directory)
    self.writer = SummaryWriter(directory, flush_secs=10)
    self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, sort_keys=True)
                         + "\n```", 0)
    for record in history:
      self.write(record, flush=False)
    self.writer.flush()

  def write(self, record: dict, flush: bool = True) -> None:
    """Every number of one metrics.jsonl record, at its step."""
    if self.writer is None:
      return
    step = int(record["step"])
    for key, value in record.items():
      if key != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool):
        self.writer.add_scalar(key, float(value), step)
    if flush:
      self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
      self.writer = None
