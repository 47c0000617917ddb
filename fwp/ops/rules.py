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
  gated: bool = False                # takes log_decay [B, T, H] or [B, T, H, K]
  gate_optional: bool = False        # ... or runs without one (delta_product)
  writes_per_token: bool = False     # k, v, beta carry an axis of N writes per token


# The gated rules' recurrent backward reruns each segment forward (their steps are not undone,
# see recurrent.GATED_SUM) and stacks its states, so their segments are short, as fwm's are.
# Their `auto` forms as the ungated rules' (measured in results/bench_gated.md, this CPU, two
# runs): gated_sum's parallel form is as fast as chunks to T = 128-256 and 2-5x slower at 1024;
# gated_delta's chunks win from T = 256 (the parallel form inverts a T×T system) and at T <= 128
# the two runs disagree (parallel at 0.5x and 1.3x the chunks' time), so it keeps the delta
# rule's choice, chunks at every T.
GATED_SEGMENT = recurrent.FWM_SEGMENT


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
    "gated_sum": Rule("gated_sum", False, FORMS,
                      lambda t: "parallel" if t <= PARALLEL_MAX_T else "chunked",
                      GATED_SEGMENT, recurrent.GATED_SUM, chunked.gated_sum_block, False,
                      gated=True),
    "gated_delta": Rule("gated_delta", True, FORMS, lambda t: "chunked", GATED_SEGMENT,
                        recurrent.GATED_DELTA, chunked.gated_delta_block, False, gated=True),
    # N delta writes per token (after the token's gate, if any), then the read: the gated delta
    # rule (or the delta rule, ungated) over the N·T writes, reading after each token's last.
    "delta_product": Rule("delta_product", True, FORMS, lambda t: "chunked", GATED_SEGMENT,
                          recurrent.GATED_DELTA, chunked.gated_delta_block, False, gated=True,
                          gate_optional=True, writes_per_token=True),
}
RULES = tuple(BY_NAME)


def names(where: Callable[[Rule], bool]) -> str:
  """The names of the rules for which `where` holds, comma-separated (for error messages)."""
  return ", ".join(name for name, r in BY_NAME.items() if where(r))


def get(name: str) -> Rule:
  if name not in BY_NAME:
    raise ValueError(f"Unknown update rule {name!r}; valid choices: {', '.join(RULES)}.")
  return BY_NAME[name]
