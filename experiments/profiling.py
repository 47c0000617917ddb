"""A jax.profiler trace of chosen train steps, by flag: --config.profile_steps=START:STOP traces
the steps START..STOP-1 (0-based, as metrics.jsonl's step counts them) into WORKDIR/profile/.

View it in TensorBoard's profile plugin (`pip install tensorboard-plugin-profile`, then
`tensorboard --logdir WORKDIR/profile`) or open the `*.trace.json.gz` under
WORKDIR/profile/plugins/profile/<time>/ in https://ui.perfetto.dev. The trace does not change
what the run computes.
"""

from __future__ import annotations

import os

import jax

from experiments import distributed
from experiments.progress import say

DIRECTORY = "profile"


def parse(spec: str) -> tuple[int, int] | None:
  """'START:STOP' -> (START, STOP); '' -> None. Raises ValueError naming the format."""
  if not spec:
    return None
  try:
    start, stop = (int(x) for x in spec.split(":"))
    if not 0 <= start < stop:
      raise ValueError
  except ValueError:
    raise ValueError(f"config.profile_steps must be 'START:STOP' with 0 <= START < STOP (the "
                     f"steps START..STOP-1 are traced; '' traces none), got {spec!r}.") from None
  return start, stop


class StepTrace:
  """`before(step)` ahead of running step `step`, `after(steps_done, carry)` once it ran."""

  def __init__(self, spec: str, workdir: str):
    self.steps = parse(spec)
    self.directory = os.path.join(workdir, DIRECTORY)
    self.active = False

  def before(self, step: int) -> None:
    if self.steps and step == self.steps[0] and distributed.is_main():
      say(f"Profiling train steps {self.steps[0]}..{self.steps[1] - 1} into {self.directory}")
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, steps_done: int, carry) -> None:
    if self.active and steps_done == self.steps[1]:
      jax.block_until_ready(carry)         # the traced steps' work, not just their dispatch
      self.close()
      say(f"Wrote the trace of steps {self.steps[0]}..{self.steps[1] - 1} to {self.directory}")

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
