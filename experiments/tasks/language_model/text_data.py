"""Text corpora for language modelling: loading, vocabularies, batches and evaluation windows.

Corpora:
  wikitext103  the standard word-level files wiki.{train,valid,test}.tokens from `data_dir`
               (https://blog.salesforceairesearch.com/the-wikitext-long-term-dependency-language-
               modeling-dataset/ ; CC BY-SA 3.0). As Transformer-XL and the authors: split on
               whitespace, `<eos>` at every line end, the full vocabulary of the training split
               ordered by frequency (`<eos>` first), case kept. Token ids are cached as .npy files
               (memory-mapped) on first use, in config.cache_dir when set, else
               `<data_dir>/fwp-cache`, else $XDG_CACHE_HOME/fwp (~/.cache/fwp) when data_dir is
               read-only. The cache is checked on every open (sizes, lengths, id range) and
               rebuilt, saying why, when it does not match; a lock lets one process build it.
  pydoc        the "pydoc topics" text that ships with every CPython (pydoc_data.topics: the
               language reference's topics, ~465k characters of English and code; PSF licence),
               so a fresh machine has a real corpus without the internet. Split 90/5/5 at line
               boundaries; level "byte" (256 symbols, bits per byte) or "char" (the corpus's
               characters).

Batches and evaluation windows over the token streams are in `batches`.
"""

from __future__ import annotations

import array
import codecs
import collections
import dataclasses
import hashlib
import json
import os

import numpy as np

from experiments.progress import Progress
from experiments.tasks import files

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
    decoder = self.decoder()
    return decoder(ids) + decoder.flush()

  def decoder(self, continues: str = "") -> "StreamDecoder":
    """Text of ids given a few at a time (generation prints as it goes): the pieces joined equal
    `decode` of all the ids. Words after `continues` (a prompt) that ends mid-line get a space
    before them."""
    return StreamDecoder(self, line_start=not continues or continues.endswith(("\n", " ")))


class StreamDecoder:
  """Bytes through an incremental UTF-8 decoder (a character split over two tokens waits for its
  second half); words joined by spaces, `<eos>` a line end."""

  def __init__(self, vocab: Vocab, line_start: bool = True):
    self.vocab = vocab
    self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    self._line_start = line_start

  def __call__(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if self.vocab.level == "byte":
      return self._utf8.decode(bytes(ids))
    units = [self.vocab.symbols[i] for i in ids]
    if self.vocab.level == "char":
      return "".join(units)
    pieces = []
    for unit in units:
      if unit == EOS:
        pieces.append("\n")
        self._line_start = True
      else:
        pieces.append(unit if self._line_start else " " + unit)
        self._line_start = False
    return "".join(pieces)

  def flush(self) -> str:
    return self._utf8.decode(b"", final=True) if self.vocab.level == "byte" else ""


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
                       "docs/language_modelling.md for where to get them).")
    if not os.path.isdir(data_dir):
      raise ValueError(f"config.data_dir={data_dir!r} is not a directory.")
    for split in SPLITS:
      path = _split_path(data_dir, split)
      if not os.path.isfile(path):
        raise ValueError(f"Missing WikiText-103 file {path}: config.data_dir must hold "
                         f"wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens.")
      if os.path.getsize(path) == 0:
        raise ValueError(f"WikiText-103 file {path} is empty.")


def load(corpus: str, level: str, data_dir: str | None = None,
         cache_dir: str | None = None) -> Corpus:
  check(corpus, level, data_dir)
  if corpus == "pydoc":
    return _load_pydoc(level)
  return _load_wikitext(data_dir, cache_dir)


def identity(corpus: Corpus) -> dict:
  """What a run's config.json records of its data, so that a resume on other data is refused:
  the vocabulary's size and hash, and each split's length and a hash of its first and last
  million ids (cheap on a 100M-token split; any change of the text moves one of them)."""
  def digest(ids):
    ids = np.asarray(ids)
    h = hashlib.sha1(np.ascontiguousarray(ids[:1 << 20], np.int32).tobytes())
    h.update(np.ascontiguousarray(ids[-(1 << 20):], np.int32).tobytes())
    return h.hexdigest()[:16]
  vocab = hashlib.sha1("\n".join(corpus.vocab.symbols).encode()).hexdigest()[:16]
  return dict(corpus=corpus.name, level=corpus.vocab.level, vocab_size=corpus.vocab.size,
              vocab_sha1=vocab, **{f"{split}_length": int(len(corpus.splits[split]))
                                   for split in SPLITS},
              **{f"{split}_sha1": digest(corpus.splits[split]) for split in SPLITS})


# ---------------------------------------------------------------------------------------------
# WikiText-103

def _split_path(data_dir: str, split: str) -> str:
  return os.path.join(data_dir, f"wiki.{split}.tokens")


def cache_dir(data_dir: str, configured: str | None = None) -> str:
  """Where the token ids of `data_dir` are cached (files.data_cache)."""
  return files.data_cache(data_dir, configured, "wikitext103")


def _fingerprint(data_dir: str) -> dict:
  return {split: [os.path.getsize(p), os.path.getmtime(p)]
          for split in SPLITS for p in [_split_path(data_dir, split)]}


def _load_wikitext(data_dir: str, configured_cache: str | None = None) -> Corpus:
  cache = cache_dir(data_dir, configured_cache)
  meta_path = os.path.join(cache, "meta.json")
  fingerprint = _fingerprint(data_dir)
  with files.locked(cache):
    problem = "it is not built yet"
    if os.path.exists(meta_path):
      try:
        with open(meta_path) as f:
          meta = json.load(f)
        if meta.get("files") != fingerprint:
          problem = "the source files changed"
        else:
          corpus = _open_cached(cache, meta)
          return corpus
      except (ValueError, OSError, KeyError, TypeError) as error:
        named = isinstance(error, _Named) or getattr(error, "filename", None)
        problem = str(error) if named else f"{meta_path}: {error}"
      print(f"The token cache in {cache} does not match {data_dir} ({problem}); rebuilding it.",
            flush=True)
    else:
      print(f"Tokenising {data_dir} into {cache} (once; later runs read the cache).", flush=True)
    lengths, vocab_size = tokenize_wikitext(data_dir, cache)
    meta = dict(files=fingerprint, lengths=lengths, vocab_size=vocab_size)
    tmp = f"{meta_path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(meta, f)
    os.replace(tmp, meta_path)
    return _open_cached(cache, meta)


class _Named(ValueError):
  """A cache file's error that already names the file."""


def _open_cached(cache: str, meta: dict) -> Corpus:
  """The cached corpus, checked against meta.json: the vocabulary's size, each split's length,
  dtype and id range. Any mismatch raises ValueError saying what (the caller rebuilds)."""
  with open(os.path.join(cache, "vocab.txt"), encoding="utf-8") as f:
    symbols = tuple(line.rstrip("\n") for line in f)
  if len(symbols) != meta["vocab_size"]:
    raise _Named(f"vocab.txt has {len(symbols)} symbols, meta.json says "
                     f"{meta['vocab_size']}")
  splits = {}
  for split in SPLITS:
    path = os.path.join(cache, f"{split}.npy")
    try:
      ids = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
      raise _Named(f"{path}: {error}") from None
    if ids.dtype != np.int32 or ids.shape != (meta["lengths"][split],):
      raise _Named(f"{split}.npy holds {ids.dtype} {ids.shape}, meta.json says int32 "
                       f"({meta['lengths'][split]},)")
    if len(ids) and not 0 <= int(ids.min()) <= int(ids.max()) < len(symbols):
      raise _Named(f"{split}.npy holds ids outside the vocabulary 0..{len(symbols) - 1}")
    splits[split] = ids
  return Corpus("wikitext103", Vocab("word", symbols), splits)


def _read_lines(path: str):
  """(number, line) of a UTF-8 text file; a byte sequence that is not UTF-8 is reported with
  the file and the line it is on."""
  meter = Progress(f"tokenising {os.path.basename(path)}: bytes", os.path.getsize(path))
  with open(path, encoding="utf-8") as f:
    try:
      for number, line in enumerate(f, 1):
        if not number & 0xFFFF:           # a cheap test per line; the meter prints every ~10 s
          meter.update(f.buffer.tell())
        yield number, line
    except UnicodeDecodeError as error:
      with open(path, "rb") as raw:
        number = next((n for n, line in enumerate(raw, 1)
                       if not _decodes(line)), "?")
      raise ValueError(f"{path} line {number} is not UTF-8 ({error.reason}: byte "
                       f"{error.object[error.start:error.start + 1]!r}); WikiText-103 files are "
                       f"UTF-8 text.") from None


def _decodes(line: bytes) -> bool:
  try:
    line.decode("utf-8")
    return True
  except UnicodeDecodeError:
    return False


def tokenize_wikitext(data_dir: str, cache: str) -> tuple[dict, int]:
  """One pass over each file. Ids are first assigned in order of appearance (a dict lookup per
  token, the cheapest Python can do), then renumbered by frequency, as Transformer-XL orders
  its vocabulary (Counter.most_common: ties in order of first appearance). Returns each split's
  length and the vocabulary size."""
  first_seen = collections.defaultdict()
  first_seen.default_factory = first_seen.__len__
  first_seen[EOS]
  ids = array.array("i")
  for _, line in _read_lines(_split_path(data_dir, "train")):
    ids.extend(map(first_seen.__getitem__, _words(line)))
  train = np.frombuffer(ids, np.int32)
  counts = np.bincount(train, minlength=len(first_seen))
  # <eos> first (a special symbol), then by count, ties by first appearance.
  order = np.concatenate([[0], 1 + np.argsort(-counts[1:], kind="stable")])
  renumber = np.empty_like(order)
  renumber[order] = np.arange(len(order))
  by_first = list(first_seen)
  symbols = [by_first[i] for i in order]
  lengths = dict(train=_save(cache, "train", renumber[train].astype(np.int32)))
  index = {s: i for i, s in enumerate(symbols)}
  for split in ("valid", "test"):
    ids = array.array("i")
    for number, line in _read_lines(_split_path(data_dir, split)):
      words = _words(line)
      before = len(ids)
      try:
        ids.extend(map(index.__getitem__, words))
      except KeyError:
        del ids[before:]        # extend stops at the unknown word, keeping the ones before it
        if UNK not in index:
          missing = next(w for w in words if w not in index)
          raise ValueError(f"{_split_path(data_dir, split)} line {number}: token {missing!r} "
                           f"is not in the training vocabulary, which has no {UNK}.") from None
        ids.extend(index.get(w, index[UNK]) for w in words)
    lengths[split] = _save(cache, split, np.frombuffer(ids, np.int32))
  tmp = os.path.join(cache, f"vocab.txt.tmp-{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(s + "\n" for s in symbols)
  os.replace(tmp, os.path.join(cache, "vocab.txt"))
  return lengths, len(symbols)


def _save(cache: str, split: str, ids: np.ndarray) -> int:
  tmp = os.path.join(cache, f"{split}.tmp-{os.getpid()}.npy")   # per process, then renamed
  np.save(tmp, ids)
  os.replace(tmp, os.path.join(cache, f"{split}.npy"))
  return len(ids)


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
