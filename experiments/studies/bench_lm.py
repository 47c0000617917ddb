"""Language-model benchmarks: the training step at the paper's small-setting shapes, and the cost
of generating one token against its position (fast weights: flat; softmax's cache: growing).

  python -m experiments.studies.bench_lm --out=results/bench_lm.json --markdown=results/bench_lm.md \
      --plot=results/bench_lm_decode.png

Training step: configs/wikitext103.py's small setting (16 layers, d_model 128, 8 heads × 16,
FFN 2048, context 256, batch 96) with a byte vocabulary (256) in place of WikiText's 267k words,
so the table measures the blocks, which are what the models differ in. FLOPs count
6 · tokens · (non-embedding parameters + d_model · V) for the dense layers (forward + backward),
plus the attention's own work: 3 · 4 · B · H · T² · d_head per softmax layer, and
18 · B · H · T · d_dot · d_head per fast weight layer (the rule's count in experiments.studies.bench).
The float32 matmul rate is measured in the same run. Decoding: one `model.step` (jitted) for
batch 1 at each position; memory is the bytes of the state the step carries.
"""

from __future__ import annotations

import functools
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from configs import wikitext103
from experiments import results
from experiments.studies import timing
from experiments.tasks import language_model
from fwp import lm

_MODELS = flags.DEFINE_list("models", ["transformer", "linear-sum", "linear-delta",
                                       "dpfp2-delta"], "Models whose training step to time.")
_SIZE = flags.DEFINE_enum("size", "small", ["small", "medium"], "The paper's setting.")
_BATCH = flags.DEFINE_integer("batch", None, "Batch size (default: the setting's).")
_LAYERS = flags.DEFINE_integer("layers", None, "Layers (default: the setting's 16).")
_VOCAB = flags.DEFINE_integer("vocab_size", 256, "Vocabulary size.")
_DROPOUTS = flags.DEFINE_list("dropouts", ["config", "0"], "Dropout rates to time the training "
                              "step with ('config': the setting's 0.1; 0 shows the RNG's cost).")
_DECODE_MODELS = flags.DEFINE_list("decode_models", ["transformer", "linear-delta"],
                                   "Models whose per-token decoding cost to time.")
_POSITIONS = flags.DEFINE_list("positions", ["128", "512", "2048", "8192", "16384"],
                               "Positions at which to time one generated token.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per case (median reported).")
_GUARD = timing.guard_flag(flags)
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")
_MARKDOWN = flags.DEFINE_string("markdown", None, "Write the tables as Markdown here.")
_PLOT = flags.DEFINE_string("plot", None, "Write the decoding figure (PNG) here.")


def _config(model: str, dropout: str = "config"):
  config = wikitext103.get_config(f"{_SIZE.value}-{model}")
  config.model.adaptive_cutoffs = ()
  if dropout != "config":
    config.model.dropout = float(dropout)
  if _BATCH.value:
    config.batch_size = _BATCH.value
  if _LAYERS.value:
    config.model.num_layers = _LAYERS.value
  return config


def _build(config):
  return lm.TransformerLM(language_model.lm_config(config, _VOCAB.value), rngs=nnx.Rngs(0))


def step_flops(model: lm.TransformerLM, batch: int, context: int) -> float:
  c = model.config
  params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  embedding = c.vocab_size * c.d_model
  tokens = batch * context
  dense = 6 * tokens * (params - embedding + c.d_model * c.vocab_size)
  h, d = c.num_heads, c.d_head
  if c.fast_weight is None:
    attention = 3 * 4 * batch * h * context ** 2 * d
  else:
    attention = 18 * batch * h * context * c.fast_weight.d_dot(d) * d
  return dense + c.num_layers * attention


def time_train_step(model_name: str, repeats: int, peak: float, dropout: str = "config") -> dict:
  config = _config(model_name, dropout)
  model = _build(config)
  b, t = config.batch_size, config.context
  tokens = np.random.default_rng(0).integers(0, _VOCAB.value, (b, t + 1)).astype(np.int32)
  batch = dict(inputs=jnp.asarray(tokens[:, :-1]), targets=jnp.asarray(tokens[:, 1:]))
  # The LM task's loss on random tokens of the paper's vocabulary size (no corpus to load).
  task = types.SimpleNamespace(build_model=lambda rngs: _build(config),
                               host_batch=lambda step: batch, selection=("eval_loss", "min"),
                               loss=functools.partial(language_model.lm_loss, config))
  seconds = timing.train_step_seconds(task, config, repeats)
  flops = step_flops(model, b, t)
  return dict(kind="train_step", model=model_name, form=config.model.form, batch=b, context=t,
              layers=config.model.num_layers, dropout=config.model.dropout, ms=seconds * 1e3,
              tokens_per_second=b * t / seconds,
              gflops=flops / seconds / 1e9, fraction_of_matmul=flops / seconds / 1e9 / peak)


def time_decode(model_name: str, position: int, repeats: int) -> dict:
  config = _config(model_name)
  model = _build(config)
  state = model.init_state(1, cache_capacity=position + 1)
  # Softmax: a cache holding `position` tokens; fast weights: the same W at any position.
  state = state._replace(position=jnp.asarray(position, jnp.int32),
                         layers=tuple(s._replace(length=jnp.asarray(position, jnp.int32))
                                      if isinstance(s, lm.layers.KVCache) else s
                                      for s in state.layers))
  graphdef, weights = nnx.split(model)
  step = jax.jit(lambda w, s, tok: nnx.merge(graphdef, w).step(s, tok))
  token = jnp.zeros((1,), jnp.int32)
  seconds = timing.median_seconds(step, weights, state, token, repeats=repeats)
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  return dict(kind="decode", model=model_name, position=position, ms=seconds * 1e3,
              state_bytes=state_bytes, layers=config.model.num_layers)


def markdown(machine, rows, quiet_line: str = "") -> str:
  mark = lambda r: " ‡" if r.get("busy") else ""
  lines = [timing.machine_line(machine), *(["", quiet_line] if quiet_line else []), "",
           "### Training step (paper's small-setting shapes, "
           f"vocabulary {_VOCAB.value})", "",
           "| model | form | layers | batch × context | dropout | ms / step | tokens / s | "
           "GFLOP/s | % of matmul |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if r["kind"] == "train_step":
      lines.append(f"| {r['model']}{mark(r)} | {r['form']} | {r['layers']} | {r['batch']} × "
                   f"{r['context']} | {r['dropout']} | {r['ms']:.0f} | "
                   f"{r['tokens_per_second']:.0f} | {r['gflops']:.1f} | "
                   f"{100 * r['fraction_of_matmul']:.1f}% |")
  for r in rows:
    if r["kind"] == "gemm":
      lines.append(f"\nThe model's own largest product, [{r['m']}, {r['k']}] × [{r['k']}, "
                   f"{r['n']}] (the feed-forward input layer), runs at {r['gflops']:.1f} GFLOP/s "
                   f"= {100 * r['fraction_of_matmul']:.0f}% of the 2048³ rate, alone.")
  lines += ["", "### Generating one token at position p (batch 1)", "",
            "| model | p | ms / token | state MB |", "|---|---|---|---|"]
  for r in rows:
    if r["kind"] == "decode":
      lines.append(f"| {r['model']}{mark(r)} | {r['position']} | {r['ms']:.2f} | "
                   f"{r['state_bytes'] / 2 ** 20:.2f} |")
  return "\n".join(lines) + "\n"


def plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for model in dict.fromkeys(r["model"] for r in rows if r["kind"] == "decode"):
    pts = [r for r in rows if r["kind"] == "decode" and r["model"] == model]
    x = [r["position"] for r in pts]
    axes[0].plot(x, [r["ms"] for r in pts], "o-", label=model)
    axes[1].plot(x, [r["state_bytes"] / 2 ** 20 for r in pts], "o-", label=model)
  for ax, label in zip(axes, ("ms per generated token", "decoding state (MB)")):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position of the generated token")
    ax.set_ylabel(label)
    ax.legend()
  fig.suptitle("Decoding cost against position: fast weights are flat, softmax's cache grows")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  machine = timing.machine()
  peak = machine["matmul_gflops"]
  print(timing.machine_line(machine), flush=True)
  rows, quiet = [], timing.Quiet(matmul_size=_GUARD.value)
  config = _config(_MODELS.value[0] if _MODELS.value else "transformer")
  m, k, n = config.batch_size * config.context, config.model.d_model, config.model.d_ff
  gemm = timing.matmul_gflops(n, _REPEATS.value, k=k, m=m)
  rows.append(dict(kind="gemm", m=m, k=k, n=n, gflops=gemm, fraction_of_matmul=gemm / peak))
  for name in _MODELS.value:
    for dropout in _DROPOUTS.value:
      row = quiet.timed(lambda: time_train_step(name, _REPEATS.value, peak, dropout))
      rows.append(row)
      _write(machine, rows, quiet)
      print(f"train step {name:14} dropout {row['dropout']:<4} {row['ms']:9.0f} ms  "
            f"{row['tokens_per_second']:9.0f} tok/s  {100 * row['fraction_of_matmul']:5.1f}% of "
            f"matmul", flush=True)
  for name in _DECODE_MODELS.value:
    for p in (int(x) for x in _POSITIONS.value):
      row = quiet.timed(lambda: time_decode(name, p, _REPEATS.value))
      rows.append(row)
      _write(machine, rows, quiet)
      print(f"decode {name:14} p={p:6}  {row['ms']:8.2f} ms  {row['state_bytes'] / 2**20:8.2f} "
            f"MB", flush=True)
  if _PLOT.value:
    plot(rows, _PLOT.value)


def _write(machine, rows, quiet):
  """Rewrites the outputs after every row, so a run that is stopped keeps what it measured."""
  if _MARKDOWN.value:
    timed = [r for r in rows if r["kind"] != "gemm"]
    results.write_text(_MARKDOWN.value, markdown(machine, rows, quiet.line(timed)))
  if _OUT.value:
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value, "w") as f:
      f.write(json.dumps(dict(machine=machine, rows=rows), indent=2))


if __name__ == "__main__":
  app.run(main)
