"""Samples text from a trained language model, decoding it as an RNN.

  python -m experiments.generate --workdir=runs/lm --prompt="The while statement" --num_tokens=300
  python -m experiments.generate --workdir=runs/lm --temperature=0      # greedy
  python -m experiments.generate --workdir=runs/lm --top_k=10 --prompt_form=chunked
  python -m experiments.generate --workdir=runs/lm --num_tokens=100000 > sample.txt   # streams
  python -m experiments.generate --workdir=runs/lm --prompt_file=book.txt --prompt_segment=128

The prompt goes through the model once, in its parallel or chunked form, which returns every
layer's fast weights (W, and z under attention normalisation); then each new token is one
`model.step(state, token)`: constant time and memory per token for a fast weight model, a growing
key/value cache for softmax attention. Tokens are printed as they are made (nothing but the
model's state is kept). A fast weight model has no context window: `--prompt_segment=N` reads
a prompt of any length N tokens at a time, each piece starting from the state the last one left
(as a carry_state run trains; a fast weight model's memory is bounded by N, not by the prompt;
softmax attention's cache still holds the whole prompt). Reads config.json and the latest
checkpoint of --workdir, and writes nothing there: a run that is still training may be read.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from experiments import reading
from experiments.tasks import language_model

# allow_override: the readers are separate commands, but a process that imports both (the
# test suite) would otherwise fail on the shared flag name.
_WORKDIR = flags.DEFINE_string("workdir", None, "A language-model run's directory.", allow_override=True)
_PROMPT = flags.DEFINE_string("prompt", "", "Text to continue (empty: start of a line).")
_NUM_TOKENS = flags.DEFINE_integer("num_tokens", 200, "Tokens to generate.", lower_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 is greedy.",
                                  lower_bound=0.0)
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k likeliest tokens (0: all).",
                              lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "Read the prompt from this file "
                                   "(instead of --prompt).")
_PROMPT_SEGMENT = flags.DEFINE_integer(
    "prompt_segment", 0, "Read the prompt this many tokens at a time, carrying the state from "
    "piece to piece (fast weight models; 0: in one pass).", lower_bound=0)
_PROMPT_FORM = flags.DEFINE_enum("prompt_form", None, ["parallel", "chunked", "recurrent"],
                                 "Form for the prompt (default: the run's own).")


def load_run(workdir: str, form: str | None = None):
  """(config, model with the latest checkpoint's parameters, step) of a language-model run.
  Reads only: the run may still be training there."""
  config = reading.read_config(workdir, "language_model", "generation")
  if form and config.model.update_rule not in ("softmax", "fwm"):
    config.model.form = form
  model, step = reading.restore(workdir, config, language_model.make(config))
  # FAVOR+ under model.eval_projection='last_draw': the draw the run's evaluation used.
  language_model.use_last_draw(model, config, step)
  return config, model, step


def sample(log_probs, key, temperature: float, top_k: int):
  if temperature == 0:
    return jnp.argmax(log_probs, axis=-1)
  logits = log_probs / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1)


def check_request(prompt_ids: np.ndarray, num_tokens: int, top_k: int, vocab_size: int,
                  prompt_segment: int = 0) -> None:
  if prompt_segment < 0:
    raise ValueError(f"--prompt_segment must be >= 0 (0: the prompt in one pass), got "
                     f"{prompt_segment}.")
  if len(prompt_ids) == 0:
    raise ValueError("The prompt holds no token of this run's vocabulary (a word-level run "
                     "splits on whitespace): give some text, or no --prompt to start a line.")
  if num_tokens < 1:
    raise ValueError(f"--num_tokens must be >= 1, got {num_tokens}.")
  if not 0 <= top_k <= vocab_size:
    raise ValueError(f"--top_k={top_k} is larger than the vocabulary ({vocab_size} symbols); "
                     f"give 0 (all) or 1..{vocab_size}.")


def stream(model, prompt_ids: np.ndarray, num_tokens: int, *, temperature: float = 0.8,
           top_k: int = 0, seed: int = 0, prompt_segment: int = 0,
           state=None) -> Iterator[int]:
  """The prompt in one pass (or `prompt_segment` tokens at a time, the state carried from piece
  to piece), then `num_tokens` RNN steps, yielding each id as it is made: only the model's state
  is kept (constant for a fast weight model, a cache for softmax). `state`: a state to start
  from (e.g. after reading earlier text), the empty one when None."""
  check_request(prompt_ids, num_tokens, top_k, model.config.vocab_size, prompt_segment)
  prompt = jnp.asarray(prompt_ids, jnp.int32)[None]
  if state is None:
    state = model.init_state(1, cache_capacity=prompt.shape[1] + num_tokens)
  graphdef, weights = nnx.split(model)

  @jax.jit
  def prefill(weights, state, prompt):
    return nnx.merge(graphdef, weights)(prompt, state=state, return_state=True)

  @functools.partial(jax.jit, donate_argnums=1)
  def step(weights, state, token, key):
    log_probs, state = nnx.merge(graphdef, weights).step(state, token)
    return sample(log_probs, key, temperature, top_k), state

  piece = prompt_segment or prompt.shape[1]
  for start in range(0, prompt.shape[1], piece):
    log_probs, state = prefill(weights, state, prompt[:, start:start + piece])
  key = jax.random.key(seed)
  token = sample(log_probs[:, -1], jax.random.fold_in(key, 0), temperature, top_k)
  for i in range(1, num_tokens):   # the next step is dispatched before this token is read
    following, state = step(weights, state, token, jax.random.fold_in(key, i))
    yield int(token[0])
    token = following
  yield int(token[0])


def generate(model, prompt_ids: np.ndarray, num_tokens: int, **sampling) -> np.ndarray:
  """The generated ids [num_tokens], kept in one NumPy buffer."""
  out = np.empty(num_tokens, np.int32)
  for i, token in enumerate(stream(model, prompt_ids, num_tokens, **sampling)):
    out[i] = token
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # orbax logs every restore, and a read-only manager
  try:
    _generate()
  except ValueError as error:
    print(f"Error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


def _generate():
  config, model, step = load_run(_WORKDIR.value, _PROMPT_FORM.value)
  corpus = language_model.load_corpus(config)
  prompt = _PROMPT.value
  if _PROMPT_FILE.value:
    if prompt:
      raise ValueError("Give --prompt or --prompt_file, not both.")
    try:
      with open(_PROMPT_FILE.value, encoding="utf-8") as f:
        prompt = f.read()
    except (OSError, UnicodeDecodeError) as error:
      raise ValueError(f"--prompt_file={_PROMPT_FILE.value!r} cannot be read ({error}).") from None
  ids = corpus.vocab.encode(prompt) if prompt else corpus.vocab.encode("\n")
  check_request(ids, _NUM_TOKENS.value, _TOP_K.value, corpus.vocab.size,    # before any output
                _PROMPT_SEGMENT.value)
  print(f"[{config.model_name}, step {step}, {len(ids)} prompt + {_NUM_TOKENS.value} generated "
        f"{corpus.unit}s]", flush=True)
  decoder = corpus.vocab.decoder(continues=prompt)
  sys.stdout.write(prompt)
  start, last_flush = time.time(), time.time()
  for token in stream(model, ids, _NUM_TOKENS.value, temperature=_TEMPERATURE.value,
                      top_k=_TOP_K.value, seed=_SEED.value,
                      prompt_segment=_PROMPT_SEGMENT.value):
    sys.stdout.write(decoder([token]))
    if time.time() - last_flush > 0.2:
      sys.stdout.flush()
      last_flush = time.time()
  sys.stdout.write(decoder.flush() + "\n")
  sys.stdout.flush()
  seconds = time.time() - start
  print(f"[{_NUM_TOKENS.value} {corpus.unit}s in {seconds:.1f} s: "
        f"{1e3 * seconds / _NUM_TOKENS.value:.2f} ms each, prompt included]", file=sys.stderr)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")    # here, so that importing this module requires nothing
  app.run(main)
