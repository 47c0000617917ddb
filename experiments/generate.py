"""Samples text from a trained language model, decoding it as an RNN.

  python -m experiments.generate --workdir=runs/lm --prompt="The while statement" --num_tokens=300
  python -m experiments.generate --workdir=runs/lm --temperature=0      # greedy
  python -m experiments.generate --workdir=runs/lm --top_k=10 --prompt_form=chunked

The prompt goes through the model once, in its parallel or chunked form, which returns every
layer's fast weights (W, and z under attention normalisation); then each new token is one
`model.step(state, token)`: constant time and memory per token for a fast weight model, a growing
key/value cache for softmax attention. Reads config.json and the latest checkpoint of --workdir.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx

from experiments import checkpoint, train
from experiments.tasks import language_model

_WORKDIR = flags.DEFINE_string("workdir", None, "A language-model run's directory.")
_PROMPT = flags.DEFINE_string("prompt", "", "Text to continue (empty: start of a line).")
_NUM_TOKENS = flags.DEFINE_integer("num_tokens", 200, "Tokens to generate.", lower_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 is greedy.",
                                  lower_bound=0.0)
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k likeliest tokens (0: all).",
                              lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_PROMPT_FORM = flags.DEFINE_enum("prompt_form", None, ["parallel", "chunked", "recurrent"],
                                 "Form for the prompt (default: the run's own).")
flags.mark_flag_as_required("workdir")


def load_run(workdir: str, form: str | None = None):
  """(config, model with the latest checkpoint's parameters) of a language-model run."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise ValueError(f"{workdir!r} holds no config.json: not a run directory.")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.task != "language_model":
    raise ValueError(f"{workdir!r} is a {config.task!r} run; generation needs a language_model "
                     f"run.")
  if form and config.model.update_rule not in ("softmax", "fwm"):
    config.model.form = form
  model = language_model.build_model(config, nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  state = train.fresh_state(params, rest, train.make_optimizer(config))
  mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  step, restored = checkpoint.restore_latest(mngr, checkpoint.abstract(state), set_aside=False)
  mngr.close()
  if restored is None:
    raise ValueError(f"{workdir!r} has no checkpoint yet.")
  return config, nnx.merge(graphdef, restored["params"], restored["rest"]), step


def sample(log_probs, key, temperature: float, top_k: int):
  if temperature == 0:
    return jnp.argmax(log_probs, axis=-1)
  logits = log_probs / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1)


def generate(model, prompt_ids: np.ndarray, num_tokens: int, *, temperature: float = 0.8,
             top_k: int = 0, seed: int = 0) -> np.ndarray:
  """The prompt in one pass, then `num_tokens` RNN steps; returns the generated ids [N]."""
  prompt = jnp.asarray(prompt_ids, jnp.int32)[None]
  state = model.init_state(1, cache_capacity=prompt.shape[1] + num_tokens)
  graphdef, weights = nnx.split(model)

  @jax.jit
  def prefill(weights, state, prompt):
    return nnx.merge(graphdef, weights)(prompt, state=state, return_state=True)

  @jax.jit
  def step(weights, state, token, key):
    log_probs, state = nnx.merge(graphdef, weights).step(state, token)
    return sample(log_probs, key, temperature, top_k), state

  log_probs, state = prefill(weights, state, prompt)
  key = jax.random.key(seed)
  token = sample(log_probs[:, -1], jax.random.fold_in(key, 0), temperature, top_k)
  out = [token]
  for i in range(1, num_tokens):
    token, state = step(weights, state, token, jax.random.fold_in(key, i))
    out.append(token)
  return np.asarray(jnp.concatenate(out))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  config, model, step = load_run(_WORKDIR.value, _PROMPT_FORM.value)
  vocab = language_model.load_corpus(config).vocab
  prompt = _PROMPT.value
  ids = vocab.encode(prompt) if prompt else vocab.encode("\n")
  start = time.time()
  new = generate(model, ids, _NUM_TOKENS.value, temperature=_TEMPERATURE.value,
                 top_k=_TOP_K.value, seed=_SEED.value)
  seconds = time.time() - start
  print(f"[{config.model_name}, step {step}, {len(ids)} prompt + {len(new)} generated "
        f"{language_model.load_corpus(config).unit}s in {seconds:.1f} s]")
  text = vocab.decode(new)
  if vocab.level == "word" and prompt and not prompt.endswith(("\n", " ")) and text[:1] != "\n":
    text = " " + text                      # words are joined by spaces
  print(prompt + text)


if __name__ == "__main__":
  app.run(main)
