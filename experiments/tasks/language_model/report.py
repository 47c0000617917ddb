"""Tables and a figure from finished language-model runs (experiments.report calls it for
them).

  python -m experiments.report runs/lm_grid --out=results

Finds the language-model runs (summary.json + metrics.jsonl) under the given directories and writes
`language_model.csv` (one row per run and eval: model, seed, step, valid loss and bits), a Markdown
table of the final numbers per model (mean over seeds, with the spread), and
`language_model.png`: valid bits per unit against steps, one line per model (mean over seeds).

Runs are averaged as seeds only when nothing but the seed differs (fields that do not change the
result, IGNORED, aside): every other field whose value differs between the runs and is not fixed
by the model's name (a --sweep=context=64,128, a learning rate) becomes a column of the CSV and
the table, and a setting of its own. Runs of different corpora or units are refused together.
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

from experiments import results  # noqa: E402


# Fields that do not change what a run computes (or are its seed): never a reason to report two
# runs apart. Prefixes: data_identity.* are the corpus's hashes, equal when corpus and level are.
# eval_batch_size too, except under carry_state (collect).
IGNORED = results.NOT_A_SETTING + ("eval_batch_size",)


def collect(finished: list[tuple[str, dict]], previous: str | None = None) -> list[dict]:
  """The language-model runs among (directory, summary) pairs, with their metrics and config,
  grouped: runs that differ only in seed are one group; every other config field that differs
  between the runs (and is not implied by the model's name) becomes a column (see `columns`).
  Raises ValueError, before anything is written, for runs that cannot share one table.
  (`previous`, an earlier retrieval CSV, is not this family's.)"""
  del previous
  runs = []
  for directory, summary in finished:
    if summary.get("task") != "language_model":
      continue
    metrics = _read_metrics(directory)
    if not metrics:
      print(f"Skipping {directory}: it never evaluated ({summary.get('stop_reason')} at step "
            f"{summary.get('steps')}).", flush=True)
      continue
    if "state_floats" not in summary and any(k.startswith("valid_carried_") for k in summary):
      # a run with a carried evaluation from before summaries named its state's size
      summary = dict(summary, state_floats=_state_floats(directory))
    runs.append(dict(directory=directory, summary=summary, metrics=metrics,
                     config=_read_config(directory, summary)))
  if not runs:
    return []
  _check_one_unit(runs)
  # Under carry_state, eval_batch_size is the number of carried streams, which defines the
  # selection metric: then a protocol field, not an inert one.
  carried = any(r["config"].get("carry_state") for r in runs)
  results.label_settings(runs, ignored=tuple(k for k in IGNORED
                                             if not (carried and k == "eval_batch_size")))
  return sorted(runs, key=lambda r: (tuple(map(str, r["group"])), r["summary"]["seed"]))


def _read_metrics(directory: str) -> list[dict]:
  path = os.path.join(directory, "metrics.jsonl")
  if not os.path.exists(path):
    raise ValueError(f"{directory} has a summary.json but no metrics.jsonl: an incomplete run "
                     f"record. Restore the file or leave that directory out.")
  with open(path) as f:
    try:
      return [json.loads(line) for line in f if line.strip()]
    except ValueError as error:
      raise ValueError(f"{path} is not valid JSON lines ({error}).") from None


def _state_floats(directory: str) -> int | str | None:
  """The state size of a run from its config.json ("-" without one): read, not written back."""
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    return "-"
  import ml_collections
  from experiments.tasks.language_model import task
  with open(path) as f:
    try:
      config = ml_collections.ConfigDict(json.load(f))
    except ValueError:
      return "-"
  try:
    return task.state_floats(config, vocab_size=256)
  except (ValueError, KeyError, AttributeError):
    return "-"


def _read_config(directory: str, summary: dict) -> dict:
  """results.read_config, with the summary's corpus, level and context when config.json is
  missing (an old run record)."""
  if os.path.exists(os.path.join(directory, "config.json")):
    return results.read_config(directory, summary)
  return dict(model_name=summary["model"], corpus=summary.get("corpus"),
              level=summary.get("level"), context=summary.get("context"))


def _check_one_unit(runs: list[dict]) -> None:
  kinds = {}
  for run in runs:
    s = run["summary"]
    kinds.setdefault((s.get("corpus"), s.get("level")), []).append(run["directory"])
  if len(kinds) > 1:
    listed = "; ".join(f"{corpus} ({level}s): {', '.join(dirs[:3])}"
                       + (f" and {len(dirs) - 3} more" if len(dirs) > 3 else "")
                       for (corpus, level), dirs in kinds.items())
    raise ValueError(f"These language-model runs are on different corpora or units, whose "
                     f"numbers cannot share a table: {listed}. Report them separately.")


def _bits_key(record: dict, prefix: str) -> str:
  return next(k for k in record if k.startswith(f"{prefix}_bits_per_"))


def write_csv(runs, path):
  """One row per eval. valid_loss is the run's selection loss (the carried one for a
  carry_state run); the bits are the plain (windowed) valid evaluation's, and the carried
  evaluation's in a column of their own when a run has one."""
  unit = _bits_key(runs[0]["metrics"][0], "valid")
  carried = unit.replace("valid_", "valid_carried_", 1)
  has_carried = any(carried in m for r in runs for m in r["metrics"])
  extra = runs[0]["columns"]
  with open(path, "w", newline="") as f:
    f.write(results.stamp_line())
    writer = csv.writer(f)
    writer.writerow(["model", *extra, "seed", "step", "train_loss", "valid_loss", unit]
                    + [carried] * has_carried)
    for run in runs:
      s = run["summary"]
      for m in run["metrics"]:
        writer.writerow([s["model"], *run["group"][1:], s["seed"], m["step"],
                         f"{m['train_loss']:.5f}", f"{m['eval_loss']:.5f}", f"{m[unit]:.4f}"]
                        + ([f"{m[carried]:.4f}" if carried in m else ""] * has_carried))


def markdown(runs) -> str:
  s0 = runs[0]["summary"]
  extra = runs[0]["columns"]
  unit = _bits_key(runs[0]["metrics"][0], "valid").split("_bits_per_")[1]
  columns = [("valid", f"valid_bits_per_{unit}"), ("valid, sliding",
                                                   f"valid_sliding_bits_per_{unit}"),
             ("test", f"test_bits_per_{unit}"), ("test, sliding", f"test_sliding_bits_per_{unit}"),
             ("test ppl, sliding", "test_sliding_ppl")]
  # The carried evaluation (no window: each split read as contiguous streams, the state carried),
  # where a run has one (every fast weight run since carry_state existed).
  carried = [("valid, carried", f"valid_carried_bits_per_{unit}"),
             ("test, carried", f"test_carried_bits_per_{unit}")]
  if any(key in run["summary"] for run in runs for _, key in carried):
    columns += carried
  # The size of the state a stream carries (floats), where runs name it: fast weights against
  # Transformer-XL's memory (the paper's Table 4 compares them at equal size).
  sizes = any(isinstance(run["summary"].get("state_floats"), int) for run in runs)
  groups = collections.defaultdict(list)
  for run in runs:
    groups[run["group"]].append(run["summary"])
  context = "" if "context" in extra else f", context {s0['context']}"
  lines = [f"Corpus {s0['corpus']} ({s0['level']}){context}. Bits per {unit} "
           f"(lower is better), mean over seeds (min–max when more than one); 'sliding' = every "
           f"{unit} predicted with at least context − stride of context."
           + (f" Runs differ in {', '.join(extra)} besides the model: one row per setting."
              if extra else ""), "",
           "| model | " + "".join(f"{k} | " for k in extra) + "seeds | steps | "
           + "state (floats) | " * sizes + " | ".join(c for c, _ in columns) + " |",
           "|---|" + "---|" * len(extra) + "---|---|" + "---|" * sizes
           + "---|" * len(columns)]

  def mean_first(group):
    values = [s[columns[0][1]] for s in groups[group] if columns[0][1] in s]
    return np.mean(values) if values else np.inf
  for group in sorted(groups, key=mean_first):
    summaries = groups[group]
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
    # None: softmax attention's cache, which grows with the text; absent: a run from before.
    size = summaries[0].get("state_floats", "-")
    size = "grows" if size is None else size if size == "-" else f"{size:,}"
    lines.append(f"| {group[0]} | " + "".join(f"{v} | " for v in group[1:])
                 + f"{len(summaries)} | {steps} | " + f"{size} | " * sizes
                 + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(runs, path):
  unit_key = _bits_key(runs[0]["metrics"][0], "valid")
  label = lambda run: run["label"]   # noqa: E731
  carried = results.seed_means(runs, unit_key.replace("valid_", "valid_carried_", 1), label)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for model, (steps, values, seeds) in results.seed_means(runs, unit_key, label).items():
    line, = ax.plot(steps, values, "o-", ms=3,
                    label=f"{model} ({seeds} seed{'s' * (seeds > 1)})")
    if model in carried:
      ax.plot(*carried[model][:2], "--", color=line.get_color(), label=f"{model}, carried eval")
  s0 = runs[0]["summary"]
  ax.set_xlabel("training step")
  ax.set_ylabel(unit_key.replace("_", " "))
  context = "" if "context" in runs[0]["columns"] else f", context {s0['context']}"
  ax.set_title(f"Language modelling on {s0['corpus']} ({s0['level']}s){context}")
  results.save_figure(fig, path, [ax])


def write(runs: list[dict], out: str) -> list[str]:
  """language_model.csv, .md and .png under `out`; returns the paths."""
  paths = [os.path.join(out, f"language_model.{ext}") for ext in ("csv", "md", "png")]
  write_csv(runs, paths[0])
  results.write_text(paths[1], markdown(runs))
  plot(runs, paths[2])
  return paths
