"""The associative-retrieval report (experiments.report calls it for these runs).

`associative_recall.csv` (setting,model,num_keys,seed,final_eval_loss,steps,wall_seconds,
stop_reason), a Markdown table of the mean final loss per model and S, the capacity knee of each
curve (setting 1: beside the paper's reading of its figure), and one figure per setting like
the paper's: final eval loss vs S, one line per model, mean ± spread (min–max) over seeds.

An earlier CSV (`--previous`) is merged: its rows stay unless the given runs hold the same
(setting, model, S, seed), which then replace them (a denser or longer rerun of a point wins).
This is how the dense knee grid (runs/knee) joins the committed budget grid.
"""

from __future__ import annotations

import collections
import csv
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments import results  # noqa: E402

COLUMNS = ("setting", "model", "num_keys", "seed", "final_eval_loss", "steps", "wall_seconds",
           "stop_reason")
# A setting-1 curve's capacity knee: the largest S whose mean final loss is at most this...
KNEE_LOSS = 0.01
# ... and, stricter, at most the authors' stopping loss. We read the paper's "~0" off a log plot;
# the two thresholds bracket that reading.
STOP_LOSS = 0.001
# ... beside the paper's reading of its Figure 2 (Schlag et al. 2021; the S where each curve
# leaves ~0 loss, on its 20-key grid).
PAPER_KNEES = {"linear-sum": 60, "dpfp1-sum": 100, "dpfp2-sum": 240, "dpfp3-sum": 340}


def collect(finished: list[tuple[str, dict]], previous: str | None = None) -> list[dict]:
  """One row per associative-recall run among (directory, summary) pairs, merged over the rows
  of the earlier CSV `previous` when given."""
  rows = []
  for _, s in finished:
    if s.get("task", "associative_recall") == "associative_recall":
      rows.append(dict(setting=s["setting"], model=s["curve"], num_keys=s["num_keys"],
                       seed=s["seed"], final_eval_loss=s["final_eval_loss"], steps=s["steps"],
                       wall_seconds=round(s["wall_seconds"], 1), stop_reason=s.get("stop_reason")))
  rows = sorted(rows, key=lambda r: (r["setting"], r["model"], r["num_keys"], r["seed"]))
  return merge(read_previous(previous), rows) if previous else rows


def read_previous(path: str) -> list[dict]:
  """The rows of an earlier report's CSV, typed as `collect` makes them."""
  with open(path, newline="") as f:
    reader = csv.DictReader(results.csv_lines(f))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f"{path} is not an associative_recall.csv of this report: it lacks the "
                       f"column(s) {', '.join(missing)}; its columns: {reader.fieldnames}.")
    rows = []
    for line, r in enumerate(reader, start=2):
      try:
        rows.append(dict(setting=int(r["setting"]), model=r["model"],
                         num_keys=int(r["num_keys"]), seed=int(r["seed"]),
                         final_eval_loss=float(r["final_eval_loss"]) if r["final_eval_loss"]
                         else None, steps=int(r["steps"]),
                         wall_seconds=float(r["wall_seconds"]),
                         stop_reason=r["stop_reason"] or None))
      except ValueError as e:
        raise ValueError(f"{path}, line {line}: {e}") from None
  return rows


def merge(previous: list[dict], rows: list[dict]) -> list[dict]:
  """`previous` rows whose (setting, model, num_keys, seed) `rows` lacks, plus all of `rows`."""
  key = lambda r: (r["setting"], r["model"], r["num_keys"], r["seed"])
  new = {key(r) for r in rows}
  return sorted([r for r in previous if key(r) not in new] + rows, key=key)


def knees(rows: list[dict], setting: int = 1, threshold: float = KNEE_LOSS) -> list[dict]:
  """Per model of `setting`: the largest S whose mean final loss is ≤ `threshold` with every
  smaller S of the grid also ≤ it (`solved`), the next S of the grid (`failed`, mean >
  `threshold`), and the seeds' min–max at both. None where the grid does not bracket the knee."""
  out = []
  for model, by_size in sorted(_grouped(rows, setting).items()):
    sizes = sorted(by_size)
    means = [float(np.mean(by_size[s])) for s in sizes]   # nan (a non-finite run) counts failed
    solved = None
    for i, m in enumerate(means):
      if not m <= threshold:
        break
      solved = i
    failed = None if solved is None else solved + 1
    if solved is None and sizes:
      failed = 0
    row = dict(model=model, paper=PAPER_KNEES.get(model))
    for name, i in (("solved", solved), ("failed", failed)):
      if i is None or i >= len(sizes):
        row[name] = None
      else:
        losses = by_size[sizes[i]]
        row[name] = dict(num_keys=sizes[i], mean=means[i], min=float(np.min(losses)),
                         max=float(np.max(losses)), seeds=len(losses))
    out.append(row)
  return out


def _knee_cell(point):
  if point is None:
    return "—"
  return (f"S={point['num_keys']}: {point['mean']:.2g} ({point['min']:.2g}–{point['max']:.2g}, "
          f"{point['seeds']} seeds)")


def knee_table(rows: list[dict], setting: int = 1) -> list[str]:
  """Markdown lines: the knees of one setting (see `knees`), beside the paper's reading in
  setting 1 (the paper reads no knees off its setting-2 figure)."""
  lines = [f"### Setting {setting}: capacity knees", "",
           f"For each curve, the largest S up to which every grid point's mean final loss is ≤ "
           f"{KNEE_LOSS} and the next S of the grid (mean > {KNEE_LOSS}); in brackets the "
           f"seeds' min–max. The same knee at the stopping loss {STOP_LOSS}: last S | next S."
           + (" Paper: the S where its Figure 2 leaves ~0 loss (our reading)." if setting == 1
              else ""), "",
           f"| model | last S ≤ {KNEE_LOSS} | next S (> {KNEE_LOSS}) | at ≤ {STOP_LOSS} |"
           + (" paper |" if setting == 1 else ""),
           "|---|---|---|---|" + ("---|" if setting == 1 else "")]
  strict = {k["model"]: k for k in knees(rows, setting, STOP_LOSS)}
  for k in knees(rows, setting):
    bounds = [strict[k["model"]][side] for side in ("solved", "failed")]
    lines.append(f"| {k['model']} | {_knee_cell(k['solved'])} | {_knee_cell(k['failed'])} | "
                 + " \\| ".join("—" if b is None else str(b["num_keys"]) for b in bounds) + " |"
                 + ((f" ≈ {k['paper']} |" if k["paper"] else "  |") if setting == 1 else ""))
  return lines + [""]


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
  for setting in sorted({r["setting"] for r in rows}):
    lines += knee_table(rows, setting)
  with open(path, "w") as f:
    f.write("\n".join([results.made_by(), ""] + lines))


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
    if setting == 1 and model in PAPER_KNEES:   # the paper's knee, on the axis, in its colour
      ax.plot([PAPER_KNEES[model]], [0], marker="^", markersize=9, color=line.get_color(),
              transform=ax.get_xaxis_transform(), clip_on=False)
  ax.set_xlabel("number of unique keys S")
  ax.set_ylabel("final eval loss (log scale)")
  ax.set_yscale("log")   # losses span 1e-4 (solved) to ~1 (failed)
  ax.axhline(STOP_LOSS, color="grey", linestyle=":", linewidth=1)   # the stopping loss
  ax.axhline(KNEE_LOSS, color="grey", linestyle="-.", linewidth=0.8)   # the knee's threshold
  ax.set_title(f"Associative retrieval, setting {setting}\n○ a run ended at max_steps"
               + ("; ▲ the paper's knee" if setting == 1 else "") + "; dotted: stop loss "
               f"{STOP_LOSS}; dash-dot: knee {KNEE_LOSS}", fontsize=9)
  results.save_figure(fig, path, [ax])


def write(rows: list[dict], out: str) -> list[str]:
  """associative_recall.csv, .md and one figure per setting under `out`; returns the paths."""
  written = [os.path.join(out, f"associative_recall.{ext}") for ext in ("csv", "md")]
  results.write_csv(rows, written[0], COLUMNS)
  write_markdown(rows, written[1])
  for setting in sorted({r["setting"] for r in rows}):
    path = os.path.join(out, f"associative_recall_setting{setting}.png")
    plot(rows, setting, path)
    written.append(path)
  return written
