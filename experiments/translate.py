"""Translates text with a trained translation run, decoding it as an RNN with beam search.

  python -m experiments.translate --workdir=runs/mt --beam=4 < input.en > output.de
  echo "The file could not be opened." | python -m experiments.translate --workdir=runs/mt
  python -m experiments.translate --workdir=runs/mt --checkpoint=latest --beam=1   # greedy

One output line per input line (an empty line stays empty), in order. Lines are encoded with the
run's BPE vocabulary, grouped by length into batches, and each batch is searched at once: the
encoder writes every decoder layer's cross memory once per source, then the decoder runs token by
token with its fast weights (or softmax's cache) as its state. By default the checkpoint the run
selected by valid BLEU (`--checkpoint=best`); beam, length penalty and length limit default to
the run's own. Reads config.json and a checkpoint of --workdir, writes nothing there: a run that
is still training may be read.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging

from experiments import checkpoint, reading, rundir
from experiments.tasks.translation import data, task as translation
from fwp import checks, seq2seq

# allow_override: the readers are separate commands, but a process that imports both (the
# test suite) would otherwise fail on the shared flag name.
_WORKDIR = flags.DEFINE_string("workdir", None, "A translation run's directory.", allow_override=True)
_BEAM = flags.DEFINE_integer("beam", None, "Beam size (default: the run's config.beam).")
_LENGTH_PENALTY = flags.DEFINE_float("length_penalty", None, "Score Σ log p / length^this "
                                     "(default: the run's).")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", list(reading.WHICH),
                                "best: the checkpoint selected by valid BLEU; latest: the last.")
_BATCH_TOKENS = flags.DEFINE_integer("batch_tokens", 4096, "Source tokens per search batch.",
                                     lower_bound=1)


def check_request(beam, length_penalty) -> None:
  if beam is not None and (isinstance(beam, bool) or beam < 1):
    raise ValueError(f"--beam must be a positive integer, got {beam}.")
  if length_penalty is not None:
    checks.finite_non_negative("--length_penalty", length_penalty)


def load(workdir: str, which: str = "best"):
  """(config, the task (its corpus and vocabulary), model, step) of a translation run."""
  config = reading.read_config(workdir, "translation", "translation")
  # Other text under the run's file names would train another vocabulary: translations in
  # pieces the model never saw. Refused before anything is built.
  rundir.check_same_data(config.get(rundir.DATA_IDENTITY) and
                         config[rundir.DATA_IDENTITY].to_dict(),
                         translation.data_identity(config),
                         "Translation needs the text (and so the vocabulary) the run trained on: "
                         "restore the original files.")
  task = translation.make(config)
  model, step = reading.restore(workdir, config, task, which)
  return config, task, model, step


def translate_lines(task, model, lines: list[str], *, beam: int, length_penalty: float,
                    batch_tokens: int = 4096) -> list[str]:
  """The translation of each line ("" for a blank one), in order."""
  c = task.config
  encoded = [task.corpus.encode(line.strip()) if line.strip() else None for line in lines]
  order = sorted((i for i, ids in enumerate(encoded) if ids is not None),
                 key=lambda i: len(encoded[i]))
  groups, group = [], []
  for i in order:               # ascending lengths: the last of a group is its longest
    width = int(data.bucket_length(len(encoded[i]), c.bucket_width))
    if group and (len(group) + 1) * width > batch_tokens:
      groups.append(group)
      group = []
    group.append(i)
  groups += [group] if group else []
  out = [""] * len(lines)
  for group in groups:
    longest = len(encoded[group[-1]])
    src = np.full((len(group), int(data.bucket_length(longest, c.bucket_width))), data.PAD,
                  np.int32)
    for r, i in enumerate(group):
      src[r, :len(encoded[i])] = encoded[i]
    try:
      found = seq2seq.beam_search(model, src, beam=beam, length_penalty=length_penalty,
                                  max_len=max(1, int(c.max_len_a * longest + c.max_len_b)))
    except jax.errors.JaxRuntimeError as error:
      if "RESOURCE_EXHAUSTED" not in str(error) and "out of memory" not in str(error).lower():
        raise
      raise ValueError(
          f"Out of memory translating input line {group[-1] + 1} ({longest} pieces, in a batch "
          f"of {len(group)} line(s) at beam {beam}): {str(error).splitlines()[0][:200]}. Split "
          f"long lines, or give a smaller --batch_tokens or --beam.") from None
    for i, (tokens, _) in zip(group, found):
      out[i] = task.corpus.decode(tokens)
  return out


def which_checkpoint(workdir: str, which: str, step: int, metric: str) -> str:
  """What the header says of the checkpoint used: "latest", or the best by `metric` among the
  kept checkpoints' steps, and whether it is also the latest (a short run whose evaluations
  fall on few checkpoints may keep only its latest: then "best" chose nothing)."""
  kept = checkpoint.step_dirs(os.path.join(workdir, "checkpoints"))
  if which != "best" or not kept:
    return which
  latest = "; the latest too" if step == kept[-1] else ""
  return (f"best by {metric} of the checkpoints kept at steps {', '.join(map(str, kept))}"
          f"{latest}")


def read_input(stream) -> list[str]:
  """The lines of `stream` (bytes) as UTF-8, split at "\n" only (a "\r" before it is dropped):
  str.splitlines also splits at form feeds, U+2028 and the like, which made one input line two
  output lines. A line that is not UTF-8 is named with its number."""
  data = stream.read()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as error:
    line = data[:error.start].count(b"\n") + 1
    raise ValueError(f"Standard input line {line} is not UTF-8 ({error.reason}: byte "
                     f"{data[error.start:error.start + 1]!r}); give UTF-8 text.") from None
  lines = text.split("\n")
  if lines[-1] == "":           # the newline that ends the last line starts no other
    lines.pop()
  return [line[:-1] if line.endswith("\r") else line for line in lines]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)
  try:
    check_request(_BEAM.value, _LENGTH_PENALTY.value)
    config, task, model, step = load(_WORKDIR.value, _CHECKPOINT.value)
    beam = _BEAM.value or config.beam
    penalty = config.length_penalty if _LENGTH_PENALTY.value is None else _LENGTH_PENALTY.value
    lines = read_input(sys.stdin.buffer)
    used = which_checkpoint(_WORKDIR.value, _CHECKPOINT.value, step,
                            translation.Translation.selection[0])
    print(f"[{config.model_name}, step {step} ({used}), beam {beam}, length penalty {penalty}: "
          f"{len(lines)} line(s)]", file=sys.stderr, flush=True)
    start = time.time()
    translations = translate_lines(task, model, lines, beam=beam, length_penalty=penalty,
                                   batch_tokens=_BATCH_TOKENS.value)
    try:
      for line in translations:
        print(line)
      sys.stdout.flush()
    except OSError as error:      # a full disk, a closed pipe: said, not a traceback
      raise ValueError(f"Writing the translations to standard output failed "
                       f"({error.strerror or error}).") from None
  except ValueError as error:
    print(f"Error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
  print(f"[{time.time() - start:.1f} s]", file=sys.stderr)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")    # here, so that importing this module requires nothing
  app.run(main)
