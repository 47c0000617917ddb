"""What each fast weight rule is, in one record: whether it takes β, its forms, the form "auto"
picks, the scan's segment length, its single step and its block (None: no matrix form)."""

from __future__ import annotations

import dataclasses
from typing import Callable

from fwp.ops import chunked, recurrent

FORMS = ("recurrent", "parallel", "chunked")
AUTO = "auto"            # form="auto" / chunk_size="auto": chosen per shape, see api.choose_form
# Crossovers measured with `python -m experiments.studies.bench` on a 2-core CPU (results/bench.md):
# the O(T²) parallel form wins up to PARALLEL_MAX_T steps, chunks of AUTO_CHUNK beyond.
PARALLEL_MAX_T = 128
AUTO_CHUNK = 32


@dataclasses.dataclass(frozen=True)
class Rule:
  name: str
  uses_beta: bool
  forms: tuple[str, ...]
  auto_form: Callable[[int], str]    # sequence length T -> the form "auto" runs
  segment: int                       # the recurrent backward's segment (steps)
  step: recurrent.Step
  block: Callable | None             # the block of the matrix forms (chunked.chunked)
  carries_queries: bool              # its read after the sequence can carry q back in time
  why_recurrent_only: str = ""       # for the error naming a form it lacks


BY_NAME = {
    "sum": Rule("sum", False, FORMS,
                lambda t: "parallel" if t <= PARALLEL_MAX_T else "chunked",
                recurrent.REMAT_SEGMENT, recurrent.SUM, chunked.sum_block, False),
    # Its parallel form inverts a T×T system: chunks win from T = 256 down (and a sequence
    # within one chunk is the parallel form anyway).
    "delta": Rule("delta", True, FORMS, lambda t: "chunked", recurrent.REMAT_SEGMENT,
                  recurrent.DELTA, chunked.delta_block, True),
    "fwm": Rule("fwm", True, ("recurrent",), lambda t: "recurrent",
                min(recurrent.REMAT_SEGMENT, recurrent.FWM_SEGMENT), recurrent.FWM, None, False,
                "its update divides W by max(1, ‖W‖_F) after every step, which is nonlinear in "
                "W, so it cannot be unrolled into matrix products"),
}
RULES = tuple(BY_NAME)


def get(name: str) -> Rule:
  if name not in BY_NAME:
    raise ValueError(f"Unknown update rule {name!r}; valid choices: {', '.join(RULES)}.")
  return BY_NAME[name]
