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


class Interrupted(BaseException):
  """SIGTERM/SIGINT arrived during an evaluation or the data's preparation (`signal` names it):
  the loop saves what it can and exits 128 + the signal's number. A BaseException, as
  KeyboardInterrupt is: no `except Exception` (a checkpoint skipped as unreadable) swallows it."""

  def __init__(self, name: str):
    super().__init__(name)
    self.signal = name


class Signals:
  """SIGTERM/SIGINT, honoured in seconds. While `preparing` (reading, tokenising, building
  caches: nothing to save yet) the handler raises Interrupted at once; afterwards it sets a flag
  that the loop reads after each step and that an evaluation reads between its batches
  (`checked`). The handlers are this process's while the context is open."""

  def __init__(self, preparing: bool = False):
    self.signal = None
    self.preparing = preparing

  def __enter__(self):
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
    _ACTIVE.append(self)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name
    if self.preparing:
      raise Interrupted(self.signal)

  def __exit__(self, *exc):
    _ACTIVE.remove(self)
    for s, handler in self._previous.items():
      signal.signal(s, handler)


_ACTIVE: list[Signals] = []


def check() -> None:
  """Raises Interrupted when a signal has arrived under the open Signals (none open: nothing).
  In a job of several processes it raises nothing: a collective evaluation stopped on one
  process would leave the others waiting, so there the flag waits for the next step."""
  if _ACTIVE and _ACTIVE[-1].signal is not None:
    import jax   # noqa: PLC0415 - the loop's processes have it loaded; tests of this need not
    if jax.process_count() == 1:
      raise Interrupted(_ACTIVE[-1].signal)


def checked(items):
  """`items`, with check() before each: an evaluation's batches, a tokeniser's chunks."""
  for item in items:
    check()
    yield item
