"""When a run stops: early stopping on the task's selection metric, and SIGTERM/SIGINT."""

from __future__ import annotations

import dataclasses
import math
import signal

from experiments import tasks


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
  """The task's selection metric and direction (which eval is the best, for patience and the
  best checkpoint), patience in evals, config.stop_loss on the eval loss, and the task's
  `stop_at` (optional): the selection value that ends a run (e.g. 100 % accuracy)."""
  metric: str
  direction: str
  patience: int
  stop_loss: float
  stop_at: float | None = None

  @classmethod
  def of(cls, task, config) -> "EarlyStopping":
    return cls(*tasks.selection(task), config.patience, config.stop_loss,
               getattr(task, "stop_at", None))

  def better(self, value: float, best: float) -> bool:
    return value < best if self.direction == "min" else value > best

  def update(self, progress, evaluated: dict) -> str | None:
    """Records one eval in `progress`; returns the stop reason, if this eval ends the run."""
    if self.metric not in evaluated:
      raise ValueError(f"The task's selection metric {self.metric!r} is not among its eval "
                       f"numbers: {', '.join(evaluated)}.")
    value = evaluated[self.metric]
    if self.better(value, progress.best):
      progress.best, progress.bad_evals = value, 0
    else:
      progress.bad_evals += 1
    if evaluated.get("eval_loss", math.inf) <= self.stop_loss:
      return "stop_loss"
    if self.stop_at is not None and not self.better(self.stop_at, value):
      return "target"                      # the selection metric reached the task's target
    if progress.bad_evals > self.patience:
      return "patience"
    return None


class Signals:
  """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step and exits."""

  def __init__(self):
    self.signal = None

  def __enter__(self):
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
