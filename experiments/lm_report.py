"""Tables and a figure from finished language-model runs (experiments.report calls it).

  python -m experiments.report runs/lm_grid --out=results

Finds the language-model runs (summary.json + metrics.jsonl) under the given directories and writes
`language_model.csv` (one row per run and eval: model, seed, step, valid loss and bits), a Markdown
table of the final numbers per model (mean over seeds, with the spread), and
`language_model.png`: valid bits per unit against steps, one line per model (mean over seeds).
"""

from __future__ import annotations

import collections
import csv
import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def collect(finished: list[tuple[str, dict]]) -> list[dict]:
  """The language-model runs among (directory, summary) pairs, with their metrics."""
  runs = []
  for directory, summary in finished:
    if summary.get("task") == "language_model":
      with open(os.path.join(directory, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f if line.strip()]
      runs.append(dict(summary=summary, metrics=metrics))
  return sorted(runs, key=lambda r: (r["summary"]["model"], r["summary"]["seed"]))


def _bits_key(record: dict, prefix: str) -> str:
  return next(k for k in record if k.startswith(f"{prefix}_bits_per_"))


def write_csv(runs, path):
  unit = _bits_key(runs[0]["metrics"][0], "valid")
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["model", "seed", "step", "train_loss", "valid_loss", unit])
    for run in runs:
      s = run["summary"]
      for m in run["metrics"]:
        writer.writerow([s["model"], s["seed"], m["step"], f"{m['train_loss']:.5f}",
                         f"{m['eval_loss']:.5f}", f"{m[unit]:.4f}"])


def markdown(runs) -> str:
  s0 = runs[0]["summary"]
  unit = _bits_key(s0, "valid").split("_bits_per_")[1]
  columns = [("valid", f"valid_bits_per_{unit}"), ("valid, sliding",
                                                   f"valid_sliding_bits_per_{unit}"),
             ("test", f"test_bits_per_{unit}"), ("test, sliding", f"test_sliding_bits_per_{unit}"),
             ("test ppl, sliding", "test_sliding_ppl")]
  by_model = collections.defaultdict(list)
  for run in runs:
    by_model[run["summary"]["model"]].append(run["summary"])
  lines = [f"Corpus {s0['corpus']} ({s0['level']}), context {s0['context']}. Bits per {unit} "
           f"(lower is better), mean over seeds (min–max when more than one); 'sliding' = every "
           f"{unit} predicted with at least context − stride of context.", "",
           "| model | seeds | steps | " + " | ".join(c for c, _ in columns) + " |",
           "|---|---|---|" + "---|" * len(columns)]
  order = sorted(by_model, key=lambda m: np.mean([s[columns[0][1]] for s in by_model[m]]))
  for model in order:
    summaries = by_model[model]
    cells = []
    for _, key in columns:
      values = [s[key] for s in summaries if key in s]
      if not values:
        cells.append("-")
      elif len(values) == 1:
        cells.append(f"{values[0]:.3f}")
      else:
        cells.append(f"{np.mean(values):.3f} ({min(values):.3f}–{max(values):.3f})")
    steps = max(s["steps"] for s in summaries)
    lines.append(f"| {model} | {len(summaries)} | {steps} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(runs, path):
  unit_key = _bits_key(runs[0]["metrics"][0], "valid")
  curves = collections.defaultdict(list)
  for run in runs:
    curves[run["summary"]["model"]].append(run["metrics"])
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for model, seeds in sorted(curves.items()):
    steps = [m["step"] for m in seeds[0]]
    values = np.mean([[m[unit_key] for m in metrics[:len(steps)]] for metrics in seeds], axis=0)
    ax.plot(steps, values, "o-", ms=3, label=f"{model} ({len(seeds)} seed{'s' * (len(seeds) > 1)})")
  s0 = runs[0]["summary"]
  ax.set_xlabel("training step")
  ax.set_ylabel(unit_key.replace("_", " "))
  ax.set_title(f"Language modelling on {s0['corpus']} ({s0['level']}s), context {s0['context']}")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report(runs: list[dict], out: str) -> list[str]:
  os.makedirs(out, exist_ok=True)
  paths = [os.path.join(out, f"language_model.{ext}") for ext in ("csv", "md", "png")]
  write_csv(runs, paths[0])
  with open(paths[1], "w") as f:
    f.write(markdown(runs))
  plot(runs, paths[2])
  return paths
