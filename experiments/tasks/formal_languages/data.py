"""Formal languages and state tracking: the strings, their per-position targets and the bins.

The eight languages of Irie, Csordás, Schmidhuber (EMNLP 2023; IDSIA/fwp-formal-lang), whose data
come from satwik77/Transformer-Formal-Languages (Bhattamishra et al. 2020). Each generator below
draws what that repository's generator draws (src/utils/*_generator.py, src/dataloader.py,
generate_data.py), with the same target at every position — the recognition task as their code
frames it, one class per position (fwp-formal-lang's main.py splits each target line on spaces and
builds a vocabulary of the tokens; a multi-character code such as Shuffle-2's `01` is one class):

  parity       bit strings in the language (even number of 1s; an odd draw gets a 1 appended);
               target 1 where the prefix has an even number of 1s, else 0
  aa-star      (aa)^n; target 1 where the prefix is in (aa)*
  abab-star    (abab)^n; target 1 where the prefix is in (abab)*
  counter-2    a^n b^n (n the window, not the length); target the next character the
  counter-3    language allows: `c` / `d` (a or b) over the a's, b over the b's but the last,
               c over the b's (counter-3), T (termination) at the end
  dyck-1       Dyck-1 from the grammar S -> (S) p | SS q | ε; target 1 where a `)` may follow
  shuffle-2    two bracket types from the same grammar (their ShuffleLanguage.generate is the
               Dyck-2 grammar); target the two-bit code of which types are open
  reset_dyck   a Dyck-1 prefix, the reset symbol 1, a Dyck-1 string; target 1 where a `)` may
               follow within the current segment

and the state-tracking tasks of the linear RNNs that followed (Grazzi et al., ICLR 2025; Siems
et al. 2025), uniformly random inputs with the running state as target:

  mod-2, mod-3, mod-5   bit strings; target the number of 1s so far modulo m (mod-2 is parity
                        as a state-tracking task, without parity's in-language condition)
  s3, s5                words of permutations of 3 or 5 elements (every one a token); target the
                        product of the prefix, as the index of the permutation

Lengths and sizes are those of satwik77's documented generation command (lower_window 2,
upper_window 50, training_size 10000, test_size 2000, len_incr 50): training strings of lengths
[2, 50] (counter-n: n in [2, 50]); Bin0 (`valid`) is drawn from the training window, Bin1
(`valid2`, the generalisation bin) from (50, 100] as generate_data.py sets it per language.

What is drawn from where. fwp's generators take a numpy Generator where the authors' take the
global `random` / `np.random` state, so a split is a pure function of (task, seed, split, size):
  - the languages whose authors' lists reject duplicates (parity, dyck-1, shuffle-2,
    reset_dyck) draw a split's strings from one stream, keeping the first of each string, so
    example i is a function of (seed, split, i) alone. parity and reset_dyck draw training and
    Bin0 strings from one stream and split it (train first), as generate_data.py does, so the
    two are disjoint (but for parity's strings made by the appended 1, which their list tests
    before it appends); dyck-1 and shuffle-2 draw them from two streams, as theirs (a short string
    may be in both);
  - aa-star, abab-star and counter-n have one string per length (or per n): training strings
    are drawn with repeats and an evaluation bin keeps each string once (their `unique`), so a
    bin holds at most the window's number of strings and Bin0's are training strings;
  - the state-tracking tasks draw each example from its own stream (seed, split, index), with
    repeats.
`test` is a fresh draw of Bin1 (another stream), scored once by the selected checkpoint: the
authors test on valid2 itself, the split they select on.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import sys
import zlib

import numpy as np

from experiments.tasks import files
from experiments.tasks.algorithmic.data import Split, eval_batches, train_batch  # noqa: F401

LANGUAGES = ("parity", "aa-star", "abab-star", "counter-2", "counter-3", "shuffle-2", "dyck-1",
             "reset_dyck")
TRACKING = ("mod-2", "mod-3", "mod-5", "s3", "s5")
TASKS = LANGUAGES + TRACKING
SPLITS = ("train", "valid", "valid2", "test")
PAD = "<pad>"
P_VAL, Q_VAL = 0.5, 0.25          # their -p_val / -q_val: the bracket grammar's probabilities
GENERATOR_VERSION = 1             # bump when a generator changes: it names the cached files


@dataclasses.dataclass(frozen=True)
class Window:
  """The lengths (counter-n: the n) a split's strings are drawn from, inclusive."""
  low: int
  high: int


TRAIN_WINDOW = Window(2, 50)
# Bin1 per language, as generate_data.py: dyck-1 from -bin1_lower_window 52, shuffle-2 from
# upper_window + 2, the others from upper_window + 1; all to upper_window + len_incr.
BIN1 = {"dyck-1": Window(52, 100), "shuffle-2": Window(52, 100)}
DEFAULT_BIN1 = Window(51, 100)
MAX_WINDOW = 1000                 # the longest window the generators are asked for


def bin1_window(task: str) -> Window:
  return BIN1.get(task, DEFAULT_BIN1)


def check_task(task: str) -> str:
  if task not in TASKS:
    raise ValueError(f"Unknown formal-language task {task!r}; valid choices: "
                     f"{', '.join(TASKS)}.")
  return task


def check_window(task: str, window: Window, what: str) -> Window:
  """A window the task's generator can fill: 1 <= low <= high <= MAX_WINDOW, and one that holds
  a string of the language (aa-star: an even length; abab-star: a multiple of 4)."""
  if not (isinstance(window.low, int) and isinstance(window.high, int)
          and 1 <= window.low <= window.high <= MAX_WINDOW):
    raise ValueError(f"{what} of {task} is [{window.low}, {window.high}]; the generators take "
                     f"1 <= low <= high <= {MAX_WINDOW}.")
  period = {"aa-star": 2, "abab-star": 4}.get(task)
  if period and not any(n % period == 0 for n in range(window.low, window.high + 1)):
    raise ValueError(f"{what} of {task} is [{window.low}, {window.high}], which holds no "
                     f"length that is a multiple of {period}: the language has no string there.")
  return window


# ---------------------------------------------------------------------------------------------
# The languages, as satwik77/Transformer-Formal-Languages draws them.

def _brackets(rng, pairs, current: int, max_size: int) -> str:
  """DyckLanguage.generate (max_depth -1): S -> (_i S )_i with p, SS with q, ε otherwise; a
  string longer than max_size is replaced by ε."""
  if current >= max_size:
    return ""
  prob = rng.random()
  if prob < P_VAL:
    pair = pairs[int(rng.integers(len(pairs)))]
    sample = pair[0] + _brackets(rng, pairs, current + 2, max_size) + pair[1]
    if len(sample) <= max_size:
      return sample
  elif prob < P_VAL + Q_VAL:
    sample = (_brackets(rng, pairs, current, max_size)
              + _brackets(rng, pairs, current, max_size))
    if len(sample) <= max_size:
      return sample
  else:
    return ""
  return ""


def _parity_string(rng, window: Window) -> tuple[str, str] | None:
  """ParityLanguage.generate_string + generate_list's test: bits with p = L / (2 (1 + L)) each,
  stopping with 1 - 2p, L the window's middle; a string of odd parity gets a 1 appended.
  Returns (the draw, the string): their list rejects a draw that equals a string it holds, and
  appends the 1 after that test, so a list can hold a string twice (8,556 distinct of 10,000
  training strings in their generator, seeded 1)."""
  middle = (window.low + window.high) // 2
  p = middle / (2 * (1 + middle))
  string = ""
  while len(string) < window.high:
    symbol = rng.choice(3, p=[p, p, 1 - 2 * p])
    if symbol == 2:
      break
    string += str(symbol)
  if not window.low <= len(string) <= window.high:
    return None
  if string.count("1") % 2 == 0:
    return string, string
  return (string, string + "1") if len(string) + 1 <= window.high else None


def _periodic_string(unit: str, rng, window: Window) -> str | None:
  """AAStarLanguage / ABABStarLanguage.generate_string: a length uniform in the window, floored
  to whole units."""
  length = window.low + int(rng.integers(window.high - window.low + 1))
  string = unit * (length // len(unit))
  return string if window.low <= len(string) <= window.high else None


def _reset_dyck_string(rng, window: Window) -> str | None:
  """RDyck1Language.generate_reset_dyck: a prefix of one Dyck-1 string, `1`, another Dyck-1
  string (each up to the window's top, so the whole may be twice as long: their list checks
  only the lower bound)."""
  first = _brackets(rng, ("()",), 0, window.high)
  second = _brackets(rng, ("()",), 0, window.high)
  cut = int(rng.integers(0, len(first) + 1))
  string = first[:cut] + "1" + second
  return string if len(string) >= window.low else None


def _counter_string(letters: str, rng, window: Window) -> str:
  n = window.low + int(rng.integers(window.high - window.low + 1))
  return "".join(c * n for c in letters)


def _draw(task: str, rng, window: Window) -> str | tuple[str, str] | None:
  """One draw of the task's string generator; None where the authors' list rejects it."""
  if task == "parity":
    return _parity_string(rng, window)
  if task in ("aa-star", "abab-star"):
    return _periodic_string("aa" if task == "aa-star" else "abab", rng, window)
  if task in ("counter-2", "counter-3"):
    return _counter_string("abc"[:int(task[-1])], rng, window)
  if task in ("dyck-1", "shuffle-2"):
    string = _brackets(rng, ("()",) if task == "dyck-1" else ("()", "[]"), 0, window.high)
    return string if len(string) >= window.low else None
  if task == "reset_dyck":
    return _reset_dyck_string(rng, window)
  raise AssertionError(task)


def targets(task: str, string) -> list[str]:
  """The target at every position, written as the authors' output_generator writes it."""
  if task == "parity":
    return ["1" if string[:i + 1].count("1") % 2 == 0 else "0" for i in range(len(string))]
  if task in ("aa-star", "abab-star"):
    unit = "aa" if task == "aa-star" else "abab"
    return ["1" if (i + 1) % len(unit) == 0 and string[:i + 1] == unit * ((i + 1) // len(unit))
            else "0" for i in range(len(string))]
  if task in ("counter-2", "counter-3"):
    letters = "abc"[:int(task[-1])]
    n = len(string) // len(letters)
    out = chr(ord(letters[-1]) + 1) * n + letters[1] * (n - 1) + "".join(c * n for c in letters[2:])
    return list(out + "T")
  if task == "dyck-1":
    out, depth = [], 0
    for c in string:
      depth += 1 if c == "(" else -1
      out.append("1" if depth > 0 else "0")
    return out
  if task == "shuffle-2":
    out, depths = [], [0, 0]
    for c in string:
      kind = 0 if c in "()" else 1
      depths[kind] += 1 if c in "([" else -1
      out.append("".join("0" if d == 0 else "1" for d in depths))
    return out
  if task == "reset_dyck":
    out, depth = [], 0
    for c in string:
      if c == "1":
        depth = 0
        out.append("0")
      else:
        depth += 1 if c == "(" else -1
        out.append("1" if depth > 0 else "0")
    return out
  if task.startswith("mod-"):
    m, count, out = int(task[4:]), 0, []
    for c in string:
      count = (count + int(c)) % m
      out.append(str(count))
    return out
  if task in ("s3", "s5"):
    group = _group(int(task[1]))
    index = {g: i for i, g in enumerate(group)}
    state, out = tuple(range(int(task[1]))), []
    for token in string:
      state = _compose(group[int(token)], state)
      out.append(str(index[state]))
    return out
  raise AssertionError(task)


# ---------------------------------------------------------------------------------------------
# State tracking.

@functools.lru_cache(maxsize=None)
def _group(n: int) -> tuple[tuple[int, ...], ...]:
  """The permutations of n elements in lexicographic order (the identity first)."""
  return tuple(itertools.permutations(range(n)))


def _compose(g, state):
  """g after state: (g ∘ state)(i) = g[state[i]] — the prefix's product, applied left to right."""
  return tuple(g[s] for s in state)


def _tracking_example(task: str, rng, window: Window) -> list[str]:
  length = window.low + int(rng.integers(window.high - window.low + 1))
  if task.startswith("mod-"):
    return [str(b) for b in rng.integers(0, 2, length)]
  return [str(g) for g in rng.integers(0, len(_group(int(task[1]))), length)]


# ---------------------------------------------------------------------------------------------
# Vocabularies, splits, caching.

def input_vocabulary(task: str) -> tuple[str, ...]:
  """PAD (id 0) and the task's symbols."""
  symbols = {"parity": "01", "aa-star": "a", "abab-star": "ab", "counter-2": "ab",
             "counter-3": "abc", "dyck-1": "()", "shuffle-2": "()[]", "reset_dyck": "()1",
             "mod-2": "01", "mod-3": "01", "mod-5": "01"}
  if task in ("s3", "s5"):
    return (PAD,) + tuple(str(i) for i in range(len(_group(int(task[1])))))
  return (PAD,) + tuple(symbols[check_task(task)])


def output_vocabulary(task: str) -> tuple[str, ...]:
  """Every target the task can have (the authors build theirs from the training file: the same
  classes, in another order)."""
  check_task(task)
  if task in ("counter-2", "counter-3"):
    letters = "abc"[:int(task[-1])]
    return (chr(ord(letters[-1]) + 1),) + tuple(letters[1:]) + ("T",)
  if task == "shuffle-2":
    return ("00", "01", "10", "11")
  if task.startswith("mod-"):
    return tuple(str(i) for i in range(int(task[4:])))
  if task in ("s3", "s5"):
    return tuple(str(i) for i in range(len(_group(int(task[1])))))
  return ("0", "1")


def _seed(*parts) -> list[int]:
  return [zlib.crc32(str(p).encode()) for p in parts]


def _strings(task: str, seed: int, stream: str, window: Window, count: int, unique: bool,
             skip: int = 0) -> list:
  """`count` strings of one stream (after its first `skip`), each drawn until the authors' list
  accepts it; `unique` rejects a string the stream already gave."""
  rng = np.random.default_rng(_seed(task, seed, stream))
  seen, out = set(), []
  limit = sys.getrecursionlimit()
  sys.setrecursionlimit(max(limit, 5000))   # their generators set 5000 for the grammar's depth
  try:
    while len(out) < skip + count:
      drawn = _draw(task, rng, window)
      if drawn is None:
        continue
      key, string = drawn if isinstance(drawn, tuple) else (drawn, drawn)
      if unique and key in seen:           # the draw against the strings already listed
        continue
      seen.add(string)
      out.append(string)
  finally:
    sys.setrecursionlimit(limit)
  return out[skip:]


def _keep_first(strings: list) -> list:
  return list(dict.fromkeys(strings))


def parse_window(text: str, task: str, what: str) -> Window | None:
  """`LOW:HIGH` (inclusive) as a checked Window; "" for the default (None)."""
  if not text:
    return None
  low, sep, high = str(text).partition(":")
  if not sep or not low.strip().isdigit() or not high.strip().isdigit():
    raise ValueError(f"{what}={text!r} is not LOW:HIGH (two integers, e.g. 51:100).")
  return check_window(task, Window(int(low), int(high)), what)


def split_strings(task: str, split: str, size: int, seed: int, train_size: int,
                  train_window: Window | None = None, long_window: Window | None = None) -> list:
  """The strings (lists of tokens for the tracking tasks) of one split; `train` and `valid` from
  `train_window`, `valid2` and `test` from `long_window` (None: the defaults above)."""
  check_task(task)
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; valid choices: {', '.join(SPLITS)}.")
  if split in ("train", "valid"):
    window = train_window or TRAIN_WINDOW
  else:
    window = long_window or bin1_window(task)
  if task in TRACKING:
    return [_tracking_example(task, np.random.default_rng(_seed(task, seed, split, i)), window)
            for i in range(size)]
  if task in ("parity", "reset_dyck") and split in ("train", "valid"):
    # One stream for both, split as generate_data.py splits it: disjoint.
    skip = 0 if split == "train" else train_size
    return _strings(task, seed, "bin0", window, size, unique=True, skip=skip)
  if task in ("parity", "reset_dyck", "dyck-1", "shuffle-2"):
    return _strings(task, seed, split, window, size, unique=True)
  strings = _strings(task, seed, split, window, size, unique=False)
  return strings if split == "train" else _keep_first(strings)


def encode(task: str, strings) -> Split:
  """Strings and their targets as a Split padded to the longest (targets -1 on padding)."""
  src = {t: i for i, t in enumerate(input_vocabulary(task))}
  tgt = {t: i for i, t in enumerate(output_vocabulary(task))}
  lengths = np.array([len(s) for s in strings], np.int32)
  width = int(lengths.max()) if len(strings) else 1
  inputs = np.zeros((len(strings), width), np.int32)
  out = np.full((len(strings), width), -1, np.int32)
  for i, string in enumerate(strings):
    inputs[i, :len(string)] = [src[t] for t in string]
    out[i, :len(string)] = [tgt[t] for t in targets(task, string)]
  return Split(inputs, out, lengths)


def cache_dir(configured: str = "") -> str:
  """config.cache_dir, else $XDG_CACHE_HOME/fwp/formal_languages."""
  return configured or files.user_cache("formal_languages")


@functools.lru_cache(maxsize=16)
def generate(task: str, split: str, size: int, seed: int, train_size: int,
             cache: str = "", train_window: Window | None = None,
             long_window: Window | None = None) -> Split:
  """One split, generated once and kept in `cache` (a .npz; the bracket grammar's rejection
  sampling takes seconds per split). A cache that cannot be written is skipped with a warning."""
  strings_of = functools.partial(split_strings, task, split, size, seed, train_size,
                                 train_window, long_window)
  folder = cache_dir(cache)
  after = f"-after{train_size}" if task in ("parity", "reset_dyck") and split == "valid" else ""
  window = train_window if split in ("train", "valid") else long_window
  if window is not None:
    after += f"-L{window.low}-{window.high}"
  path = os.path.join(folder, f"{task}-seed{seed}-{split}{size}{after}-v{GENERATOR_VERSION}.npz")
  make = lambda: dataclasses.asdict(encode(task, strings_of()))
  return Split(**files.cached_arrays(path, make, f"the generated {task} {split} split"))
