"""Tables and a figure from finished formal-language runs (experiments.report calls it for them).

  python -m experiments.report runs/formal_languages --out=results

Writes `formal_languages.csv` (one row per run: task, model, seed, steps, the selected
checkpoint's step, accuracy = Bin0's sequence accuracy, long_accuracy = Bin1's, test_long_accuracy
= the fresh Bin1 draw's, the stop reason), `formal_languages.md` (per task, one row per model:
seeds, how many reached the target, mean and min–max of each accuracy) and
`formal_languages.png` (Bin1 accuracy against steps, one panel per task, one line per model).
A reader: nothing in a run directory is written or deleted.
"""

from __future__ import annotations

import collections
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import results, rundir  # noqa: E402
from experiments.tasks.formal_languages import data  # noqa: E402

NAME = "formal_languages"
COLUMNS = ("task", "model", "seed", "steps", "selected", "accuracy", "long_accuracy",
           "test_long_accuracy", "stop_reason")


def collect(finished: list[tuple[str, dict]], previous: str | None = None) -> list[dict]:
  """One dict per finished formal-language run: its summary and its eval records."""
  del previous
  runs = rundir.family_runs(finished, NAME)
  order = {t: i for i, t in enumerate(data.TASKS)}
  return sorted(runs, key=lambda r: (order.get(r["summary"]["problem"], len(order)),
                                     r["summary"]["model"], r["summary"]["seed"]))


def _rows(runs):
  for run in runs:
    s = run["summary"]
    yield dict(task=s["problem"], model=s["model"], seed=s["seed"], steps=s["steps"],
               selected=s.get("final_from_step", ""), accuracy=f"{s['valid_accuracy']:.2f}",
               long_accuracy=f"{s['valid_long_accuracy']:.2f}",
               test_long_accuracy=f"{s['test_long_accuracy']:.2f}",
               stop_reason=s["stop_reason"])


def markdown(runs) -> str:
  groups = collections.defaultdict(list)
  for run in runs:
    groups[(run["summary"]["problem"], run["summary"]["model"])].append(run["summary"])
  lines = ["Sequence accuracy in percent (every position right) of the checkpoint selected by "
           "the mean of the two bins, mean over seeds (min–max when more than one). `Bin0` are "
           "strings of the training lengths, `Bin1` longer ones (the selection's), `test` a "
           "fresh draw of Bin1 that no selection saw; `solved` counts the seeds that reached "
           "the target on both bins (the authors' stop).", "",
           "| task | model | seeds | solved | steps | Bin0 | Bin1 | test (Bin1) |",
           "|---|---|---|---|---|---|---|---|"]
  for (task, model), summaries in groups.items():
    solved = sum(s["stop_reason"] == "target" for s in summaries)
    cells = [task, model, str(len(summaries)), str(solved),
             results.mean_cell([s["steps"] for s in summaries], 0)]
    cells += [results.mean_cell([s[k] for s in summaries]) for k in (
        "valid_accuracy", "valid_long_accuracy", "test_long_accuracy")]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(runs, path):
  tasks = list(dict.fromkeys(r["summary"]["problem"] for r in runs))
  columns = min(len(tasks), 4)
  rows = -(-len(tasks) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.4 * rows), squeeze=False)
  for ax, task in zip(axes.flat, tasks):
    curves = results.seed_means([r for r in runs if r["summary"]["problem"] == task],
                                "valid_long_accuracy", lambda run: run["summary"]["model"])
    for model, (steps, values, _) in curves.items():
      ax.plot(steps, values, "o-", ms=2, label=model)
    ax.set_title(task)
    ax.set_xlabel("training step")
    ax.set_ylabel("Bin1 accuracy (%)")
  for ax in list(axes.flat)[len(tasks):]:
    ax.axis("off")
  results.save_figure(fig, path, list(axes.flat)[:len(tasks)])


def write(runs: list[dict], out: str) -> list[str]:
  """formal_languages.csv, .md and .png under `out`; returns the paths."""
  rows = list(_rows(runs))
  results.write_all(out, NAME, rows, COLUMNS, markdown(runs), lambda _, path: plot(runs, path))
  return [os.path.join(out, f"{NAME}.{ext}") for ext in ("csv", "md", "png")]
