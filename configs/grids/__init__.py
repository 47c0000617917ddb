"""Grids: an experiment design declared as data, run by `python -m experiments.grid`.

A grid file (configs/grids/<name>.py) defines `get_grid(arg: str | None) -> Grid`; the text after
the file's ':' is `arg` (e.g. `--grid=configs/grids/retrieval.py:knee,authors`). A Grid is a
tuple of Launches of launch.py, each a config (file and name), its flags, an optional sweep and
seeds, and a workdir under the grid's `runs` directory, plus where the grid's run records are
kept and where its report goes. Nothing here runs anything: experiments/grid.py does.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Launch:
  """One launch.py command: `--config=<config> <flags> [--sweep=] [--seeds=] --workdir=<runs>/
  <workdir>`. Its points are launch.py's sweep points (one per sweep value × seed; one point
  without a sweep and with at most one seed), or with `seed_dirs` (and no sweep) one launch per
  seed into <workdir>/seed=<s>, the layout of the LM, translation and algorithmic grids."""
  config: str                        # "configs/language_model.py:linear-delta"
  workdir: str                       # relative to Grid.runs
  flags: tuple[str, ...] = ()        # "--config.setting=2", ...
  sweep: str | None = None           # launch.py --sweep: FIELD=START:STOP:STEP or FIELD=V1,V2
  seeds: tuple[int, ...] = ()        # launch.py --seeds (empty: the config's seed)
  seed_dirs: bool = False            # one run per seed in <workdir>/seed=<s> (--config.seed=<s>)


@dataclasses.dataclass(frozen=True)
class Grid:
  """A grid: its launches, run in order `parallel` points at a time; records restored before and
  saved after (experiments.records); then the report of `runs` (and `report_roots`) into `out`
  (experiments.report, whose rows for the same points replace `previous`'s), or, with
  report="points", one table of every finished run under `runs` into <out>/<name>.md."""
  name: str
  runs: str                                  # the runs' root directory
  launches: tuple[Launch, ...]
  out: str | None = None                     # the report's directory (None: no report)
  records: str | None = None                 # results/runs/<...>: the finished runs' small files
  report: str = "families"                   # "families" (experiments.report) or "points"
  report_roots: tuple[str, ...] = ()         # further run roots the report reads
  previous: str | None = None                # a results CSV the new rows update, if it exists
  title: str = ""                            # report="points": the table's title
  notes: str = ""                            # report="points": a paragraph under the title
  parallel: int = 2                          # points at once (--parallel overrides)


def args(arg: str | None, choices: dict[str, tuple[str, ...]], defaults: dict[str, str]) -> dict:
  """`arg` 'knee,authors' parsed against choices {'grid': ('budget', 'knee'), 'variant': (...)}
  (each word picks the axis it belongs to; an unknown word is an error naming the valid ones)."""
  picked = dict(defaults)
  for word in filter(None, (arg or "").split(",")):
    axes = [axis for axis, values in choices.items() if word in values]
    if not axes:
      valid = "; ".join(f"{axis}: {', '.join(values)}" for axis, values in choices.items())
      raise ValueError(f"Unknown grid argument {word!r}; valid choices: {valid}.")
    picked[axes[0]] = word
  return picked
