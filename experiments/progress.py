"""What a long phase prints while it runs, from process 0 only: the first compile, tokenising,
the final evaluations. A line at most every `every` seconds, so quick phases print nothing."""

from __future__ import annotations

import time

from experiments import distributed


def say(message: str) -> None:
  """Progress on stdout, from process 0 only."""
  if distributed.is_main():
    print(message, flush=True)


class Progress:
  """`update(done)` prints "<what> done/total (p%), elapsed" once `every` seconds have passed
  since the last line (or the start)."""

  def __init__(self, what: str, total: int, every: float = 10.0):
    self.what, self.total, self.every = what, total, every
    self.start = self.last = time.time()

  def update(self, done: int) -> None:
    now = time.time()
    if now - self.last < self.every:
      return
    self.last = now
    share = f" ({100 * done / self.total:.0f}%)" if self.total else ""
    say(f"  {self.what} {done}/{self.total or '?'}{share}, {now - self.start:.0f} s")
