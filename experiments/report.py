"""Tables and figures from finished runs, for every task found.

  python -m experiments.report runs/setting1 runs/setting2 --out=results
  python -m experiments.report runs/lm_grid --out=results       # language_model.* (lm_report)

Walks the given directories for runs (a summary.json beside a config.json), writes
`associative_recall.csv` (setting,model,num_keys,seed,final_eval_loss,steps,wall_seconds), a
Markdown table of the mean final loss per model and S, and one figure per setting like the
paper's: final eval loss vs S, one line per model, mean ± spread (min–max) over seeds.
"""

from __future__ import annotations

import collections
import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import lm_report, results  # noqa: E402

COLUMNS = ("setting", "model", "num_keys", "seed", "final_eval_loss", "steps", "wall_seconds")

_OUT = flags.DEFINE_string("out", "results", "Directory for the CSV, Markdown and PNG files.")


def finished_runs(roots: list[str]) -> list[tuple[str, dict]]:
  """(directory, summary) of every finished run (a summary.json) under `roots`."""
  runs = []
  for root in roots:
    for directory, _, files in os.walk(root):
      if "summary.json" in files:
        with open(os.path.join(directory, "summary.json")) as f:
          runs.append((directory, json.load(f)))
  return runs


def collect(finished: list[tuple[str, dict]]) -> list[dict]:
  """One row per associative-recall run among (directory, summary) pairs."""
  rows = []
  for _, s in finished:
    if s.get("task", "associative_recall") == "associative_recall":
      rows.append(dict(setting=s["setting"], model=s["curve"], num_keys=s["num_keys"],
                       seed=s["seed"], final_eval_loss=s["final_eval_loss"], steps=s["steps"],
                       wall_seconds=round(s["wall_seconds"], 1), stop_reason=s.get("stop_reason")))
  return sorted(rows, key=lambda r: (r["setting"], r["model"], r["num_keys"], r["seed"]))


def _grouped(rows, setting, field="final_eval_loss"):
  """{model: {num_keys: [field over seeds]}} for one setting. A run that never evaluated a
  finite loss (stopped on NaN before or at its first eval) counts as NaN: it stays in the table,
  marked ‡, instead of vanishing."""
  out = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in rows:
    if r["setting"] == setting:
      value = r[field]
      out[r["model"]][r["num_keys"]].append(float("nan") if value is None else value)
  return out


# Markers for how a point's runs ended, when not by reaching the stopping loss or by patience.
_MARKS = {"max_steps": "†", "non_finite": "‡"}


def write_markdown(rows, path):
  lines = []
  for setting in sorted({r["setting"] for r in rows}):
    groups = _grouped(rows, setting)
    reasons, steps = _grouped(rows, setting, "stop_reason"), _grouped(rows, setting, "steps")
    sizes = sorted({s for g in groups.values() for s in g})
    lines += [f"### Setting {setting}: final eval loss, mean over seeds", "",
              "In brackets: the number of seeds and the most steps a seed ran. † a run ended at "
              "`max_steps` (its budget; it may still improve); ‡ a run stopped on a non-finite "
              "loss.", "",
              "| model | " + " | ".join(f"S={s}" for s in sizes) + " |",
              "|---" * (len(sizes) + 1) + "|"]
    for model in sorted(groups):
      cells = [f"{np.mean(groups[model][s]):.3g} ({len(groups[model][s])}, "
               f"{max(steps[model][s])})"
               + "".join(sorted({_MARKS.get(r, "") for r in reasons[model][s]}))
               if s in groups[model] else "" for s in sizes]
      lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines.append("")
  with open(path, "w") as f:
    f.write("\n".join(lines))


def plot(rows, setting, path):
  groups, reasons = _grouped(rows, setting), _grouped(rows, setting, "stop_reason")
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for model in sorted(groups):
    sizes = sorted(groups[model])
    losses = [np.asarray(groups[model][s]) for s in sizes]
    mean = np.array([l.mean() for l in losses])
    line, = ax.plot(sizes, mean, marker="o", markersize=3, label=model)
    ax.fill_between(sizes, [l.min() for l in losses], [l.max() for l in losses],
                    color=line.get_color(), alpha=0.2)
    budget = [i for i, s in enumerate(sizes) if "max_steps" in reasons[model][s]]
    ax.plot([sizes[i] for i in budget], mean[budget], linestyle="none", marker="o",
            markersize=7, markerfacecolor="none", color=line.get_color())
  ax.set_xlabel("number of unique keys S")
  ax.set_ylabel("final eval loss (log scale)")
  ax.set_yscale("log")   # losses span 1e-4 (solved) to ~1 (failed)
  ax.axhline(1e-3, color="grey", linestyle=":", linewidth=1)   # the stopping loss
  ax.set_title(f"Associative retrieval, setting {setting} (open circles: a run ended at "
               "max_steps)", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report(roots: list[str], out: str) -> list[str]:
  """Writes the tables and figures of every task with finished runs under `roots`."""
  written = []
  finished = finished_runs(roots)
  rows = collect(finished)
  if rows:
    os.makedirs(out, exist_ok=True)
    written += [os.path.join(out, "associative_recall.csv"),
                os.path.join(out, "associative_recall.md")]
    results.write_csv(rows, written[0], COLUMNS)
    write_markdown(rows, written[1])
    for setting in sorted({r["setting"] for r in rows}):
      path = os.path.join(out, f"associative_recall_setting{setting}.png")
      plot(rows, setting, path)
      written.append(path)
  lm_runs = lm_report.collect(finished)
  if lm_runs:
    written += lm_report.report(lm_runs, out)
  if not written:
    raise ValueError(f"No finished runs (summary.json) under {roots}.")
  return written


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("Give one or more sweep directories.")
  for path in report(argv[1:], _OUT.value):
    print(path)


if __name__ == "__main__":
  app.run(main)
