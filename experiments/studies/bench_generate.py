"""Long generation through experiments.generate's stream: time per token and the process's memory,
block by block, to show that a fast weight model decodes in constant time and memory per token
(and what softmax attention's growing cache costs beside it).

  python -m experiments.studies.bench_generate --models=linear-delta --tokens=100000 --block=10000 \
      --markdown=results/bench_generate.md
  python -m experiments.studies.bench_generate --models=transformer --tokens=8000 --block=1000

The model is configs/language_model.py's (4 layers, d_model 128, bytes) with freshly initialised
weights: the cost of a step does not depend on what the weights are. Each block's row is its
mean time per token and the resident memory (RSS) at its end; the first block includes the
prompt and the compiles.
"""

from __future__ import annotations

import os
import platform
import resource
import time

import jax
from absl import app, flags
from flax import nnx

from configs import language_model as lm_configs
from experiments import generate
from experiments.tasks import language_model

_MODELS = flags.DEFINE_list("models", ["linear-delta"], "LM model names to decode with.")
_NUM_TOKENS = flags.DEFINE_integer("tokens", 100_000, "Tokens to generate per model.")
_BLOCK = flags.DEFINE_integer("block", 10_000, "Tokens per reported block.")
_MARKDOWN = flags.DEFINE_string("markdown", None, "Append the table as Markdown here.")


def rss_mb() -> float:
  """Resident memory now (Linux /proc), else the peak so far."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  except OSError:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(model_name: str, num_tokens: int, block: int) -> list[dict]:
  config = lm_configs.get_config(model_name)
  model = language_model.build_model(config, nnx.Rngs(0))
  prompt = language_model.encode(config, "The while statement")
  rows, start = [], time.perf_counter()
  tokens = generate.stream(model, prompt, num_tokens, temperature=1.0, seed=0)
  for i, _ in enumerate(tokens, 1):
    if i % block == 0 or i == num_tokens:
      now = time.perf_counter()
      done = rows[-1]["tokens"] if rows else 0
      rows.append(dict(model=model_name, tokens=i, ms_per_token=1e3 * (now - start) / (i - done),
                       rss_mb=rss_mb()))
      print(f"{model_name:>14}  {i:>7} tokens  {rows[-1]['ms_per_token']:7.3f} ms/token  "
            f"RSS {rows[-1]['rss_mb']:7.1f} MB", flush=True)
      start = now
  return rows


def main(argv):
  del argv
  rows = [r for name in _MODELS.value for r in bench(name, _NUM_TOKENS.value, _BLOCK.value)]
  if _MARKDOWN.value:
    header = not os.path.exists(_MARKDOWN.value)
    with open(_MARKDOWN.value, "a") as f:
      if header:
        f.write(f"Machine: {os.cpu_count()} CPU cores, {platform.platform()}, jax "
                f"{jax.__version__}, devices {[str(d) for d in jax.devices()]}. Made by "
                f"`python -m experiments.studies.bench_generate` (see its docstring for the flags).\n\n"
                "| model | tokens so far | ms / token in the block | RSS MB at its end |\n"
                "|---|---|---|---|\n")
      f.writelines(f"| {r['model']} | {r['tokens']} | {r['ms_per_token']:.3f} | "
                   f"{r['rss_mb']:.0f} |\n" for r in rows)
  growth = {m: [r["rss_mb"] for r in rows if r["model"] == m] for m in _MODELS.value}
  for model, rss in growth.items():
    print(f"{model}: RSS from the first block's end to the last: {rss[-1] - rss[0]:+.1f} MB")



if __name__ == "__main__":
  app.run(main)
