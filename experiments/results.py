"""Writing results: a CSV of row dicts, and the CSV + Markdown + PNG triple the experiment commands
leave under results/. No flags, so any command module can import it."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from typing import Callable


def commit(directory: str | None = None) -> str:
  """The short commit of the git checkout holding `directory` (default: fwp's), or "unknown"."""
  here = directory or os.path.dirname(os.path.abspath(__file__))
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True, cwd=here).stdout.strip() or "unknown"
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def made_by(module: str | None = None) -> str:
  """"Made by `python -m module <this process's flags>` at fwp commit c." for a results file
  (`module`: default, the one this process runs, from sys.argv[0])."""
  if module is None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.relpath(os.path.abspath(sys.argv[0]), root)
    module = path[:-3].replace(os.sep, ".") if path.endswith(".py") else path
  command = " ".join(["python -m", module] + sys.argv[1:])
  return f"Made by `{command}` at fwp commit {commit()}."


def flatten(tree: dict, prefix: str = "") -> dict:
  """A config (or config.json) as {dotted.path: value}; tuples as lists, as JSON holds them."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


# --- Which runs are one setting -----------------------------------------------------------------

# Fields that never make two runs different settings: the seed, and what only changes where or
# how a run computes (checkpointing, devices, the form, caches, the data's record).
NOT_A_SETTING = ("seed", "checkpoint_every", "keep_checkpoints", "mesh_shape", "model.form",
                 "model.chunk_size", "data_dir", "cache_dir", "data_identity", "tensorboard",
                 "profile_steps")


def read_config(directory: str, summary: dict) -> dict:
  """The run's config.json, flattened (a.b = v, lists as tuples); the summary's model alone
  when the file is missing (an old run record)."""
  import json
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    return dict(model_name=summary.get("model"))
  with open(path) as f:
    try:
      config = json.load(f)
    except ValueError as error:
      raise ValueError(f"{path} is not valid JSON ({error}).") from None
  return {k: tuple(v) if isinstance(v, list) else v for k, v in flatten(config).items()}


def label_settings(runs: list[dict], shown=("model",), ignored=NOT_A_SETTING) -> list[str]:
  """Groups runs into settings, one implementation for every family's report: runs that share
  the `shown` summary fields (the table's own rows: the model, a problem) are one setting unless
  some other config field differs between them (a --sweep=model.d_ff=32,128, a max_steps of 10
  against 300, another corpus): each such field becomes a column. Sets run["group"] (the shown
  values, then those fields' values), run["label"] ("model, field=value, ...") and
  run["columns"]; returns the fields. `ignored` (prefixes) never split a setting."""
  def skip(key):
    return any(key == i or key.startswith(i + ".") for i in ignored)
  base = lambda r: tuple(r["summary"].get(k) for k in shown)
  keys = sorted({k for r in runs for k in r["config"]} - {"model_name"})
  columns = []
  for key in keys:
    if skip(key):
      continue
    values: dict = {}
    for r in runs:
      values.setdefault(base(r), set()).add(repr(r["config"].get(key)))
    if any(len(v) > 1 for v in values.values()):
      columns.append(key)
  for r in runs:
    r["group"] = base(r) + tuple(r["config"].get(k) for k in columns)
    r["label"] = ", ".join([str(r["summary"].get("model"))] +
                           [f"{k}={r['config'].get(k)}" for k in columns])
    r["columns"] = columns
  return columns


def mean_cell(values, digits: int = 1) -> str:
  """A table cell: the mean over seeds, with (min–max) when more than one; "-" for none."""
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  import numpy as np
  return f"{np.mean(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def seed_means(runs: list[dict], key: str, group: Callable[[dict], str]) -> dict:
  """{group: (steps, mean of `key` over the group's seeds, seeds)} from runs' metrics lines, each
  group's curve cut to its shortest run; a group whose lines lack `key` is left out."""
  import numpy as np
  curves: dict[str, list] = {}
  for run in runs:
    curves.setdefault(group(run), []).append(run["metrics"])
  out = {}
  for name, seeds in sorted(curves.items()):
    n = min(len(m) for m in seeds)
    if n and all(key in m for metrics in seeds for m in metrics[:n]):
      out[name] = ([m["step"] for m in seeds[0][:n]],
                   np.mean([[m[key] for m in metrics[:n]] for metrics in seeds], 0), len(seeds))
  return out


def save_figure(fig, path: str, axes=()) -> None:
  """A grid and a legend on each of `axes`, then the figure to `path` (120 dpi), closed."""
  import matplotlib.pyplot as plt
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# A results CSV's first line: "# Made by `python -m ...` at fwp commit c." (read_csv skips it;
# elsewhere, e.g. pandas.read_csv(path, comment="#")).
STAMP = "# "


def stamp_line() -> str:
  return f"{STAMP}{made_by()}\n"


def write_csv(rows: list[dict], path: str, columns) -> None:
  """The stamp line, then one line per row, `columns` in order (other keys of a row are left
  out)."""
  with open(path, "w", newline="") as f:
    f.write(stamp_line())
    writer = csv.DictWriter(f, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def csv_lines(f):
  """A results CSV's lines without its stamp (and without any other '#' line before the
  header), for csv.DictReader; an unstamped CSV reads the same."""
  lines = iter(f)
  for line in lines:
    if not line.startswith(STAMP.strip()):
      yield line
      break
  yield from lines


def read_csv(path: str) -> list[dict]:
  """The rows of a results CSV (stamped or not) as dicts of strings."""
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(csv_lines(f)))


def write_text(path: str, text: str) -> None:
  """A results file (Markdown) that names its command and commit: made_by()'s paragraph first
  (after a leading '# title'), unless one of `text`'s first lines already starts "Made by `"."""
  if not any(line.startswith("Made by `") for line in text.split("\n")[:6]):
    title, body = "", text
    if text.startswith("# "):
      title, _, body = text.partition("\n")
      title, body = title + "\n\n", body.lstrip("\n")
    text = f"{title}{made_by()}\n\n{body}"
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def write_markdown(out: str, name: str, lines: list[str]) -> str:
  """out/name.md from `lines` (one trailing newline; stamped by write_text), also printed;
  returns the path."""
  path = os.path.join(out, f"{name}.md")
  write_text(path, "\n".join(lines).rstrip("\n") + "\n")
  print("\n".join(lines))
  print(f"Wrote {path}")
  return path


def write_all(out: str, name: str, rows: list[dict], columns, markdown: str,
              plot: Callable[[list[dict], str], None]) -> None:
  """out/name.csv, out/name.md (the given text) and out/name.png (drawn by `plot`)."""
  os.makedirs(out, exist_ok=True)
  write_csv(rows, os.path.join(out, f"{name}.csv"), columns)
  write_text(os.path.join(out, f"{name}.md"), markdown)
  plot(rows, os.path.join(out, f"{name}.png"))
  print(f"Wrote {out}/{name}.{{csv,md,png}}")
