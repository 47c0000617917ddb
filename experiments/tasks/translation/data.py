"""Parallel text for translation: files, a joint SentencePiece BPE vocabulary, token caches,
and batches by length.

Corpora (config.corpus):
  wmt14     plain parallel text files in config.data_dir, one sentence per line, untokenised:
            <prefix>.<lang> for the prefixes config.train_prefix / valid_prefix / test_prefix
            (the paper's setup: train = Europarl v7 + Common Crawl + News Commentary v9, valid =
            newstest2013, test = newstest2014; docs/translation.md says where to get them)
  catalogs  Debian's English→German message catalogs, extracted on first use into the cache
            (experiments.tasks.translation.catalogs), written as the same files

Vocabulary: one SentencePiece BPE model (config.vocab_size pieces, character coverage 1.0) trained
on the training text of both languages (a joint vocabulary, as the paper's shared 32K BPE with
fairseq's --share-all-embeddings); pad 0, unk 1, EOS 2 (also the decoder's first input). It is
trained once and cached with the token ids of every split (int32 .npy, memory-mapped) beside the
corpus (catalogs) or in data_dir/fwp-cache (else the user cache; config.cache_dir overrides). A
cache is named by a hash of the files' bytes and the options (content-addressed), built in a
temporary and renamed into place, and never rewritten: other text gets a cache of its own.

Sentences: a side is its pieces + EOS. A pair with an empty side is dropped (counted); a training
pair with a side longer than config.max_length tokens is dropped (counted, printed: not a crash);
valid and test keep every pair (their BLEU is over the whole set).

Batches (fairseq's --max-tokens, as the flax WMT example buckets): a pair's length is its longer
side, rounded up to a multiple of config.bucket_width; a batch holds pairs of one length, as many
rows as config.max_tokens allows (a multiple of the data devices), or config.batch_size rows when
max_tokens is 0, every row padded to that length (so a run compiles one step per length). Each
epoch shuffles the pairs of each length and the order of the batches with (seed, epoch); a
length's last batch is filled with empty rows, so every epoch has the same number of batches and
the batch of step s is a pure function of (seed, s): resume is exact.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import math
import os
import sys
import time

import numpy as np

from experiments.tasks import files
from experiments.tasks.translation import catalogs

CORPORA = ("catalogs", "wmt14")
SPLITS = ("train", "valid", "test")
PAD, UNK, EOS = 0, 1, 2
TOKENIZER_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Side:
  """One language of one split: token ids (EOS-terminated sentences, concatenated) and the
  offsets of each sentence in them."""
  ids: np.ndarray
  offsets: np.ndarray

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def sentence(self, i: int) -> np.ndarray:
    return self.ids[self.offsets[i]:self.offsets[i + 1]]

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)


@dataclasses.dataclass(frozen=True)
class Split:
  source: Side
  target: Side
  references: tuple[str, ...]      # the target text, as read (BLEU's references; empty for
  #                                  train, whose text is read only to build the cache)


@dataclasses.dataclass
class Corpus:
  directory: str
  splits: dict
  tokenizer: object                # sentencepiece.SentencePieceProcessor
  identity: dict                   # what the run records to name its data
  dropped: dict                    # {split: {"empty": n, "too_long": n}}

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_piece_size()

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.tokenizer.encode(text) + [EOS], np.int32)

  def decode(self, ids) -> str:
    ids = [int(i) for i in ids]
    if EOS in ids:
      ids = ids[:ids.index(EOS)]
    return self.tokenizer.decode([i for i in ids if i != PAD])


# --- Where the text is ------------------------------------------------------------------------

def split_prefix(config, split: str) -> str:
  return config[f"{split}_prefix"]


def text_directory(config) -> str:
  """The directory of {prefix}.{lang} files: data_dir, or the catalog corpus (built on first
  use)."""
  if config.corpus == "catalogs":
    packages = tuple(p.strip() for p in config.catalog_packages.split(",") if p.strip())
    return _catalog_corpus(packages, config.cache_dir)
  return config.data_dir


@functools.lru_cache(maxsize=4)
def _catalog_corpus(packages: tuple[str, ...], cache: str) -> str:
  """catalogs.build, once a process (a launch asks for the corpus's identity, then its text)."""
  return catalogs.build(packages, cache)


def check(config) -> None:
  """The corpus fields, before anything is read (the files themselves in `paths`)."""
  if config.corpus not in CORPORA:
    raise ValueError(f"Unknown config.corpus {config.corpus!r}; valid choices: "
                     f"{', '.join(CORPORA)}.")
  if config.corpus == "wmt14":
    if not config.data_dir:
      raise ValueError("corpus=wmt14 reads parallel text files from config.data_dir: give "
                       "--config.data_dir=DIR holding train.en/train.de, ... (docs/"
                       "translation.md says where to get them).")
    if not os.path.isdir(config.data_dir):
      raise ValueError(f"config.data_dir={config.data_dir!r} is not a directory.")
  if (config.source_lang, config.target_lang) != ("en", "de") and config.corpus == "catalogs":
    raise ValueError(f"The catalog corpus is English→German; got source_lang="
                     f"{config.source_lang!r}, target_lang={config.target_lang!r}.")
  if config.source_lang == config.target_lang:
    raise ValueError(f"source_lang and target_lang are both {config.source_lang!r}.")


def paths(directory: str, config) -> dict[str, tuple[str, str]]:
  """{split: (source file, target file)}, every file checked to exist."""
  out = {}
  for split in SPLITS:
    pair = tuple(os.path.join(directory, f"{split_prefix(config, split)}.{lang}")
                 for lang in (config.source_lang, config.target_lang))
    for path in pair:
      if not os.path.isfile(path):
        raise ValueError(f"The {split} split's file {path} does not exist (config."
                         f"{split}_prefix={split_prefix(config, split)!r}, languages "
                         f"{config.source_lang}/{config.target_lang}).")
    out[split] = pair
  return out


def read_lines(path: str) -> list[str]:
  with open(path, "rb") as f:
    data = f.read()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as error:
    line = data[:error.start].count(b"\n") + 1
    raise ValueError(f"{path} line {line} is not UTF-8.") from None
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  return [line.rstrip("\r") for line in lines]


def read_pairs(source: str, target: str) -> tuple[list[str], list[str], int]:
  """The two files' lines, checked to pair up; pairs with an empty side dropped (counted)."""
  src, tgt = read_lines(source), read_lines(target)
  if len(src) != len(tgt):
    raise ValueError(f"Parallel files differ in length: {source} has {len(src):,} lines, "
                     f"{target} has {len(tgt):,}.")
  kept = [(s.strip(), t.strip()) for s, t in zip(src, tgt) if s.strip() and t.strip()]
  return [s for s, _ in kept], [t for _, t in kept], len(src) - len(kept)


def content(files_: dict) -> dict:
  """{'train.0': sha256 of the training source file, ...}: what the text is, not its name."""
  hashes = files.content_hashes(p for pair in files_.values() for p in pair)
  return {f"{split}.{i}": hashes[p] for split, pair in files_.items() for i, p in enumerate(pair)}


# --- The tokenizer and the token cache ---------------------------------------------------------

def _cache(config, directory: str, files_: dict) -> str:
  """The token cache of this text under these options, content-addressed: its name ends in a
  hash of every input file's bytes, the vocabulary size and the tokenizer's version, so other
  text (another train_prefix, an edited file, another data_dir sharing a cache_dir) gets a cache
  of its own and never rewrites one that a run may be reading."""
  key = hashlib.sha256(json.dumps(dict(files=content(files_), vocab_size=config.vocab_size,
                                       version=TOKENIZER_VERSION),
                                  sort_keys=True).encode()).hexdigest()[:16]
  name = f"spm{config.vocab_size}-{config.source_lang}{config.target_lang}-{key}"
  if config.corpus == "catalogs":
    return os.path.join(directory, name)
  return os.path.join(files.data_cache(directory, config.cache_dir, "wmt14"), name)


def _train_tokenizer(sources: list[str], targets: list[str], prefix: str,
                     vocab_size: int) -> None:
  import sentencepiece as spm
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sources + targets), model_prefix=prefix, vocab_size=vocab_size,
        model_type="bpe", character_coverage=1.0, pad_id=PAD, unk_id=UNK, eos_id=EOS,
        bos_id=-1, input_sentence_size=4_000_000, shuffle_input_sentence=True,
        num_threads=os.cpu_count(), minloglevel=2)
  except RuntimeError as error:       # e.g. "Vocabulary size too high (8000). Please set it
    raise ValueError(f"SentencePiece cannot make a {vocab_size}-piece vocabulary of this "
                     f"training text ({error}); set config.vocab_size to fit.") from None


def _save_side(cache: str, name: str, tokenizer, sentences: list[str],
               chunk: int = 100_000) -> None:
  """Tokenises `sentences` a chunk at a time into one int32 array of pieces + EOS per sentence
  (a Python list of every sentence's ids would hold WMT14's ~150M ids as ~5 GB of ints)."""
  ids, lengths = [], []
  for begin in range(0, len(sentences), chunk):
    pieces = tokenizer.encode(sentences[begin:begin + chunk])
    sizes = np.fromiter((len(p) + 1 for p in pieces), np.int64, len(pieces))
    flat = np.full(int(sizes.sum()), EOS, np.int32)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for start, p in zip(starts, pieces):
      flat[start:start + len(p)] = p
    ids.append(flat)
    lengths.append(sizes)
  lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  np.save(os.path.join(cache, f"{name}.ids.npy"),
          np.concatenate(ids) if ids else np.zeros(0, np.int32))
  np.save(os.path.join(cache, f"{name}.offsets.npy"), offsets)


def _load_side(cache: str, name: str, vocab_size: int) -> Side:
  """One side's ids (memory-mapped) and offsets, checked: int32 ids inside the vocabulary, as
  many as the offsets say. A ValueError names the file and what is wrong with it."""
  paths = [os.path.join(cache, f"{name}.{part}.npy") for part in ("ids", "offsets")]
  arrays = []
  for path in paths:
    try:
      arrays.append(np.load(path, mmap_mode="r" if path == paths[0] else None,
                            allow_pickle=False))
    except (ValueError, OSError, EOFError) as error:
      raise ValueError(f"{path}: {error}") from None
  ids, offsets = arrays
  if ids.dtype != np.int32 or ids.ndim != 1 or offsets.ndim != 1 or not len(offsets) or \
      int(offsets[-1]) != len(ids) or int(offsets[0]) != 0:
    raise ValueError(f"{paths[0]} holds {ids.dtype} {ids.shape} where its offsets say int32 "
                     f"({int(offsets[-1]) if len(offsets) else '?'},)")
  if len(ids) and not 0 <= int(ids.min()) <= int(ids.max()) < vocab_size:
    raise ValueError(f"{paths[0]} holds ids outside the vocabulary 0..{vocab_size - 1}")
  return Side(ids, offsets)


def _open_cache(cache: str, vocab_size: int):
  """(meta.json, the tokenizer, {split: (source side, target side)}) of a built cache; a
  ValueError (or OSError) names the file that does not read or does not fit."""
  import sentencepiece as spm
  path = os.path.join(cache, "meta.json")
  try:
    with open(path) as f:
      stored = json.load(f)
    stored["empty"][SPLITS[0]]     # noqa: B018 - a meta.json without its counts is not whole
  except (ValueError, KeyError, TypeError) as error:
    raise ValueError(f"{path}: {type(error).__name__}: {error}") from None
  model = os.path.join(cache, "bpe.model")
  try:
    tokenizer = spm.SentencePieceProcessor(model_file=model)
  except (OSError, RuntimeError) as error:
    raise ValueError(f"{model}: {error}") from None
  if tokenizer.get_piece_size() != vocab_size:
    raise ValueError(f"{model} has {tokenizer.get_piece_size()} pieces, not {vocab_size}")
  sides = {split: tuple(_load_side(cache, f"{split}.{side}", vocab_size)
                        for side in ("src", "tgt")) for split in SPLITS}
  return stored, tokenizer, sides


def _read_split(files_: dict, split: str) -> tuple[list[str], list[str], int]:
  src, tgt, empty = read_pairs(*files_[split])
  if not src:
    raise ValueError(f"The {split} split ({files_[split][0]}) holds no sentence pair.")
  return src, tgt, empty


def load(config) -> Corpus:
  """The corpus of `config`: text read, the tokenizer trained and every split tokenised on
  first use into a cache of its own (`_cache`: built in a temporary, renamed into place, never
  rewritten), read from the cache afterwards (the training text is then not read again: only
  valid and test, whose lines are BLEU's references)."""
  import sentencepiece as spm
  check(config)
  directory = text_directory(config)
  files_ = paths(directory, config)
  cache = _cache(config, directory, files_)
  root = os.path.dirname(cache)
  os.makedirs(root, exist_ok=True)
  text = {}
  with files.locked(root, f".{os.path.basename(cache)}.lock"):
    opened = None
    if os.path.isdir(cache):
      try:
        opened = _open_cache(cache, config.vocab_size)
      except (ValueError, OSError, EOFError, KeyError, TypeError) as error:
        aside = f"{cache}.damaged-{int(time.time())}"
        print(f"The token cache {cache} is damaged ({error}); moved to {aside} (a run "
              f"reading it keeps its files) and built again.", file=sys.stderr, flush=True)
        os.replace(cache, aside)
    if opened is None:
      others = [p for p in glob.glob(cache.rsplit("-", 1)[0] + "-*")
                if os.path.isdir(p) and ".tmp-" not in p]
      print(f"Training the {config.vocab_size}-piece BPE vocabulary and tokenising {directory} "
            f"into {cache} (once" + (f"; the text differs from that of the {len(others)} "
                                     f"cache(s) beside it, which are kept: a run may be reading "
                                     f"them" if others else "") + ").",
            file=sys.stderr, flush=True)
      text = {split: _read_split(files_, split) for split in SPLITS}

      def build(temporary):
        src, tgt, _ = text["train"]
        _train_tokenizer(src, tgt, os.path.join(temporary, "bpe"), config.vocab_size)
        tokenizer = spm.SentencePieceProcessor(model_file=os.path.join(temporary, "bpe.model"))
        for split, (src, tgt, _) in text.items():
          _save_side(temporary, f"{split}.src", tokenizer, src)
          _save_side(temporary, f"{split}.tgt", tokenizer, tgt)
        with open(os.path.join(temporary, "meta.json"), "w") as f:
          json.dump(dict(files=content(files_), vocab_size=config.vocab_size,
                         version=TOKENIZER_VERSION,
                         empty={split: text[split][2] for split in SPLITS}), f)

      files.build_whole(cache, build)
      opened = _open_cache(cache, config.vocab_size)
  stored, tokenizer, sides = opened
  splits = {}
  for split in SPLITS:
    references = ()
    if split != "train":
      references = tuple((text.get(split) or _read_split(files_, split))[1])
    splits[split] = Split(*sides[split], references)
  dropped = {split: {"empty": stored["empty"][split]} for split in SPLITS}
  return Corpus(directory, splits, tokenizer, identity(config, directory, files_), dropped)


def identity(config, directory: str, files_: dict) -> dict:
  """What names the data: the catalog corpus's hash and packages, or the files' sizes and
  content hashes (a resume on other text of the same size is refused)."""
  if config.corpus == "catalogs":
    meta = catalogs.meta(directory)
    return dict(corpus="catalogs", corpus_sha256=meta["corpus_sha256"],
                packages=meta["packages"], pairs=meta["pairs"])
  hashes = files.content_hashes(p for pair in files_.values() for p in pair)
  return dict(corpus=config.corpus,
              bytes={split: [os.path.getsize(p) for p in pair] for split, pair in files_.items()},
              sha256={split: [hashes[p] for p in pair] for split, pair in files_.items()})


# --- Batches -----------------------------------------------------------------------------------

def bucket_length(length, width: int):
  return -(-np.asarray(length) // width) * width


def rows_for(length: int, max_tokens: int, batch_size: int, multiple: int) -> int:
  """Rows of a batch of `length`-token pairs: as many as max_tokens allows, rounded down to a
  multiple of `multiple` (the data devices) and at least that; batch_size when max_tokens is 0."""
  if not max_tokens:
    return batch_size
  return max(multiple, (max_tokens // length) // multiple * multiple)


def pair_lengths(split: Split) -> np.ndarray:
  return np.maximum(split.source.lengths, split.target.lengths)


@dataclasses.dataclass(frozen=True, eq=False)
class Batching:
  """The training batches of one run: which pairs (indices) each length's batches hold."""
  split: Split
  seed: int
  width: int
  max_length: int
  max_tokens: int
  batch_size: int
  multiple: int = 1

  @functools.cached_property
  def kept(self) -> np.ndarray:
    return np.flatnonzero(pair_lengths(self.split) <= self.max_length)

  @functools.cached_property
  def by_length(self) -> dict[int, np.ndarray]:
    buckets = bucket_length(pair_lengths(self.split)[self.kept], self.width)
    return {int(b): self.kept[buckets == b] for b in np.unique(buckets)}

  @functools.cached_property
  def batches_per_epoch(self) -> int:
    return sum(math.ceil(len(ids) / self.rows(length)) for length, ids in self.by_length.items())

  def rows(self, length: int) -> int:
    return rows_for(length, self.max_tokens, self.batch_size, self.multiple)

  @functools.lru_cache(maxsize=2)
  def epoch(self, epoch: int) -> list[tuple[int, np.ndarray]]:
    """[(length, pair indices, -1 for an empty row)] of one epoch, in its order."""
    rng = np.random.default_rng([self.seed, epoch])
    out = []
    for length, ids in self.by_length.items():
      rows = self.rows(length)
      shuffled = rng.permutation(ids)
      filled = np.full(math.ceil(len(ids) / rows) * rows, -1, np.int64)
      filled[:len(ids)] = shuffled
      out += [(length, chunk) for chunk in filled.reshape(-1, rows)]
    return [out[i] for i in rng.permutation(len(out))]

  def batch(self, step: int) -> dict:
    epoch, index = divmod(step, self.batches_per_epoch)
    length, ids = self.epoch(epoch)[index]
    return make_batch(self.split, ids, length)


def make_batch(split: Split, ids, length: int) -> dict:
  """src [R, length], tgt_in [R, length] (EOS, then the target), tgt_out [R, length] (the
  target, ending in EOS), padded with PAD; an index of -1 is an empty row."""
  rows = len(ids)
  src = np.full((rows, length), PAD, np.int32)
  tgt_in = np.full((rows, length), PAD, np.int32)
  tgt_out = np.full((rows, length), PAD, np.int32)
  for r, i in enumerate(ids):
    if i < 0:
      continue
    s, t = split.source.sentence(int(i)), split.target.sentence(int(i))
    src[r, :len(s)] = s
    tgt_out[r, :len(t)] = t
    tgt_in[r, 0] = EOS
    tgt_in[r, 1:len(t)] = t[:-1]
  return dict(src=src, tgt_in=tgt_in, tgt_out=tgt_out)


def eval_batches(split: Split, width: int, max_tokens: int, batch_size: int, multiple: int = 1,
                 limit: int = 0) -> list[tuple[np.ndarray, dict]]:
  """[(pair indices, batch)] covering the first `limit` pairs (0: all) of `split` once, pairs
  of one bucketed length per batch (empty rows fill the last of each)."""
  count = len(split.source) if not limit else min(limit, len(split.source))
  lengths = bucket_length(pair_lengths(split)[:count], width)
  out = []
  for length in np.unique(lengths):
    ids = np.flatnonzero(lengths == length)
    rows = rows_for(int(length), max_tokens, batch_size, multiple)
    for start in range(0, len(ids), rows):
      chunk = np.full(rows, -1, np.int64)
      chunk[:len(ids[start:start + rows])] = ids[start:start + rows]
      out.append((chunk, make_batch(split, chunk, int(length))))
  return out
