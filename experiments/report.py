"""Tables and figures from finished runs, for every experiment family found.

  python -m experiments.report runs/setting1 runs/setting2 --out=results
  python -m experiments.report runs/lm_grid --out=results
  python -m experiments.report runs/knee --previous=results/associative_recall.csv --out=results

Walks the given directories for finished runs (a summary.json beside a config.json) and hands
them to each family's report (experiments.tasks.<family>.report), which writes its CSV, Markdown
and figures under --out: associative_recall.{csv,md} and one figure per setting,
language_model.{csv,md,png}. See each family's report module for what its files hold.

`--previous` merges an earlier associative_recall.csv: its rows stay unless the given runs hold
the same (setting, model, S, seed), which then replace them (a denser rerun of a point wins).

A reader: nothing in a run directory is written or deleted (a run may still be training there).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from experiments import records, tasks

_OUT = flags.DEFINE_string("out", "results", "Directory for the CSV, Markdown and PNG files.")
_PREVIOUS = flags.DEFINE_string(
    "previous", None, "An earlier associative_recall.csv whose rows are kept where the given runs "
    "do not hold the same (setting, model, num_keys, seed).")


def finished_runs(roots: list[str]) -> list[tuple[str, dict]]:
  """(directory, summary) of every finished run (a summary.json) under `roots`."""
  runs = []
  for root in roots:
    if not os.path.isdir(root):
      raise ValueError(f"{root!r} is not a directory: give run or sweep directories (the "
                       f"--workdir of launch.py).")
    for relative in records.finished(root):
      directory = os.path.normpath(os.path.join(root, relative))
      path = os.path.join(directory, "summary.json")
      try:
        with open(path) as f:
          summary = json.load(f)
      except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): restore it from the run's "
                         f"record, or delete it to let the run finish again.") from None
      if not isinstance(summary, dict):
        raise ValueError(f"{path} holds no summary object.")
      runs.append((directory, summary))
  return runs


def report(roots: list[str], out: str, previous: str | None = None) -> list[str]:
  """Writes the tables and figures of every family with finished runs under `roots`.
  Everything is read and checked (by every family) before the first file is written, so a bad
  run leaves no partial results."""
  finished = finished_runs(roots)
  collected = []
  for name in tasks.TASKS:
    family = tasks.report(name)
    rows = family.collect(finished, previous=previous)
    if rows:
      collected.append((family, rows))
  if not collected:
    raise ValueError(f"No finished runs (summary.json) under {', '.join(roots)}.")
  written = []
  for family, rows in collected:
    os.makedirs(out, exist_ok=True)
    written += family.write(rows, out)
  return written


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("Give one or more sweep directories.")
  try:
    written = report(argv[1:], _OUT.value, _PREVIOUS.value)
  except ValueError as error:
    print(f"Error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
  for path in written:
    print(path)


if __name__ == "__main__":
  app.run(main)
