"""The two algorithmic problems of Irie et al. (2021) as the authors generate them, and their
batches: code execution and sequential ListOps (IDSIA/recurrent-fwp, `algorithmic/utils/`).

Both generators draw from a `random.Random` with the same calls, in the same order, as the
authors' scripts (`data_generator.py`, `nyu_listops.py`), so one `random.Random(42)` run through
`authors_examples` gives their files' examples one for one. fwp's data sets instead draw each
example from its own stream, `random.Random("<problem>/<seed>/<split>/<index>")`: the same
distribution, and every example (hence every batch) a pure function of (seed, split, index).

Code execution (`code3`, `code5`: the number of variables): a program of `code_length`
statements, the first an assignment and the last a print; the others uniformly one of
  assignment  `x = 7 ;`   (a digit 0-9)
  ++ / --     `x ++ ;`    (an assigned variable; the other way when it would leave [-8, 16])
  print       `print x ;`
  conditional `if x < 3 : <statement>` (< or >, 0-9; the statement is one of the three above and
              takes effect only when the condition holds)
The target is `_` at every token except the `;` of an executed print, where it is the printed
value. Two quirks of the authors' generator are kept, since their data is what the paper's
numbers come from: a conditional assignment to a variable that is already assigned does not
change it (only a first assignment under a true condition takes effect), and the skipped
print of a false condition is a `_`.

Sequential ListOps (`listops10`, `listops15`: the nesting depth): `[MIN`, `[MAX`, `[FIRST` over
digits, 2-5 arguments each, every argument below the root an operation with probability 1/4
(the authors' `r > VALUE_P` test keeps a value with 3/4), trees of exactly the asked depth
kept (the authors' `--only_depth` is the depth + 1: it counts the digits' level). The answer is
predicted at the last token.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random

import numpy as np

from experiments.tasks import files

PROBLEMS = ("code3", "code5", "listops10", "listops15")
SPLITS = ("train", "valid", "test")

# Code execution, as data_generator.py.
_VARIABLES = ("x", "y", "z", "a", "b", "c", "d", "e", "f", "g")
MAX_ASSIGN, MAX_COND = 10, 10          # drw(10): digits 0-9
MIN_VALUE, MAX_VALUE = -8, 16          # ++/-- stay within these
NO_OUTPUT = "_"
# ListOps, as nyu_listops.py.
MIN, MAX, FIRST, END = "[MIN", "[MAX", "[FIRST", "]"
OPERATORS = (MIN, MAX, FIRST)
VALUE_P, MAX_ARGS, MAX_DEPTH = 0.25, 5, 20

PAD = "<pad>"


def code_example(rng: random.Random, num_vars: int, code_length: int
                 ) -> tuple[list[str], list[str]]:
  """One program and its targets, token for token (data_generator.get_data_pair)."""
  names = _VARIABLES[:num_vars]
  values = [0] * num_vars
  assigned: list[int] = []
  code: list[str] = []
  target: list[str] = []

  def emit(tokens, out=None):
    code.extend(tokens)
    target.extend([NO_OUTPUT] * (len(tokens) - 1) + [NO_OUTPUT if out is None else str(out)])

  def step_value(var, apply):
    """++ or -- on `var` (the other way at a bound); applied when `apply`."""
    up = 1 - rng.randrange(2)
    if up:
      op = "++" if values[var] + 1 <= MAX_VALUE else "--"
    else:
      op = "--" if values[var] - 1 >= MIN_VALUE else "++"
    if apply:
      values[var] += 1 if op == "++" else -1
    emit([names[var], op, ";"])

  for count in range(code_length):
    op = 0 if count == 0 else 2 if count == code_length - 1 else rng.randrange(4)
    if op == 0:                                           # assignment
      var = rng.randrange(num_vars)
      if var not in assigned:
        assigned.append(var)
      value = rng.randrange(MAX_ASSIGN)
      values[var] = value
      emit([names[var], "=", str(value), ";"])
    elif op == 1:                                         # ++ / --
      step_value(assigned[rng.randrange(len(assigned))], True)
    elif op == 2:                                         # print
      var = assigned[rng.randrange(len(assigned))]
      emit(["print", names[var], ";"], values[var])
    else:                                                 # conditional + one statement
      greater = rng.randrange(2)
      var = assigned[rng.randrange(len(assigned))]
      bound = rng.randrange(MAX_COND)
      emit(["if", names[var], ">" if greater else "<", str(bound), ":"])
      holds = values[var] > bound if greater else values[var] < bound
      inner = rng.randrange(3)
      if inner == 0:
        var = rng.randrange(num_vars)
        value = rng.randrange(MAX_ASSIGN)
        if holds and var not in assigned:     # the authors' generator: first assignments only
          assigned.append(var)
          values[var] = value
        emit([names[var], "=", str(value), ";"])
      elif inner == 1:
        step_value(assigned[rng.randrange(len(assigned))], holds)
      else:
        var = assigned[rng.randrange(len(assigned))]
        emit(["print", names[var], ";"], values[var] if holds else None)
  return code, target


class _TooDeep(Exception):
  pass


def _tree(rng: random.Random, depth: int, limit: int = MAX_DEPTH + 1):
  """(tree, value, deepest level) of a random tree, drawn as nyu_listops.generate_tree draws
  it; a tree is a digit or (operator, [arguments]). One that reaches past level `limit` is
  abandoned (_TooDeep) as soon as it does."""
  if depth > limit:
    raise _TooDeep
  r = rng.random() if depth < MAX_DEPTH else 1
  if r > VALUE_P and depth > 1:
    value = rng.choice(range(10))
    return value, value, depth
  arguments = [_tree(rng, depth + 1, limit) for _ in range(rng.randint(2, MAX_ARGS))]
  op = rng.choice(OPERATORS)
  value = (min(a[1] for a in arguments) if op == MIN else
           max(a[1] for a in arguments) if op == MAX else arguments[0][1])
  return (op, [a[0] for a in arguments]), value, max([1] + [a[2] for a in arguments])


def _tokens(tree, out: list[str]) -> list[str]:
  """The tree as the authors' to_string(parens=False) writes it, split into tokens."""
  if isinstance(tree, int):
    out.append(str(tree))
  else:
    out.append(tree[0])
    for argument in tree[1]:
      _tokens(argument, out)
    out.append(END)
  return out


def listops_example(rng: random.Random, depth: int, exact_stream: bool = False
                    ) -> tuple[list[str], int]:
  """Trees until one has exactly `depth` nested operations (`--only_depth depth + 1`). A tree
  that grows too deep is abandoned as soon as it does (the same distribution of kept trees,
  several times faster); `exact_stream` draws every tree to its end, as the authors' script,
  so that a shared stream stays in step with theirs."""
  limit = MAX_DEPTH + 1 if exact_stream else depth + 1
  while True:
    try:
      tree, value, deepest = _tree(rng, 1, limit)
    except _TooDeep:
      continue
    if deepest == depth + 1:
      return _tokens(tree, []), value


def parse(problem: str) -> tuple[str, int]:
  """("code", variables) or ("listops", depth) of a problem name: code<n> with 1 <= n <= 10
  variables, listops<d> with 1 <= d <= MAX_DEPTH - 1 (the paper's: code3, code5, listops10,
  listops15)."""
  for kind, low, high in (("code", 1, len(_VARIABLES)), ("listops", 1, MAX_DEPTH - 1)):
    number = problem[len(kind):] if problem.startswith(kind) else ""
    if number.isdigit():
      if not low <= int(number) <= high:
        raise ValueError(f"Problem {problem!r}: the {kind} generator supports "
                         f"{'variables' if kind == 'code' else 'depths'} {low}..{high}, got "
                         f"{int(number)}.")
      return kind, int(number)
  raise ValueError(f"Unknown problem {problem!r}; valid choices: code<variables> (1..10), "
                   f"listops<depth> (1..{MAX_DEPTH - 1}); the paper's: {', '.join(PROBLEMS)}.")


def example(problem: str, rng: random.Random, code_length: int = 100, exact_stream=False):
  """(input tokens, target tokens): for ListOps the target is `_` but the answer at the end."""
  kind, n = parse(problem)
  if kind == "code":
    return code_example(rng, n, code_length)
  tokens, value = listops_example(rng, n, exact_stream)
  return tokens, [NO_OUTPUT] * (len(tokens) - 1) + [str(value)]


def authors_examples(problem: str, count: int, code_length: int = 100, seed: int = 42):
  """The first `count` examples of the authors' scripts, in their order (one stream, seeded
  once): what their train file holds (data_generator.py also drops each file's last line)."""
  rng = random.Random(seed)
  return [example(problem, rng, code_length, exact_stream=True) for _ in range(count)]


# ---------------------------------------------------------------------------------------------
# Vocabularies (fixed by the grammar, not read from the data) and encoded splits.

def input_vocabulary(problem: str) -> tuple[str, ...]:
  kind, n = parse(problem)
  digits = tuple(str(i) for i in range(10))
  if kind == "code":
    return (PAD,) + _VARIABLES[:n] + digits + ("=", ";", "++", "--", "print", "if", "<", ">",
                                               ":")
  return (PAD,) + OPERATORS + (END,) + digits


def output_vocabulary(problem: str) -> tuple[str, ...]:
  """Code execution: `_` (no output) first, then every value a print can show; ListOps: the
  ten digits an answer can be."""
  if parse(problem)[0] == "code":
    return (NO_OUTPUT,) + tuple(str(v) for v in range(MIN_VALUE, MAX_VALUE + 1))
  return tuple(str(v) for v in range(10))


def no_output_id(problem: str) -> int | None:
  """The output id of `_` (code execution), None for ListOps (every scored target an answer)."""
  return 0 if parse(problem)[0] == "code" else None


@dataclasses.dataclass(frozen=True)
class Split:
  """Padded examples: inputs [N, L] (0 = padding), targets [N, L] (-1 = not scored: padding,
  and for ListOps every position but the answer's), and each example's length."""
  inputs: np.ndarray
  targets: np.ndarray
  lengths: np.ndarray

  def padded(self, width: int, name: str) -> "Split":
    """The same examples padded to `width`; an example longer than it is an error naming both
    lengths."""
    longest = int(self.lengths.max()) if len(self.lengths) else 0
    if longest > width:
      raise ValueError(f"The {name} split has an example of {longest} tokens, longer than "
                       f"config.max_length={width}: raise max_length (or set it to 0, the "
                       f"longest example's length).")
    extra = width - self.inputs.shape[1]
    if extra <= 0:
      return self
    return Split(np.pad(self.inputs, ((0, 0), (0, extra))),
                 np.pad(self.targets, ((0, 0), (0, extra)), constant_values=-1), self.lengths)


GENERATOR_VERSION = 1      # bump when a generator changes: it names the cached files


def _rng(problem, seed, split, index):
  return random.Random(f"{problem}/{seed}/{split}/{index}")


def encode(problem: str, pairs) -> Split:
  """(tokens, targets) pairs as a Split padded to the longest."""
  src = {t: i for i, t in enumerate(input_vocabulary(problem))}
  tgt = {t: i for i, t in enumerate(output_vocabulary(problem))}
  answer_only = no_output_id(problem) is None
  lengths = np.array([len(p[0]) for p in pairs], np.int32)
  width = int(lengths.max()) if len(pairs) else 1
  inputs = np.zeros((len(pairs), width), np.int32)
  targets = np.full((len(pairs), width), -1, np.int32)
  for i, (code, target) in enumerate(pairs):
    inputs[i, :len(code)] = [src[t] for t in code]
    if answer_only:
      targets[i, len(code) - 1] = tgt[target[-1]]
    else:
      targets[i, :len(target)] = [tgt[t] for t in target]
  return Split(inputs, targets, lengths)


def cache_dir(configured: str = "") -> str:
  """config.cache_dir, else $XDG_CACHE_HOME/fwp/algorithmic (~/.cache/fwp/algorithmic)."""
  if configured:
    return configured
  return files.user_cache("algorithmic")


@functools.lru_cache(maxsize=12)
def generate(problem: str, split: str, size: int, seed: int, code_length: int = 100,
             cache: str = "") -> Split:
  """`size` examples of `split` (padded to the longest), generated once and kept in `cache`
  (a .npz per split; ListOps' rejection sampling takes ~2-8 ms an example). A cache that cannot
  be written is skipped with a warning."""
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; valid choices: {', '.join(SPLITS)}.")
  folder = cache_dir(cache)
  length = f"-L{code_length}" if parse(problem)[0] == "code" else ""
  path = os.path.join(folder, f"{problem}{length}-seed{seed}-{split}{size}-"
                              f"v{GENERATOR_VERSION}.npz")
  make = lambda: dataclasses.asdict(encode(problem, [
      example(problem, _rng(problem, seed, split, i), code_length) for i in range(size)]))
  return Split(**files.cached_arrays(path, make, f"the generated {problem} {split} split"))


def train_batch(split: Split, step: int, batch_size: int, seed: int) -> dict:
  """Batch `step` of an epoch-wise shuffle (a fresh permutation per epoch, from (seed,
  epoch)); the epoch's last partial batch is dropped."""
  per_epoch = len(split.inputs) // batch_size
  epoch, index = divmod(step, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(len(split.inputs))
  rows = order[index * batch_size:(index + 1) * batch_size]
  return {"inputs": split.inputs[rows], "targets": split.targets[rows]}


def eval_batches(split: Split, batch_size: int):
  """The split in order, the last batch filled with empty rows (targets -1, never scored)."""
  n = len(split.inputs)
  for start in range(0, n, batch_size):
    inputs = split.inputs[start:start + batch_size]
    targets = split.targets[start:start + batch_size]
    short = batch_size - len(inputs)
    if short:
      inputs = np.concatenate([inputs, np.zeros((short, inputs.shape[1]), inputs.dtype)])
      targets = np.concatenate([targets, np.full((short, targets.shape[1]), -1,
                                                 targets.dtype)])
    yield {"inputs": inputs, "targets": targets}
