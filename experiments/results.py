"""Writing results: a CSV of row dicts, and the CSV + Markdown + PNG triple the experiment commands
leave under results/. No flags, so any command module can import it."""

from __future__ import annotations

import csv
import os
from typing import Callable


def flatten(tree: dict, prefix: str = "") -> dict:
  """A config (or config.json) as {dotted.path: value}; tuples as lists, as JSON holds them."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def mean_cell(values, digits: int = 1) -> str:
  """A table cell: the mean over seeds, with (min–max) when more than one; "-" for none."""
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  import numpy as np
  return f"{np.mean(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def write_csv(rows: list[dict], path: str, columns) -> None:
  """One line per row, `columns` in order (other keys of a row are left out)."""
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def write_all(out: str, name: str, rows: list[dict], columns, markdown: str,
              plot: Callable[[list[dict], str], None]) -> None:
  """out/name.csv, out/name.md (the given text) and out/name.png (drawn by `plot`)."""
  os.makedirs(out, exist_ok=True)
  write_csv(rows, os.path.join(out, f"{name}.csv"), columns)
  with open(os.path.join(out, f"{name}.md"), "w") as f:
    f.write(markdown)
  plot(rows, os.path.join(out, f"{name}.png"))
  print(f"Wrote {out}/{name}.{{csv,md,png}}")
