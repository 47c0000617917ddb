"""Where the forms stop agreeing in low precision: every form of the sum and delta layers in
float32 and bfloat16 against a float64 recurrent reference, as sequences grow.

  python -m experiments.studies.precision --out=results
  python -m experiments.studies.precision --lengths=256,1024 --out=/tmp/p      # a quick look

The layers are the paper's: the sum rule with φ = ELU+1 and the attention normaliser (linear
Transformer), the delta rule with φ = ELU+1 and sum normalisation (fwp.layers). Inputs q, k, v
~ N(0, 1) and β = σ(N(0, 1)), [batch, T, heads, d_head]. Three precisions:

  float32            float32 inputs, fast weights summed in float32
  bf16 in, f32 state bfloat16 inputs, `accumulate="float32"` (the default): the rules upcast
  bfloat16           bfloat16 inputs, `accumulate="input"`: every product and the state in bf16

The reference is the recurrent form in float64 on the *same* (rounded) inputs, so the numbers
measure the arithmetic, not the rounding of the inputs. Error = ‖x − x_ref‖ / ‖x_ref‖ over all
outputs y (and, separately, over the last 10% of steps: where growth shows), and over the final
fast weights W_T. The outputs come back in the inputs' dtype, so no form can beat the error of
rounding y_ref itself to that dtype (`output_rounding`, ≈ 2e-3 for bfloat16). The parallel
form is O(T²) in memory and is run up to --parallel_max_t.
Writes precision.{csv,md,png} under --out; one run per (rule, precision, form, T), resumable
(rows already in the CSV are kept and skipped).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import results
from experiments.studies import timing
from fwp import layers

_LENGTHS = flags.DEFINE_list("lengths", ["1024", "4096", "16384", "65536"], "Sequence lengths.")
_FORMS = flags.DEFINE_list("forms", ["recurrent", "parallel", "chunked"], "Forms to measure.")
_CHUNK = flags.DEFINE_integer("chunk_size", 64, "Chunk size of the chunked form.")
_PARALLEL_MAX_T = flags.DEFINE_integer("parallel_max_t", 4096, "Longest T for the parallel form "
                                       "(its T×T matrices: 16k² float32 = 1 GiB per head).")
_SHAPE = flags.DEFINE_list("shape", ["1", "2", "32"], "batch, heads, d_head.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random inputs.")
_OUT = flags.DEFINE_string("out", "results", "Directory for precision.{csv,md,png}.")

RULES = {"sum": dict(update_rule="sum", normalization="attention"),
         "delta": dict(update_rule="delta", normalization="sum")}
PRECISIONS = {"float32": (jnp.float32, "float32"),
              "bf16 in, f32 state": (jnp.bfloat16, "float32"),
              "bfloat16": (jnp.bfloat16, "input")}
FIELDS = ("rule", "precision", "form", "T", "output_error", "late_output_error", "state_error",
          "output_rounding", "seconds")


def inputs(t: int, batch: int, heads: int, d_head: int, seed: int):
  rng = np.random.default_rng(seed)
  q, k, v = (rng.standard_normal((batch, t, heads, d_head)) for _ in range(3))
  beta = 1 / (1 + np.exp(-rng.standard_normal((batch, t, heads))))
  return q, k, v, beta


def layer(rule: str, form: str, chunk_size: int, accumulate: str = "float32"):
  config = layers.FastWeightConfig(feature_map="elu_plus_one", form=form, chunk_size=chunk_size,
                                   accumulate=accumulate, **RULES[rule])
  return jax.jit(lambda q, k, v, beta: layers.fast_weight_attention(q, k, v, beta, config))


def relative_error(x, ref) -> float:
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def measure(rule: str, precision: str, form: str, t: int, shape, seed: int, chunk_size: int,
            cache: dict) -> dict:
  dtype, accumulate = PRECISIONS[precision]
  cast = tuple(jnp.asarray(x, dtype) for x in inputs(t, *shape, seed))
  key = (rule, np.dtype(dtype).name, t)
  if key not in cache:                         # the float64 reference on the rounded inputs
    with jax.enable_x64(True):
      exact = tuple(jnp.asarray(np.asarray(x, np.float64)) for x in cast)
      y, state = layer(rule, "recurrent", chunk_size)(*exact)
      cache.clear()
      cache[key] = np.asarray(y), np.asarray(state.w)
  y_ref, w_ref = cache[key]
  start = time.perf_counter()
  y, state = jax.block_until_ready(layer(rule, form, chunk_size, accumulate)(*cast))
  late = slice(t - max(t // 10, 1), t)
  return dict(rule=rule, precision=precision, form=form, T=t,
              output_error=relative_error(y, y_ref),
              late_output_error=relative_error(y[:, late], y_ref[:, late]),
              state_error=relative_error(state.w, w_ref),
              output_rounding=relative_error(jnp.asarray(y_ref, dtype), y_ref),
              seconds=time.perf_counter() - start)


def read_rows(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  rows = results.read_csv(path)
  for r in rows:
    r["T"] = int(r["T"])
    for name in FIELDS[4:]:
      r[name] = float(r[name])
  return rows


def markdown(rows, machine_line: str) -> str:
  lengths = sorted({r["T"] for r in rows})
  lines = [machine_line, "",
           "Relative error ‖y − y_ref‖/‖y_ref‖ of the outputs (all steps; last 10% of steps in "
           "brackets) and of the final fast weights W_T, against the float64 recurrent form on "
           "the same rounded inputs. The outputs are returned in the inputs' dtype: rounding the "
           "exact outputs to bfloat16 alone costs the 'rounding' row's error. Command: "
           "`python -m experiments.studies.precision --out=results`.", ""]
  for rule in RULES:
    lines += [f"### {rule} rule ({RULES[rule]['normalization']} normalisation, φ = ELU+1)", "",
              "| precision | form | " + " | ".join(f"T = {t}" for t in lengths) + " |",
              "|---|---|" + "---|" * len(lengths)]
    floor = []
    for t in lengths:
      hit = [r for r in rows if (r["rule"], r["precision"], r["T"]) == (rule, "bfloat16", t)]
      floor.append(f"{hit[0]['output_rounding']:.1e}" if hit else "–")
    lines.append("| rounding y_ref to bfloat16 | – | " + " | ".join(floor) + " |")
    for precision in PRECISIONS:
      for form in dict.fromkeys(r["form"] for r in rows):
        cells = []
        for t in lengths:
          hit = [r for r in rows if (r["rule"], r["precision"], r["form"], r["T"]) == (
              rule, precision, form, t)]
          cells.append(f"{hit[0]['output_error']:.1e} ({hit[0]['late_output_error']:.1e}); "
                       f"W {hit[0]['state_error']:.1e}" if hit else "–")
        if any(c != "–" for c in cells):
          lines.append(f"| {precision} | {form} | " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)


def plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(RULES), figsize=(11, 4.2), sharey=True)
  styles = {"recurrent": "o-", "parallel": "s--", "chunked": "^:"}
  colors = dict(zip(PRECISIONS, ("tab:blue", "tab:orange", "tab:red")))
  for ax, rule in zip(axes, RULES):
    for precision in PRECISIONS:
      for form in styles:
        pts = sorted((r["T"], r["output_error"]) for r in rows
                     if (r["rule"], r["precision"], r["form"]) == (rule, precision, form))
        if pts:
          ax.plot(*zip(*pts), styles[form], color=colors[precision],
                  label=f"{precision}, {form}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_title(f"{rule} rule, {RULES[rule]['normalization']} normalisation")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("relative output error vs float64")
  axes[-1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  shape = tuple(int(x) for x in _SHAPE.value)
  lengths = [int(t) for t in _LENGTHS.value]
  for form in _FORMS.value:
    if form not in ("recurrent", "parallel", "chunked"):
      raise app.UsageError(f"Unknown form {form!r}; valid choices: recurrent, parallel, chunked.")
  os.makedirs(_OUT.value, exist_ok=True)
  csv_path = os.path.join(_OUT.value, "precision.csv")
  rows = read_rows(csv_path)
  done = {(r["rule"], r["precision"], r["form"], r["T"]) for r in rows}
  cache = {}
  for rule in RULES:
    for t in lengths:
      for precision in PRECISIONS:
        for form in _FORMS.value:
          if (rule, precision, form, t) in done or (
              form == "parallel" and t > _PARALLEL_MAX_T.value):
            continue
          row = measure(rule, precision, form, t, shape, _SEED.value, _CHUNK.value, cache)
          print(f"{rule:6} {precision:19} {form:9} T={t:<6} y {row['output_error']:.2e} "
                f"(late {row['late_output_error']:.2e})  W {row['state_error']:.2e}  "
                f"{row['seconds']:.1f} s", flush=True)
          rows.append(row)
          results.write_csv(rows, csv_path, FIELDS)   # after every row: a relaunch resumes
  rows.sort(key=lambda r: (list(RULES).index(r["rule"]), list(PRECISIONS).index(r["precision"]),
                           r["form"], r["T"]))
  results.write_all(_OUT.value, "precision", rows, FIELDS,
                    markdown(rows, timing.machine_line(timing.machine(repeats=2))), plot)


if __name__ == "__main__":
  app.run(main)
