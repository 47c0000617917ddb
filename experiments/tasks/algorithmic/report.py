"""Tables and a figure from finished algorithmic runs (experiments.report calls it for them).

  python -m experiments.report runs/algorithmic --out=results

Writes `algorithmic.csv` (one row per run and eval: problem, model, seed, step, train and valid
loss, the valid accuracies), `algorithmic.md` (per problem and model, mean over seeds: the best
valid accuracy and the test numbers of the checkpoint it selected) and `algorithmic.png` (valid
accuracy, the selection metric, against steps; one panel per problem, one line per model).
A reader: nothing in a run directory is written or deleted.
"""

from __future__ import annotations

import collections
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments import results, rundir  # noqa: E402

NAME = "algorithmic"
COLUMNS = ("problem", "model", "seed", "step", "train_loss", "valid_loss", "valid_accuracy",
           "valid_sequence_accuracy", "valid_print_accuracy")


def collect(finished: list[tuple[str, dict]], previous: str | None = None) -> list[dict]:
  """One dict per finished algorithmic run: its summary and its eval records."""
  del previous
  runs = rundir.family_runs(finished, NAME, shown=("problem", "model"))
  return sorted(runs, key=lambda r: (r["summary"]["problem"], r["summary"]["model"],
                                     r["summary"]["seed"]))


def _rows(runs):
  for run in runs:
    s = run["summary"]
    for m in run["metrics"]:
      yield dict(problem=s["problem"], model=run["label"], seed=s["seed"], step=m["step"],
                 train_loss=f"{m.get('train_loss', float('nan')):.5f}",
                 valid_loss=f"{m['eval_loss']:.5f}",
                 **{k: f"{m[k]:.2f}" for k in COLUMNS[6:] if k in m})


_cell = results.mean_cell


def markdown(runs) -> str:
  groups = collections.defaultdict(list)
  for run in runs:
    groups[(run["summary"]["problem"], run["label"])].append(run["summary"])
  lines = ["Accuracy in percent, mean over seeds (min–max when more than one). `valid` is the "
           "best valid accuracy (the selection metric: the answer for ListOps, the prints for "
           "code execution under configs/algorithmic_cpu.py); the test columns are of the "
           "checkpoint it selected (step `selected`).", ""]
  for problem in sorted({p for p, _ in groups}):
    code = problem.startswith("code")
    head = ["model", "seeds", "steps", "selected", "valid"] + (
        ["test prints", "test sequences", "test no-output"] if code else ["test"])
    lines += [f"**{problem}**", "", "| " + " | ".join(head) + " |",
              "|" + "---|" * len(head)]
    rows = [(model, groups[(problem, model)]) for p, model in groups if p == problem]
    rows.sort(key=lambda r: -np.mean([s.get("best_valid_accuracy") or 0 for s in r[1]]))
    for model, summaries in rows:
      tests = (["test_print_accuracy", "test_sequence_accuracy", "test_noop_accuracy"] if code
               else ["test_accuracy"])
      cells = [model, str(len(summaries)), str(max(s["steps"] for s in summaries)),
               ", ".join(str(s.get("final_from_step", "-")) for s in summaries),
               _cell([s.get("best_valid_accuracy") for s in summaries])]
      cells += [_cell([s.get(k) for s in summaries]) for k in tests]
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)


def plot(runs, path):
  problems = sorted({r["summary"]["problem"] for r in runs})
  fig, axes = plt.subplots(1, len(problems), figsize=(6 * len(problems), 4.2), squeeze=False)
  for ax, problem in zip(axes[0], problems):
    curves = results.seed_means([r for r in runs if r["summary"]["problem"] == problem],
                                "valid_accuracy", lambda run: run["label"])
    for model, (steps, values, _) in curves.items():
      ax.plot(steps, values, "o-", ms=3, label=model)
    ax.set_title(problem)
    ax.set_xlabel("training step")
    ax.set_ylabel("valid accuracy (%)" + (", prints" if problem.startswith("code") else ""))
  results.save_figure(fig, path, axes[0])


def write(runs: list[dict], out: str) -> list[str]:
  """algorithmic.csv, .md and .png under `out`; returns the paths."""
  rows = list(_rows(runs))
  results.write_all(out, NAME, rows, COLUMNS, markdown(runs), lambda _, path: plot(runs, path))
  return [os.path.join(out, f"{NAME}.{ext}") for ext in ("csv", "md", "png")]
