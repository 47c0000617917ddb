"""Runs a grid declared in configs/grids/ (configs/grids/__init__.py: Grid, Launch).

  python -m experiments.grid --grid=configs/grids/lm.py                 # the LM grid
  python -m experiments.grid --grid=configs/grids/retrieval.py:knee,authors --parallel=2
  python -m experiments.grid --grid=configs/grids/lm_modern.py --only=kda,fla --dry_run

Restores the grid's run records (results/runs/<name>: a fresh machine skips what any earlier one
finished), runs every point of every launch `--parallel` at a time (each a single-threaded
launch.py process, its output in <runs>/logs/), saves the records of the finished runs and writes
the report. Relaunching resumes: finished points are skipped, interrupted ones continue from their
checkpoints; the records are saved as each point finishes, so a machine lost mid-grid keeps
them. SIGTERM/SIGINT stops every running point (each checkpoints) and exits; a point that
fails is named with its log, the others go on, and the command exits 1 after the report.
`--only` keeps the points whose workdir contains one of the given words.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import json
import os
import sys

from absl import app, flags

from configs.grids import Grid, Launch
from experiments import records, report, results, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_GRID = flags.DEFINE_string("grid", None, "A grid file and its argument, "
                            "e.g. configs/grids/retrieval.py:knee,authors.")
_ONLY = flags.DEFINE_list("only", None, "Run only the points whose workdir contains one of "
                          "these words (the report still reads every finished run).")
_PARALLEL = flags.DEFINE_integer("parallel", None, "Points at once (default: the grid's).",
                                 lower_bound=1)
_SEEDS = flags.DEFINE_list("seeds", None, "Replace every launch's seeds with these.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print every point's command; run nothing.")
_PYTHON = flags.DEFINE_string("python", sys.executable, "The Python that runs launch.py.")


def load(spec: str) -> Grid:
  """'configs/grids/lm.py:arg' -> the file's get_grid(arg). Errors name the bad part."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    found = sorted(glob.glob(os.path.join(ROOT, "configs", "grids", "[a-z]*.py")))
    raise ValueError(f"No grid file {path!r}; the grids: "
                     f"{', '.join(os.path.relpath(p, ROOT) for p in found)}.")
  module_spec = importlib.util.spec_from_file_location("_fwp_grid", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  grid = module.get_grid(arg or None)
  if not isinstance(grid, Grid):
    raise ValueError(f"{path}: get_grid returned {type(grid).__name__}, not a Grid.")
  return grid


def points(launch: Launch) -> list[dict]:
  """The launch's points as launch.py numbers them (sweep.points); [{}] for one run."""
  if launch.sweep is None and len(launch.seeds) <= 1:
    return [{}]
  return sweep.points(launch.sweep, list(launch.seeds) or [0])


def _launch_commands(launch: Launch, runs: str, python: str) -> list[tuple[str, list[str]]]:
  """(label, argv) for each of one launch's points; the label is the point's workdir."""
  base = [python, "launch.py", f"--config={launch.config}", *launch.flags]
  workdir = os.path.join(runs, launch.workdir)
  if launch.seed_dirs:
    return [(label, base + [f"--config.seed={seed}", f"--workdir={label}"])
            for seed in launch.seeds for label in [os.path.join(workdir, f"seed={seed}")]]
  if launch.sweep:
    base.append(f"--sweep={launch.sweep}")
  if launch.seeds:
    base.append(f"--seeds={','.join(str(s) for s in launch.seeds)}")
  base.append(f"--workdir={workdir}")
  return [(sweep.point_dir(workdir, overrides), base + [f"--sweep_index={index}"]) if overrides
          else (workdir, base) for index, overrides in enumerate(points(launch))]


def commands(grid: Grid, python: str = sys.executable) -> list[tuple[str, list[str]]]:
  """(label, argv) for every point of the grid, in order: the label is the point's workdir; a
  point declared twice runs once (the first declaration)."""
  out = {}
  for launch in grid.launches:
    for label, argv in _launch_commands(launch, grid.runs, python):
      out.setdefault(label, argv)
  return list(out.items())


def log_path(grid: Grid, label: str) -> str:
  relative = os.path.relpath(label, grid.runs)
  return os.path.join(grid.runs, "logs", relative.replace(os.sep, "__") + ".log")


def points_table(grid: Grid) -> list[str]:
  """report="points": every finished run under the grid's runs, one row each."""
  rows = []
  for relative in sorted(records.finished(grid.runs)):
    with open(os.path.join(grid.runs, relative, "summary.json")) as f:
      summary = json.load(f)
    launch, _, point = relative.rpartition(os.sep)
    rows.append(f"| {launch} | {point} | {summary['final_eval_loss']:.4f} | {summary['steps']} | "
                f"{summary['stop_reason']} |")
  if not rows:
    raise ValueError(f"No finished runs (summary.json) under {grid.runs}.")
  lines = [f"# {grid.title or grid.name}", "", results.made_by(), ""]
  lines += [grid.notes, ""] if grid.notes else []
  lines += ["| launch | run | final eval loss | steps | stop |", "|---|---|---|---|---|"] + rows
  os.makedirs(grid.out, exist_ok=True)
  path = os.path.join(grid.out, f"{grid.name}.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return [path]


def write_report(grid: Grid) -> list[str]:
  if grid.report == "points":
    return points_table(grid)
  previous = grid.previous if grid.previous and os.path.exists(grid.previous) else None
  roots = [grid.runs] + [r for r in grid.report_roots if os.path.isdir(r) and r != grid.runs]
  return report.report(roots, grid.out, previous)


def with_seeds(grid: Grid, seeds: list[str]) -> Grid:
  """The grid with every launch's seeds replaced (--seeds)."""
  if not all(s.strip().isdigit() for s in seeds):
    raise ValueError(f"--seeds must be non-negative integers, got {','.join(seeds)}.")
  values = tuple(int(s) for s in seeds)
  return dataclasses.replace(grid, launches=tuple(dataclasses.replace(launch, seeds=values)
                                                  for launch in grid.launches))


def run(grid: Grid, *, only=None, parallel=None, dry_run=False, python=sys.executable) -> int:
  """Restore, run, save, report (see the module's docstring); returns the failed points' count."""
  todo = commands(grid, python)
  if only:
    todo = [(label, argv) for label, argv in todo if any(word in label for word in only)]
    if not todo:
      raise ValueError(f"--only={','.join(only)} matches no point of grid {grid.name}; its "
                       f"points: {', '.join(label for label, _ in commands(grid, python))}.")
  if dry_run:
    for label, argv in todo:
      print(" ".join(["python"] + argv[1:]))
    return 0
  if grid.records and os.path.isdir(grid.records):
    records.restore(grid.records, grid.runs)
  os.makedirs(grid.runs, exist_ok=True)
  logs = [log_path(grid, label) for label, _ in todo]
  print(f"Grid {grid.name}: {len(todo)} points, {parallel or grid.parallel} at a time; logs in "
        f"{os.path.join(grid.runs, 'logs')}", flush=True)
  def save_records(index, code):
    # As each point ends, not only at the grid's end: a machine lost mid-grid (a session's
    # clock, a preemption) keeps every run that finished before it.
    if grid.records and code == 0:
      records.save(grid.runs, grid.records)

  codes = sweep.run_processes([argv for _, argv in todo], parallel or grid.parallel, logs,
                              env=sweep.single_threaded_env(), on_exit=save_records)
  failed = [(label, log) for (label, _), log, code in zip(todo, logs, codes) if code]
  for label, log in failed:
    print(f"failed: {label} (see {log})", file=sys.stderr, flush=True)
  if grid.records:
    records.save(grid.runs, grid.records)
  if grid.out and any(True for _ in records.finished(grid.runs)):
    for path in write_report(grid):
      print(path)
  return len(failed)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _GRID.value:
    raise app.UsageError("Give --grid=configs/grids/<name>.py[:arg].")
  try:
    path, sep, arg = _GRID.value.partition(":")
    grid = load(os.path.abspath(path) + sep + arg)
    os.chdir(ROOT)                   # the grids' paths (configs/, runs/, results/) are the repo's
    if _SEEDS.value:
      grid = with_seeds(grid, _SEEDS.value)
    failures = run(grid, only=_ONLY.value, parallel=_PARALLEL.value,
                   dry_run=_DRY_RUN.value, python=_PYTHON.value)
  except ValueError as error:
    print(f"Error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
  raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
  app.run(main)
