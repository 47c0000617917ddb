"""Text corpora for language modelling: loading, vocabularies, batches and evaluation windows.

Corpora:
  wikitext103  the standard word-level files wiki.{train,valid,test}.tokens from `data_dir`
               (https://blog.salesforceairesearch.com/the-wikitext-long-term-dependency-language-
               modeling-dataset/ ; CC BY-SA 3.0). As Transformer-XL and the authors: split on
               whitespace, `<eos>` at every line end, the full vocabulary of the training split
               ordered by frequency (`<eos>` first), case kept. Token ids are cached as .npy files
               (memory-mapped) in `<data_dir>/fwp-cache` on first use, or ~/.cache/fwp when
               data_dir is read-only.
  pydoc        the "pydoc topics" text that ships with every CPython (pydoc_data.topics: the
               language reference's topics, ~465k characters of English and code; PSF licence),
               so a fresh machine has a real corpus without the internet. Split 90/5/5 at line
               boundaries; level "byte" (256 symbols, bits per byte) or "char" (the corpus's
               characters).

Batching, as the authors: the training stream is cut into `batch_size` contiguous streams, and
step s reads segment s mod N of each (inputs x[t], targets x[t + 1]), so every batch is a pure
function of the step and every token is an input in exactly one segment per epoch.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import hashlib
import json
import os

import numpy as np

CORPORA = ("wikitext103", "pydoc")
LEVELS = {"wikitext103": ("word",), "pydoc": ("byte", "char")}
SPLITS = ("train", "valid", "test")
EOS = "<eos>"
UNK = "<unk>"


@dataclasses.dataclass(frozen=True)
class Vocab:
  level: str                                  # word | char | byte
  symbols: tuple[str, ...] = ()               # empty for bytes

  @property
  def size(self) -> int:
    return 256 if self.level == "byte" else len(self.symbols)

  def encode(self, text: str) -> np.ndarray:
    if self.level == "byte":
      return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
    index = {s: i for i, s in enumerate(self.symbols)}
    if self.level == "char":
      units = list(text)
    else:   # every finished line ends in <eos>; an unfinished last line (a prompt) does not
      *lines, last = text.split("\n")
      units = [u for line in lines for u in _words(line)] + last.split()
    unknown = sorted({u for u in units if u not in index})
    if unknown and UNK not in index:
      raise ValueError(f"These symbols are not in the vocabulary: {unknown[:10]}.")
    return np.asarray([index.get(u, index.get(UNK, 0)) for u in units], np.int32)

  def decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if self.level == "byte":
      return bytes(ids).decode("utf-8", errors="replace")
    units = [self.symbols[i] for i in ids]
    if self.level == "char":
      return "".join(units)
    lines, line = [], []
    for unit in units:
      if unit == EOS:
        lines.append(" ".join(line) + "\n")
        line = []
      else:
        line.append(unit)
    return "".join(lines) + " ".join(line)


@dataclasses.dataclass(frozen=True)
class Corpus:
  name: str
  vocab: Vocab
  splits: dict          # split -> int32 array (memory-mapped for cached corpora)

  @property
  def unit(self) -> str:
    return {"word": "token", "char": "character", "byte": "byte"}[self.vocab.level]


def _words(line: str) -> list[str]:
  return line.split() + [EOS]


def check(corpus: str, level: str, data_dir: str | None) -> None:
  """The errors that need no reading: unknown names, a missing directory or split file."""
  if corpus not in CORPORA:
    raise ValueError(f"Unknown corpus {corpus!r}; valid choices: {', '.join(CORPORA)}.")
  if level not in LEVELS[corpus]:
    raise ValueError(f"The {corpus} corpus has no {level!r} level; valid choices: "
                     f"{', '.join(LEVELS[corpus])}.")
  if corpus == "wikitext103":
    if not data_dir:
      raise ValueError("The wikitext103 corpus needs config.data_dir: a directory holding "
                       "wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens (see the "
                       "README's Language modelling section for where to get them).")
    if not os.path.isdir(data_dir):
      raise ValueError(f"config.data_dir={data_dir!r} is not a directory.")
    for split in SPLITS:
      path = _split_path(data_dir, split)
      if not os.path.isfile(path):
        raise ValueError(f"Missing WikiText-103 file {path}: config.data_dir must hold "
                         f"wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens.")
      if os.path.getsize(path) == 0:
        raise ValueError(f"WikiText-103 file {path} is empty.")


def load(corpus: str, level: str, data_dir: str | None = None) -> Corpus:
  check(corpus, level, data_dir)
  if corpus == "pydoc":
    return _load_pydoc(level)
  return _load_wikitext(data_dir)


# ---------------------------------------------------------------------------------------------
# WikiText-103

def _split_path(data_dir: str, split: str) -> str:
  return os.path.join(data_dir, f"wiki.{split}.tokens")


def _cache_dir(data_dir: str) -> str:
  preferred = os.path.join(data_dir, "fwp-cache")
  try:
    os.makedirs(preferred, exist_ok=True)
    probe = os.path.join(preferred, ".write-test")
    with open(probe, "w"):
      pass
    os.remove(probe)
    return preferred
  except OSError:
    digest = hashlib.sha1(os.path.abspath(data_dir).encode()).hexdigest()[:12]
    fallback = os.path.join(os.path.expanduser("~"), ".cache", "fwp", f"wikitext103-{digest}")
    os.makedirs(fallback, exist_ok=True)
    return fallback


def _fingerprint(data_dir: str) -> dict:
  return {split: [os.path.getsize(p), os.path.getmtime(p)]
          for split in SPLITS for p in [_split_path(data_dir, split)]}


def _load_wikitext(data_dir: str) -> Corpus:
  cache = _cache_dir(data_dir)
  meta_path = os.path.join(cache, "meta.json")
  fingerprint = _fingerprint(data_dir)
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
    if meta.get("files") == fingerprint:
      return _open_cached(cache)
  tokenize_wikitext(data_dir, cache)
  with open(meta_path + ".tmp", "w") as f:
    json.dump(dict(files=fingerprint), f)
  os.replace(meta_path + ".tmp", meta_path)
  return _open_cached(cache)


def _open_cached(cache: str) -> Corpus:
  with open(os.path.join(cache, "vocab.txt"), encoding="utf-8") as f:
    symbols = tuple(line.rstrip("\n") for line in f)
  splits = {s: np.load(os.path.join(cache, f"{s}.npy"), mmap_mode="r") for s in SPLITS}
  return Corpus("wikitext103", Vocab("word", symbols), splits)


def tokenize_wikitext(data_dir: str, cache: str) -> None:
  """One pass over each file. Ids are first assigned in order of appearance (a dict lookup per
  token, the cheapest Python can do), then renumbered by frequency, as Transformer-XL orders
  its vocabulary (Counter.most_common: ties in order of first appearance)."""
  first_seen = collections.defaultdict()
  first_seen.default_factory = first_seen.__len__
  first_seen[EOS]
  ids = array.array("i")
  with open(_split_path(data_dir, "train"), encoding="utf-8") as f:
    for line in f:
      ids.extend(map(first_seen.__getitem__, _words(line)))
  train = np.frombuffer(ids, np.int32)
  counts = np.bincount(train, minlength=len(first_seen))
  # <eos> first (a special symbol), then by count, ties by first appearance.
  order = np.concatenate([[0], 1 + np.argsort(-counts[1:], kind="stable")])
  renumber = np.empty_like(order)
  renumber[order] = np.arange(len(order))
  by_first = list(first_seen)
  symbols = [by_first[i] for i in order]
  _save(cache, "train", renumber[train].astype(np.int32))
  index = {s: i for i, s in enumerate(symbols)}
  for split in ("valid", "test"):
    ids = array.array("i")
    with open(_split_path(data_dir, split), encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        words = _words(line)
        try:
          ids.extend(map(index.__getitem__, words))
        except KeyError:
          if UNK not in index:
            missing = next(w for w in words if w not in index)
            raise ValueError(f"{_split_path(data_dir, split)} line {number}: token {missing!r} "
                             f"is not in the training vocabulary, which has no {UNK}.") from None
          ids.extend(index.get(w, index[UNK]) for w in words)
    _save(cache, split, np.frombuffer(ids, np.int32))
  with open(os.path.join(cache, "vocab.txt"), "w", encoding="utf-8") as f:
    f.writelines(s + "\n" for s in symbols)


def _save(cache: str, split: str, ids: np.ndarray) -> None:
  tmp = os.path.join(cache, f"{split}.tmp.npy")
  np.save(tmp, ids)
  os.replace(tmp, os.path.join(cache, f"{split}.npy"))


# ---------------------------------------------------------------------------------------------
# pydoc topics

def pydoc_text() -> str:
  from pydoc_data import topics
  return "\n".join(topics.topics[k] for k in sorted(topics.topics))


def _load_pydoc(level: str) -> Corpus:
  text = pydoc_text()
  cut1 = text.index("\n", int(0.90 * len(text))) + 1
  cut2 = text.index("\n", int(0.95 * len(text))) + 1
  parts = dict(train=text[:cut1], valid=text[cut1:cut2], test=text[cut2:])
  # Characters: the whole corpus's alphabet (a fixed text, so nothing is unknown at test time).
  vocab = Vocab(level, tuple(sorted(set(text))) if level == "char" else ())
  return Corpus("pydoc", vocab, {k: vocab.encode(v) for k, v in parts.items()})


# ---------------------------------------------------------------------------------------------
# Batches and evaluation windows

def num_segments(stream_length: int, batch_size: int, context: int) -> int:
  return (stream_length // batch_size - 1) // context


def train_batch(stream: np.ndarray, step: int, batch_size: int, context: int) -> dict:
  """{inputs, targets [batch_size, context]}: segment (step mod N) of each contiguous stream."""
  per_stream = len(stream) // batch_size
  n = num_segments(len(stream), batch_size, context)
  if n < 1:
    raise ValueError(f"The training split ({len(stream)} tokens) is too short for batch_size "
                     f"{batch_size} × context {context} + 1.")
  start = (step % n) * context
  rows = stream[:per_stream * batch_size].reshape(batch_size, per_stream)   # a view, no copy
  block = np.asarray(rows[:, start:start + context + 1], np.int32)
  return dict(inputs=block[:, :-1], targets=block[:, 1:])


def window_ends(length: int, context: int, stride: int) -> np.ndarray:
  """Exclusive ends e_k of the target positions scored by each window: the first window scores
  targets 1..min(context, N−1), each next one the `stride` after (the last one fewer)."""
  last = length - 1
  first = min(context, last)
  return np.concatenate([[first], np.arange(first + stride, last + stride, stride)]).clip(
      max=last).astype(np.int64) if last > first else np.asarray([first], np.int64)


def eval_windows(stream: np.ndarray, context: int, stride: int, batch_size: int):
  """Yields {inputs, targets, mask [batch_size, context]}: every target position 1..N−1 scored
  exactly once, each with at least context − stride tokens before it (stride = context: the
  plain non-overlapping evaluation; stride = 1: the authors' sliding window). Short batches are
  padded with masked windows so every batch has one shape (one compile)."""
  if len(stream) < 2:
    raise ValueError(f"An evaluation split needs at least 2 tokens, got {len(stream)}.")
  if not 1 <= stride <= context:
    raise ValueError(f"The evaluation stride must be in 1..context ({context}), got {stride}.")
  ends = window_ends(len(stream), context, stride)
  previous = np.concatenate([[0], ends[:-1]])
  for i in range(0, len(ends), batch_size):
    e, p = ends[i:i + batch_size], previous[i:i + batch_size]
    starts = np.maximum(e - context, 0)
    offsets = np.arange(context)
    positions = starts[:, None] + offsets                 # input positions
    valid = positions < e[:, None]
    target_pos = positions + 1
    mask = valid & (target_pos > p[:, None])
    inputs = np.asarray(stream[np.minimum(positions, len(stream) - 1)], np.int32)
    targets = np.asarray(stream[np.minimum(target_pos, len(stream) - 1)], np.int32)
    pad = batch_size - len(e)
    if pad:
      inputs, targets, mask = (np.pad(a, ((0, pad), (0, 0))) for a in (inputs, targets, mask))
    yield dict(inputs=inputs, targets=targets, mask=mask.astype(np.float32))
