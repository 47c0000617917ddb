"""Tables and a figure from finished translation runs (experiments.report calls it for them).

  python -m experiments.report runs/translation --out=results

Writes `translation.csv` (one row per run and eval: model, seed, step, train and valid loss,
valid BLEU and chrF of the eval's valid subset), `translation.md` (per model, mean over seeds:
the best valid BLEU during training, then the selected checkpoint's valid and test BLEU and chrF
over whole splits, valid perplexity and training time) and `translation.png` (valid BLEU, the
selection metric, against steps; one line per model). A reader: nothing in a run directory is
written or deleted.
"""

from __future__ import annotations

import collections
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments import results, rundir  # noqa: E402

NAME = "translation"
COLUMNS = ("model", "seed", "step", "train_loss", "valid_loss", "valid_bleu", "valid_chrf")


def collect(finished: list[tuple[str, dict]], previous: str | None = None) -> list[dict]:
  """One dict per finished translation run: its summary and its eval records."""
  del previous
  runs = rundir.family_runs(finished, NAME)
  return sorted(runs, key=lambda r: (r["summary"]["model"], r["summary"]["seed"]))


def _rows(runs):
  for run in runs:
    s = run["summary"]
    for m in run["metrics"]:
      yield dict(model=run["label"], seed=s["seed"], step=m["step"],
                 train_loss=f"{m.get('train_loss', float('nan')):.4f}",
                 valid_loss=f"{m['eval_loss']:.4f}", valid_bleu=f"{m['valid_bleu']:.2f}",
                 valid_chrf=f"{m['valid_chrf']:.2f}")


_cell = results.mean_cell


def markdown(runs) -> str:
  groups = collections.defaultdict(list)
  for run in runs:
    groups[run["label"]].append(run["summary"])
  first = runs[0]["summary"]
  lines = [f"Corpus {first.get('corpus')} ({first.get('train_pairs', '?'):,} training pairs, "
           f"{first.get('vocab_size', '?'):,}-piece joint BPE), beam {first.get('beam')}, length "
           f"penalty {first.get('length_penalty')}. BLEU and chrF: sacrebleu "
           f"(`{first.get('bleu_signature')}`), detokenised. Mean over seeds (min–max when more "
           f"than one). `valid BLEU, best eval`: the selection metric during training (on the "
           f"eval's valid subset); the other columns are of the checkpoint it selected (step "
           f"`selected`), over whole splits.", "",
           "| model | seeds | steps | selected | valid BLEU, best eval | valid BLEU | test BLEU "
           "| test chrF | valid ppl | minutes |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  order = sorted(groups, key=lambda m: -np.mean([s.get("test_bleu") or 0 for s in groups[m]]))
  for model in order:
    summaries = groups[model]
    lines.append("| " + " | ".join([
        model, str(len(summaries)), str(max(s["steps"] for s in summaries)),
        ", ".join(str(s.get("final_from_step", "-")) for s in summaries),
        _cell([s.get("best_valid_bleu") for s in summaries]),
        _cell([s.get("valid_bleu") for s in summaries]),
        _cell([s.get("test_bleu") for s in summaries]),
        _cell([s.get("test_chrf") for s in summaries]),
        _cell([s.get("valid_ppl") for s in summaries], 2),
        _cell([s.get("wall_seconds", 0) / 60 for s in summaries], 0)]) + " |")
  return "\n".join(lines) + "\n"


def plot(runs, path):
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  curves = results.seed_means(runs, "valid_bleu", lambda run: run["label"])
  for model, (steps, values, _) in curves.items():
    ax.plot(steps, values, "o-", ms=3, label=model)
  ax.set_xlabel("training step")
  ax.set_ylabel("valid BLEU (eval subset)")
  results.save_figure(fig, path, [ax])


def write(runs: list[dict], out: str) -> list[str]:
  """translation.csv, .md and .png under `out`; returns the paths."""
  results.write_all(out, NAME, list(_rows(runs)), COLUMNS, markdown(runs),
                    lambda _, path: plot(runs, path))
  return [os.path.join(out, f"{NAME}.{ext}") for ext in ("csv", "md", "png")]
