"""Run records: the small files of each finished run (config, summary, metrics), kept in the
repository so that a sweep survives the machine it ran on.

  python -m experiments.records save runs/knee results/runs/knee     # after (part of) a sweep
  python -m experiments.records restore results/runs/knee runs/knee  # before relaunching it

A run directory holds its checkpoints (large, machine-local) and three small files. `save` copies
the small files of every finished run (one with a summary.json) under a sweep's root into a
records tree of the same layout; `restore` copies them back where a run directory has no summary.
The train loop then finds the point finished ("Already finished ...") and skips it, exactly as if
it had run there, so relaunching a sweep on a fresh machine continues it instead of starting it
over. A restored run that ended at its step budget continues under a larger one from step 0 (its
checkpoints stayed behind), which reproduces the same steps: data is a function of (seed, step).
"""

from __future__ import annotations

import os
import shutil

from absl import app

FILES = ("config.json", "summary.json", "metrics.jsonl")


def finished(root: str):
  """Relative paths of the run directories under `root` that hold a summary.json: the one rule
  for "a finished run" (experiments.report reads runs through it too)."""
  for directory, _, files in os.walk(root):
    if "summary.json" in files:
      yield os.path.relpath(directory, root)


def _copy(source_root: str, target_root: str, relative: str) -> None:
  source, target = os.path.join(source_root, relative), os.path.join(target_root, relative)
  os.makedirs(target, exist_ok=True)
  for name in FILES:
    if os.path.exists(os.path.join(source, name)):
      shutil.copyfile(os.path.join(source, name), os.path.join(target, name))


def _check_pair(source: str, target: str, what: str) -> None:
  """The two trees must be two: not one, not one inside the other (a records tree inside the
  runs it saves would be saved into itself on every save), and the target not a file."""
  if os.path.exists(target) and not os.path.isdir(target):
    raise ValueError(f"{target!r} is a file; the {what} destination must be a directory.")
  a, b = os.path.realpath(source), os.path.realpath(target)
  if a == b:
    raise ValueError(f"{source!r} and {target!r} are the same directory; give two.")
  if os.path.commonpath([a, b]) in (a, b):
    inner, outer = (target, source) if os.path.commonpath([a, b]) == a else (source, target)
    raise ValueError(f"{inner!r} lies inside {outer!r}: records and runs must be separate "
                     f"trees (e.g. results/runs/NAME and runs/NAME).")


def save(runs: str, records: str) -> list[str]:
  """Copies the small files of every finished run under `runs` to `records`; returns their
  relative paths."""
  if not os.path.isdir(runs):
    raise ValueError(f"No run directory {runs!r} to save records from.")
  _check_pair(runs, records, "save")
  saved = sorted(finished(runs))
  for relative in saved:
    _copy(runs, records, relative)
  return saved


def restore(records: str, runs: str) -> list[str]:
  """Copies every record under `records` into `runs` where that run has no summary.json (a run
  finished here stays as it is); returns the relative paths restored."""
  if not os.path.isdir(records):
    if os.path.exists(records):
      raise ValueError(f"{records!r} is a file, not a records directory.")
    return []            # nothing saved yet: a sweep's first launch
  _check_pair(records, runs, "restore")
  restored = []
  for relative in sorted(finished(records)):
    if not os.path.exists(os.path.join(runs, relative, "summary.json")):
      _copy(records, runs, relative)
      restored.append(relative)
  return restored


def main(argv):
  if len(argv) != 4 or argv[1] not in ("save", "restore"):
    raise app.UsageError("Usage: python -m experiments.records save RUNS RECORDS | "
                         "restore RECORDS RUNS")
  command, source, target = argv[1:]
  try:
    paths = save(source, target) if command == "save" else restore(source, target)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  print(f"{command}d {len(paths)} run record(s): {source} -> {target}")


if __name__ == "__main__":
  app.run(main)
