"""The translation models' speed: training tokens per second, and decoding as an RNN — ms per
generated token against the source length and against the target length — plus beam search's
cost per beam.

  python -m experiments.studies.bench_translate --markdown=results/bench_translate.md
  python -m experiments.studies.bench_translate --models=standard,dpfp2 --sources=16,1024
  python -m experiments.studies.bench_translate --setting=wmt14 --models=standard,dpfp2 \
      --train_tokens=1024 --sources= --targets= --beams= --repeats=1   # the paper's big model

Models are configs/translation.py's (2 + 2 layers, d_model 128, 4,000-symbol vocabulary) with
freshly initialised weights (a step's cost does not depend on the weights) and synthetic token
ids (nor on the tokens). Training: one Adam step on a batch of `--train_tokens` tokens at length
32 (fwd + bwd + update, the CPU grid's batch shape). Decoding, one source at a time: the encoder
writes the cross memories once (not timed), then each decoder step is timed:
  source     ms per token of 32 steps after a source of S tokens: softmax cross-attention reads S
             keys per token, a fast weight cross memory is d_dot × d_head whatever S is
  target     ms per token when the decoder reads a target of T tokens: softmax self-attention's
             key/value cache holds T positions (its step attends over the whole cache), a fast
             weight decoder's state is fixed
  beam       ms per decoder step for 1 source with beam K (K rows of the batch)
Times are the median of `--repeats`, each after a compile and a warm-up call.
"""

from __future__ import annotations

import functools
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from configs import translation as translation_configs, wmt14
from experiments import results
from experiments.tasks.translation import task as translation
from fwp import seq2seq

_MODELS = flags.DEFINE_list("models", ["standard", "linear", "dpfp2", "performer128",
                                       "linear-delta"], "Table 1 model names.")
_SOURCES = flags.DEFINE_list("sources", ["16", "64", "256", "1024"], "Source lengths.")
_TARGETS = flags.DEFINE_list("targets", ["16", "64", "256", "1024"], "Target lengths (decoder "
                             "cache capacity).")
_BEAMS = flags.DEFINE_list("beams", ["1", "2", "4", "8"], "Beam sizes.")
_TRAIN_TOKENS = flags.DEFINE_integer("train_tokens", 2048, "Tokens per training batch.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timings per point (the median is kept).")
_MARKDOWN = flags.DEFINE_string("markdown", None, "Write the tables as Markdown here.")
_SETTING = flags.DEFINE_enum("setting", "translation", ["translation", "wmt14"],
                             "The config file whose models are timed (wmt14: the paper's big "
                             "Transformer, 32K vocabulary).")


def build(name: str) -> seq2seq.Seq2Seq:
  config = (wmt14 if _SETTING.value == "wmt14" else translation_configs).get_config(name)
  return seq2seq.Seq2Seq(translation.model_config(config, config.vocab_size), rngs=nnx.Rngs(0))


def _median_seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())                              # compile
  jax.block_until_ready(fn())                              # warm
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def train_tokens_per_second(model: seq2seq.Seq2Seq, tokens: int, repeats: int) -> float:
  length = 32
  rows = tokens // length
  rng = np.random.default_rng(0)
  vocab = model.config.vocab_size
  src, tgt = (jnp.asarray(rng.integers(3, vocab, (rows, length)), jnp.int32) for _ in range(2))
  tx = optax.adam(1e-4)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss(p):
      log_probs = nnx.merge(graphdef, p, rest)(src, tgt, dropout_key=jax.random.key(0))
      total, _, count = translation.smoothed_nll(log_probs, tgt, 0.1)
      return total / count
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return rows * length / _median_seconds(lambda: step(params, opt_state), repeats)


def decode_ms(model: seq2seq.Seq2Seq, source: int, target: int, batch: int, steps: int,
              repeats: int) -> float:
  """ms per decoder step (batch rows at once) after a `source`-token source, with a decoder
  state sized for `target` tokens."""
  graphdef, weights = nnx.split(model)
  src = jnp.asarray(np.random.default_rng(0).integers(3, model.config.vocab_size,
                                                      (batch, source)), jnp.int32)
  mems = jax.jit(lambda w, s: nnx.merge(graphdef, w).memories(s))(weights, src)
  state = model.init_state(batch, cache_capacity=target)
  tokens = jnp.full((batch,), model.config.eos_id, jnp.int32)

  @functools.partial(jax.jit, static_argnums=0)
  def run(n, weights, state, mems, tokens):
    def body(carry, _):
      state, tokens = carry
      log_probs, state = nnx.merge(graphdef, weights).step(state, mems, tokens)
      return (state, jnp.argmax(log_probs, -1).astype(jnp.int32)), None
    return jax.lax.scan(body, (state, tokens), None, length=n)[0]

  seconds = _median_seconds(lambda: run(steps, weights, state, mems, tokens), repeats)
  return 1e3 * seconds / steps


def main(argv):
  del argv
  sources, targets, beams = ([int(v) for v in flag.value if v] for flag in (_SOURCES, _TARGETS,
                                                                            _BEAMS))
  repeats = _REPEATS.value
  rows = {"train": [], "source": [], "target": [], "beam": []}
  for name in _MODELS.value:
    model = build(name)
    rows["train"].append((name, train_tokens_per_second(model, _TRAIN_TOKENS.value, repeats)))
    print(f"{name:>14}  train {rows['train'][-1][1]:8.0f} tokens/s", flush=True)
    for s in sources:
      rows["source"].append((name, s, decode_ms(model, s, 32, 1, 32, repeats)))
      print(f"{name:>14}  source {s:>5}: {rows['source'][-1][2]:7.3f} ms/token", flush=True)
    for t in targets:
      rows["target"].append((name, t, decode_ms(model, 16, t, 1, 32, repeats)))
      print(f"{name:>14}  target {t:>5}: {rows['target'][-1][2]:7.3f} ms/token", flush=True)
    for k in beams:
      rows["beam"].append((name, k, decode_ms(model, 16, 64, k, 32, repeats)))
      print(f"{name:>14}  beam {k:>3}: {rows['beam'][-1][2]:7.3f} ms/step", flush=True)
  if _MARKDOWN.value:
    write(rows, _MARKDOWN.value, sources, targets, beams)


def write(rows, path, sources, targets, beams) -> None:
  models = [name for name, _ in rows["train"]]

  def table(kind, keys, unit):
    value = {(m, k): v for m, k, v in rows[kind]}
    lines = [f"| model | " + " | ".join(f"{k}" for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    lines += [f"| {m} | " + " | ".join(f"{value[(m, k)]:.3f}" for k in keys) + " |"
              for m in models]
    return f"**{unit}**\n\n" + "\n".join(lines) + "\n"

  with open(path, "w") as f:
    f.write(f"Machine: {os.cpu_count()} CPU cores, {platform.platform()}, jax "
            f"{jax.__version__}, devices {[str(d) for d in jax.devices()]}. Made by `python -m "
            f"experiments.studies.bench_translate` at fwp commit {results.commit()} (its "
            f"docstring says what each table times); "
            f"configs/{_SETTING.value}.py's models, median of {_REPEATS.value}.\n\n")
    f.write(f"**Training ({_SETTING.value}), target tokens per second** (batch of "
            f"{_TRAIN_TOKENS.value} tokens at length 32)\n\n| model | tokens/s |\n|---|---|\n")
    f.writelines(f"| {m} | {v:,.0f} |\n" for m, v in rows["train"])
    for kind, keys, title in (
        ("source", sources, "Decoding, ms per token against the source length S (target state "
                            "for 32 tokens)"),
        ("target", targets, "Decoding, ms per token against the target length T the decoder's "
                            "state holds (source 16)"),
        ("beam", beams, "Beam search, ms per decoder step for one source against the beam K")):
      if keys:
        f.write("\n" + table(kind, keys, title))
  print(f"Wrote {path}")


if __name__ == "__main__":
  app.run(main)
