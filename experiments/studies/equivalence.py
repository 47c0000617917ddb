"""Training with one form or another gives the same model: each paper model family trained from one
seed once per form (recurrent, parallel, chunked with two chunk sizes), in float64 and float32,
compared at every evaluation.

  python -m experiments.studies.equivalence --out=results
  python -m experiments.studies.equivalence --families=linear-sum --steps=50 --out=/tmp/eq   # a look

Each run is the train loop's own jitted step (experiments.train.compile_step) on the task's own
batches, optimizer and evaluation; the forms differ only in `config.model.form` and
`config.model.chunk_size`. Families: the retrieval curves linear-sum, dpfp1-sum, favor64-sum
(with a fixed projection: `redraw_projection=False`, else the forms would see different random
features), dpfp1-delta, at S = --num_keys, and `lm:<model>`, a small LM (2 layers, d_model 64,
context 64, pydoc bytes) of that model. In float64 the parameters are cast to float64 after
initialisation and the whole step runs with x64 enabled.

At every evaluation, for each form against the recurrent one: the relative difference of the mean
train loss since the last evaluation and of the eval loss, |a − b| / |b|, and of the parameters,
max over leaves of ‖a − b‖ / ‖b‖. Results per (family, dtype) are kept as JSON under --workdir
(a relaunch skips those done) and written to equivalence.{csv,md,png} under --out.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import associative_recall, language_model
from experiments import optim, results, tasks, train
from experiments.studies import timing

_FAMILIES = flags.DEFINE_list("families", ["linear-sum", "dpfp1-sum", "favor64-sum",
                                           "dpfp1-delta", "lm:linear-delta"],
                              "Retrieval curves, or lm:<model> for a small language model.")
_DTYPES = flags.DEFINE_list("dtypes", ["float64", "float32"], "Parameter and compute dtypes.")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps per run.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 25, "Compare the forms every this many steps.")
_NUM_KEYS = flags.DEFINE_integer("num_keys", 24, "S of the retrieval runs (sequence length).")
_CHUNKS = flags.DEFINE_list("chunk_sizes", ["8", "5"], "The chunked form's two chunk sizes "
                            "(neither divides the sequence lengths, so padding is exercised).")
_SEED = flags.DEFINE_integer("seed", 1, "Seed shared by every form.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/equivalence", "Per-(family, dtype) JSON results.")
_OUT = flags.DEFINE_string("out", "results", "Directory for equivalence.{csv,md,png}.")

FIELDS = ("family", "dtype", "form", "step", "train_loss_diff", "eval_loss_diff", "params_diff",
          "train_loss", "eval_loss")


def family_config(family: str, steps: int, num_keys: int, seed: int):
  if family.startswith("lm:"):
    c = language_model.get_config(family[3:])
    c.model.update(dict(num_layers=2, d_model=64, num_heads=2, d_head=32, d_ff=256))
    c.context, c.batch_size, c.warmup_steps = 64, 16, min(50, steps // 5)
  else:
    c = associative_recall.get_config(family)
    c.num_keys = num_keys
    c.model.redraw_projection = False
  c.max_steps, c.seed = steps, seed
  return c


def forms(chunk_sizes) -> list[tuple[str, str]]:
  return [("recurrent", "64"), ("parallel", "64")] + [("chunked", c) for c in chunk_sizes]


def form_name(form: str, chunk: str) -> str:
  return f"chunked C={chunk}" if form == "chunked" else form


def train_one(config, dtype: str, steps: int, eval_every: int):
  """(train losses, eval losses, parameter leaves as float64 NumPy) at every evaluation."""
  task = tasks.get(config.task).make(config)
  tx = optim.optimizer(config)
  graphdef, state = train.create_state(task, tx, config.seed)
  params = jax.tree.map(lambda p: p.astype(dtype), state.arrays["params"])
  zeros = lambda sums: jax.tree.map(lambda s: jnp.zeros((), dtype), sums)
  arrays = dict(state.arrays, params=params, opt_state=tx.init(params),
                sums=zeros(state.arrays["sums"]))
  step_fn = train.compile_step(graphdef, tx, task)
  train_losses, eval_losses, snapshots = [], [], []
  for step in range(steps):
    batch = task.host_batch(step)
    arrays = step_fn(arrays, step, None if batch is None else jax.tree.map(jnp.asarray, batch))
    if (step + 1) % eval_every == 0:
      params = arrays["params"]
      train_losses.append(float(arrays["sums"]["loss"]) / eval_every)
      eval_losses.append(float(task.evaluate(graphdef, params, arrays["rest"],
                                             step + 1)["eval_loss"]))
      snapshots.append([np.asarray(x, np.float64) for x in jax.tree.leaves(params)])
      arrays = dict(arrays, sums=zeros(arrays["sums"]))
  return train_losses, eval_losses, snapshots


def relative(a, b) -> float:
  return float(abs(a - b) / max(abs(b), 1e-300))


def params_difference(a, b) -> float:
  return max(float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-300)) for x, y in zip(a, b))


def run_family(family: str, dtype: str) -> list[dict]:
  rows, runs = [], {}
  for form, chunk in forms(_CHUNKS.value):
    config = family_config(family, _STEPS.value, _NUM_KEYS.value, _SEED.value)
    config.model.form, config.model.chunk_size = form, chunk
    train.validate(config)
    start = time.perf_counter()
    with jax.enable_x64(dtype == "float64"):
      runs[form_name(form, chunk)] = train_one(config, dtype, _STEPS.value, _EVAL_EVERY.value)
    final = runs[form_name(form, chunk)]
    print(f"{family:16} {dtype:7} {form_name(form, chunk):12} train {final[0][-1]:.5f} eval "
          f"{final[1][-1]:.5f}  {time.perf_counter() - start:.0f} s", flush=True)
  reference = runs["recurrent"]
  for name, (train_losses, eval_losses, snapshots) in runs.items():
    for i, (tl, el, snap) in enumerate(zip(train_losses, eval_losses, snapshots)):
      rows.append(dict(family=family, dtype=dtype, form=name, step=(i + 1) * _EVAL_EVERY.value,
                       train_loss_diff=relative(tl, reference[0][i]),
                       eval_loss_diff=relative(el, reference[1][i]),
                       params_diff=params_difference(snap, reference[2][i]),
                       train_loss=tl, eval_loss=el))
  return rows


def markdown(rows, machine_line: str) -> str:
  lines = [machine_line, "",
           f"Each family trained from seed {_SEED.value} for {_STEPS.value} steps once per form; "
           f"at every {_EVAL_EVERY.value}-step evaluation, the relative difference to the "
           "recurrent form's run of the train loss, the eval loss and the parameters (max over "
           "leaves of ‖a − b‖/‖b‖). Largest over the run (at the last step in brackets). "
           "Command: `python -m experiments.studies.equivalence --out=results`.", ""]
  for dtype in dict.fromkeys(r["dtype"] for r in rows):
    lines += [f"### {dtype}", "", "| family | form vs recurrent | train loss | eval loss | "
              "parameters | final eval loss |", "|---|---|---|---|---|---|"]
    for family in dict.fromkeys(r["family"] for r in rows):
      for form in dict.fromkeys(r["form"] for r in rows):
        pts = [r for r in rows if (r["family"], r["dtype"], r["form"]) == (family, dtype, form)]
        if not pts or form == "recurrent":
          continue
        cell = lambda f: f"{max(p[f] for p in pts):.1e} ({pts[-1][f]:.1e})"
        lines.append(f"| {family} | {form} | {cell('train_loss_diff')} | "
                     f"{cell('eval_loss_diff')} | {cell('params_diff')} | "
                     f"{pts[-1]['eval_loss']:.4f} |")
    lines.append("")
  return "\n".join(lines)


def plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
  families = list(dict.fromkeys(r["family"] for r in rows))
  fig, axes = plt.subplots(len(dtypes), len(families), figsize=(3.2 * len(families),
                                                                 2.8 * len(dtypes)),
                           squeeze=False, sharex=True)
  for i, dtype in enumerate(dtypes):
    for j, family in enumerate(families):
      ax = axes[i][j]
      for form in dict.fromkeys(r["form"] for r in rows):
        pts = [r for r in rows if (r["family"], r["dtype"], r["form"]) == (family, dtype, form)]
        if form == "recurrent" or not pts:
          continue
        line, = ax.plot([p["step"] for p in pts], [max(p["params_diff"], 1e-17) for p in pts],
                        "-", label=f"{form}: parameters")
        ax.plot([p["step"] for p in pts], [max(p["eval_loss_diff"], 1e-17) for p in pts], ":",
                color=line.get_color(), label=f"{form}: eval loss")
      ax.set_yscale("log")
      ax.set_title(f"{family}, {dtype}", fontsize=9)
      ax.grid(alpha=0.3)
      if j == 0:
        ax.set_ylabel("relative difference\nto the recurrent run")
      if i == len(dtypes) - 1:
        ax.set_xlabel("training step")
  axes[0][-1].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  for dtype in _DTYPES.value:
    if dtype not in ("float64", "float32"):
      raise app.UsageError(f"Unknown dtype {dtype!r}; valid choices: float64, float32.")
  for family in _FAMILIES.value:           # every config is checked before anything trains
    train.validate(family_config(family, _STEPS.value, _NUM_KEYS.value, _SEED.value))
  os.makedirs(_WORKDIR.value, exist_ok=True)
  rows = []
  for family in _FAMILIES.value:
    for dtype in _DTYPES.value:
      path = os.path.join(_WORKDIR.value, f"{family.replace(':', '_')}.{dtype}.json")
      settings = dict(steps=_STEPS.value, eval_every=_EVAL_EVERY.value, num_keys=_NUM_KEYS.value,
                      chunk_sizes=_CHUNKS.value, seed=_SEED.value)
      if os.path.exists(path):
        with open(path) as f:
          saved = json.load(f)
        if saved["settings"] == settings:
          rows += saved["rows"]
          continue
      family_rows = run_family(family, dtype)
      with open(path + ".tmp", "w") as f:
        json.dump(dict(settings=settings, rows=family_rows), f)
      os.replace(path + ".tmp", path)
      rows += family_rows
  results.write_all(_OUT.value, "equivalence", rows, FIELDS,
                    markdown(rows, timing.machine_line(timing.machine(repeats=2))), plot)


if __name__ == "__main__":
  app.run(main)
