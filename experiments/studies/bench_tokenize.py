"""Times the WikiText-103 loader's first (tokenising) and later (cached) loads on a synthetic
corpus of the real one's size and format, for machines without the data.

  python -m experiments.studies.bench_tokenize --megabytes=540 --dir=/tmp/wt103-synthetic

The training file has Zipf-distributed words from a 267k-word vocabulary (WikiText-103's size),
~13 words per line with blank and " = Heading = " lines as in the real file; valid and test are
0.2% of it each. Prints seconds for tokenising and for the cached reload.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags

from experiments.tasks.language_model import text_data

_MEGABYTES = flags.DEFINE_integer("megabytes", 540, "Size of wiki.train.tokens to write.")
_DIR = flags.DEFINE_string("dir", "/tmp/wt103-synthetic", "Where to write the corpus.")
_VOCAB = 267_735


def write_corpus(directory: str, megabytes: int) -> None:
  rng = np.random.default_rng(0)
  words = np.asarray(["<unk>" if i == 5 else f"w{i}" for i in range(_VOCAB)])   # WikiText has <unk>
  os.makedirs(directory, exist_ok=True)
  for split, size in (("train", megabytes), ("valid", max(1, megabytes // 500)),
                      ("test", max(1, megabytes // 500))):
    path = os.path.join(directory, f"wiki.{split}.tokens")
    written = 0
    with open(path, "w") as f:
      while written < size * 2 ** 20:
        ids = np.minimum(rng.zipf(1.2, 13 * 15_000), _VOCAB) - 1
        lines = [" " + " ".join(chunk) + " \n" for chunk in words[ids].reshape(15_000, 13)]
        text = " \n = Heading = \n \n".join(["".join(lines[i:i + 50]) for i in range(0, len(lines),
                                                                                   50)])
        f.write(text)
        written += len(text)


def main(argv):
  del argv
  directory = _DIR.value
  if not os.path.exists(os.path.join(directory, "wiki.train.tokens")):
    write_corpus(directory, _MEGABYTES.value)
  cache = os.path.join(directory, "fwp-cache", "meta.json")
  if os.path.exists(cache):
    os.remove(cache)
  size = os.path.getsize(os.path.join(directory, "wiki.train.tokens")) / 2 ** 20
  start = time.time()
  corpus = text_data.load("wikitext103", "word", directory)
  first = time.time() - start
  start = time.time()
  text_data.load("wikitext103", "word", directory)
  cached = time.time() - start
  print(f"wiki.train.tokens {size:.0f} MB, {len(corpus.splits['train']):,} tokens, vocabulary "
        f"{corpus.vocab.size:,}: tokenising {first:.0f} s; cached reload {cached:.2f} s")


if __name__ == "__main__":
  app.run(main)
