"""Times a loader's first (tokenising) and later (cached) loads on a synthetic corpus of the
real one's size and format, for machines without the data.

  python -m experiments.studies.bench_tokenize --megabytes=540 --dir=/tmp/wt103-synthetic
  python -m experiments.studies.bench_tokenize --corpus=wmt14 --pairs=4500000 \
      --dir=/tmp/wmt14-synthetic

wikitext103: the training file has Zipf-distributed words from a 267k-word vocabulary
(WikiText-103's size), ~13 words per line with blank and " = Heading = " lines as in the real
file; valid and test are 0.2% of it each.
wmt14: train.{en,de} of --pairs sentence pairs (WMT14 En-De: ~4.5M pairs, ~26 words a sentence
on average, ~1.4 GB of text), each side Zipf-distributed pseudo-words (random letters, shorter
words commoner, a 500k-word vocabulary per language) with punctuation, lengths 1-100 words;
newstest2013 / 2014 of 3,000 pairs; then the joint 32K BPE is trained and every split tokenised
(experiments.tasks.translation.data.load with configs/wmt14.py). BPE's work depends on the text's
statistics, so the real corpus's time may differ; the memory and the scaling are the point.
Prints seconds for tokenising and for the cached reload, and the peak memory.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
from absl import app, flags

from experiments.tasks.language_model import text_data

_CORPUS = flags.DEFINE_enum("corpus", "wikitext103", ["wikitext103", "wmt14"],
                            "Which loader to time.")
_MEGABYTES = flags.DEFINE_integer("megabytes", 540, "wikitext103: size of wiki.train.tokens.")
_PAIRS = flags.DEFINE_integer("pairs", 4_500_000, "wmt14: training sentence pairs.")
_DIR = flags.DEFINE_string("dir", None, "Where to write the corpus (default /tmp/<corpus>-"
                           "synthetic).")
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


def _pseudo_words(rng, size: int) -> np.ndarray:
  """`size` pseudo-words by frequency rank: random letters, ~3 long for the commonest, ~9 at
  rank 100k (as English words by type)."""
  letters = np.asarray(list("eeeeeeaaaaiiiinnnnssssrrrttttoooohhllddcuumgbfwkpvzyjxq"))
  mean = 3 + 1.2 * np.log10(np.arange(1, size + 1))
  lengths = np.clip(np.rint(rng.normal(mean, 1.5)), 1, 20).astype(int)
  chars = letters[rng.integers(0, len(letters), int(lengths.sum()))]
  bounds = np.concatenate([[0], np.cumsum(lengths)])
  text = "".join(chars)
  return np.asarray([text[bounds[i]:bounds[i + 1]] for i in range(size)], dtype=object)


def write_parallel(directory: str, pairs: int) -> None:
  rng = np.random.default_rng(0)
  vocab = {lang: _pseudo_words(rng, 500_000) for lang in ("en", "de")}
  zipf = 1 / (np.arange(500_000) + 2.7)                       # Zipf-Mandelbrot, exponent 1
  cdf = np.cumsum(zipf / zipf.sum())
  punctuation = np.asarray([",", ".", "'s", "(", ")", "-", ":", "\"", "1", "2010"], dtype=object)
  os.makedirs(directory, exist_ok=True)
  for prefix, size in (("train", pairs), ("newstest2013", 3000), ("newstest2014", 3000)):
    files_ = {lang: open(os.path.join(directory, f"{prefix}.{lang}"), "w") for lang in vocab}
    for begin in range(0, size, 50_000):
      count = min(50_000, size - begin)
      lengths = np.clip(rng.lognormal(3.05, 0.6, count).astype(int), 1, 100)
      for lang, f in files_.items():
        stretch = 1.0 if lang == "en" else 0.95
        ranks = np.searchsorted(cdf, rng.random(int(lengths.sum() * stretch) + count))
        words = vocab[lang][np.minimum(ranks, len(cdf) - 1)]
        words = np.where(rng.random(len(words)) < 0.08,
                         punctuation[rng.integers(0, len(punctuation), len(words))], words)
        bounds = np.concatenate([[0], np.cumsum((lengths * stretch).astype(int) + 1)])
        f.write("".join(" ".join(words[bounds[i]:bounds[i + 1]]).capitalize() + ".\n"
                        for i in range(count)))
    for f in files_.values():
      f.close()


def _first_and_cached(load, stale: str):
  """(what `load` returns, seconds of a first load with `stale` removed (the cache's meta file,
  or the whole cache directory), seconds of the cached reload after it)."""
  if os.path.isdir(stale):
    shutil.rmtree(stale)
  elif os.path.exists(stale):
    os.remove(stale)
  start = time.time()
  result = load()
  first = time.time() - start
  start = time.time()
  load()
  return result, first, time.time() - start


def _peak_gib() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def bench_wmt14(directory: str) -> None:
  from configs import wmt14
  from experiments.tasks.translation import data
  if not os.path.exists(os.path.join(directory, "newstest2014.de")):
    start = time.time()
    write_parallel(directory, _PAIRS.value)
    print(f"wrote the synthetic corpus in {time.time() - start:.0f} s")
  config = wmt14.get_config("standard")
  config.data_dir = directory
  size = sum(os.path.getsize(os.path.join(directory, f"train.{lang}")) for lang in ("en", "de"))
  corpus, first, cached = _first_and_cached(
      lambda: data.load(config),
      data._cache(config, directory, data.paths(directory, config)))
  peak = _peak_gib()
  train = corpus.splits["train"]
  print(f"train.en + train.de {size / 2 ** 20:,.0f} MB, {len(train.source):,} pairs, "
        f"{int(train.source.lengths.sum() + train.target.lengths.sum()):,} BPE tokens "
        f"({corpus.vocab_size:,} pieces, {os.cpu_count()} cores): BPE training + tokenising "
        f"{first:.0f} s, peak memory {peak:.1f} GiB; cached reload {cached:.2f} s")


def main(argv):
  del argv
  directory = _DIR.value or f"/tmp/{_CORPUS.value}-synthetic"
  if _CORPUS.value == "wmt14":
    return bench_wmt14(directory)
  if not os.path.exists(os.path.join(directory, "wiki.train.tokens")):
    write_corpus(directory, _MEGABYTES.value)
  size = os.path.getsize(os.path.join(directory, "wiki.train.tokens")) / 2 ** 20
  corpus, first, cached = _first_and_cached(
      lambda: text_data.load("wikitext103", "word", directory),
      os.path.join(directory, "fwp-cache", "meta.json"))
  print(f"wiki.train.tokens {size:.0f} MB, {len(corpus.splits['train']):,} tokens, vocabulary "
        f"{corpus.vocab.size:,}: tokenising {first:.0f} s; cached reload {cached:.2f} s")


if __name__ == "__main__":
  app.run(main)
