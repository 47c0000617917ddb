"""The algorithmic tasks' data: the authors' generators reproduced (their first examples pinned,
their scripts run when a checkout is given), the programs' targets checked by an independent
interpreter, ListOps trees by an independent evaluator, and batches pure in (seed, step)."""

import collections
import hashlib
import json
import os
import random
import shutil
import sys

import numpy as np
import pytest

from experiments.tasks.algorithmic import data

# The first examples of the authors' scripts (random.seed(42), one stream): digests of fwp's
# authors_examples, checked equal to IDSIA/recurrent-fwp's data_generator.py (max_num_vars 3
# and 5, 300 examples) and nyu_listops.py (--only_depth 11 and 16, 100 examples) on 2026-12-02.
AUTHORS_DIGESTS = {("code3", 20): "22ff51455060330a", ("code5", 20): "c182a85796ed2db1",
                   ("listops10", 5): "b5c56ac407241ff7", ("listops15", 5): "b12ae2c45f4cead0"}


@pytest.mark.parametrize("problem,count", sorted(AUTHORS_DIGESTS))
def test_authors_stream_is_pinned(problem, count):
  examples = data.authors_examples(problem, count)
  digest = hashlib.sha256(json.dumps(examples).encode()).hexdigest()[:16]
  assert digest == AUTHORS_DIGESTS[(problem, count)]


AUTHORS = os.environ.get("FWP_RECURRENT_FWP_CODE")   # a checkout of IDSIA/recurrent-fwp


@pytest.mark.skipif(not AUTHORS, reason="set FWP_RECURRENT_FWP_CODE to a recurrent-fwp checkout")
def test_equals_the_authors_scripts():
  utils = os.path.join(AUTHORS, "algorithmic", "utils")
  for num_vars in (3, 5):
    with open(os.path.join(utils, "data_generator.py")) as f:
      source = f.read().replace("max_num_vars = 3", f"max_num_vars = {num_vars}")
    module = {"__name__": "authors_generator"}
    exec(compile(source, "data_generator.py", "exec"), module)   # seeds `random` with 42
    theirs = []
    for _ in range(50):
      code, target = module["get_data_pair"](100)
      theirs.append((code.split(), target.split()))
      module["reset_all"]()
    assert theirs == [tuple(map(list, e)) for e in data.authors_examples(f"code{num_vars}", 50)]
  sys.path.insert(0, utils)
  try:
    import nyu_listops as listops
  finally:
    sys.path.remove(utils)
  for depth in (10, 15):
    random.seed(42)
    theirs = []
    while len(theirs) < 20:
      tree, _, deepest = listops.generate_tree(1)
      if deepest == depth + 1:
        theirs.append((listops.to_string(tree, parens=False).split(), listops.to_value(tree)))
    ours = data.authors_examples(f"listops{depth}", 20)
    assert [t for t, _ in theirs] == [t for t, _ in ours]
    assert [str(v) for _, v in theirs] == [t[-1] for _, t in ours]


def run_program(tokens):
  """An interpreter of the programs written from the task's description (not the generator):
  statements end at ';', `if v op c :` guards the next statement; the targets it expects
  (`_` except the value at an executed print's ';'). The authors' generator applies a guarded
  assignment only to a variable never assigned before: so does this interpreter."""
  values, assigned, out, i = {}, set(), [], 0
  while i < len(tokens):
    guard = True
    if tokens[i] == "if":
      var, op, bound = tokens[i + 1], tokens[i + 2], int(tokens[i + 3])
      assert tokens[i + 4] == ":"
      guard = values[var] < bound if op == "<" else values[var] > bound
      out += ["_"] * 5
      i += 5
      conditional = True
    else:
      conditional = False
    end = tokens.index(";", i)
    statement = tokens[i:end]
    result = "_"
    if statement[0] == "print":
      if guard:
        result = str(values[statement[1]])
    elif statement[1] == "=":
      if guard and not (conditional and statement[0] in assigned):
        values[statement[0]] = int(statement[2])
        assigned.add(statement[0])
    else:
      assert statement[1] in ("++", "--") and statement[0] in assigned
      if guard:
        values[statement[0]] += 1 if statement[1] == "++" else -1
        assert data.MIN_VALUE <= values[statement[0]] <= data.MAX_VALUE
    out += ["_"] * len(statement) + [result]
    i = end + 1
  return out


@pytest.mark.parametrize("problem", ["code3", "code5"])
def test_programs_compute_their_targets(problem):
  stats = collections.Counter()
  for index in range(200):
    rng = data._rng(problem, 42, "train", index)
    tokens, targets = data.example(problem, rng, code_length=100)
    assert len(tokens) == len(targets)
    assert run_program(tokens) == targets
    assert tokens[1] == "="                      # the first statement: an assignment
    assert tokens[-3] == "print"                 # the last: a print
    assert tokens.count(";") == 100              # 100 statements (a guarded one has one ';')
    stats.update(t for t in tokens if t in ("=", "++", "--", "print", "if"))
    assert set(tokens) <= set(data.input_vocabulary(problem))
    assert set(targets) <= set(data.output_vocabulary(problem))
  # Three statement kinds at 1/4 each plus a conditional's inner one at 1/3: per program,
  # E[if] ≈ 98/4 = 24.5 and E[print] ≈ 1 + 24.5 + 24.5/3 ≈ 33.7.
  assert 23 < stats["if"] / 200 < 26
  assert 32 < stats["print"] / 200 < 35.5


def evaluate_tree(tokens):
  """The value and depth of a ListOps token list, by a stack machine (independent of the
  generator's tree): depth counts nested operations."""
  stack, depth, deepest = [], 0, 0
  for token in tokens:
    if token.startswith("["):
      stack.append((token, []))
      depth += 1
      deepest = max(deepest, depth)
    elif token == "]":
      op, args = stack.pop()
      assert 2 <= len(args) <= data.MAX_ARGS
      value = min(args) if op == "[MIN" else max(args) if op == "[MAX" else args[0]
      depth -= 1
      if not stack:
        return value, deepest
      stack[-1][1].append(value)
    else:
      stack[-1][1].append(int(token))
  raise AssertionError("unbalanced")


@pytest.mark.parametrize("depth", [3, 10])
def test_listops_have_their_depth_and_answer(depth):
  answers = collections.Counter()
  for index in range(60 if depth == 10 else 300):
    tokens, targets = data.example(f"listops{depth}", data._rng(f"listops{depth}", 1, "valid",
                                                                 index))
    value, deepest = evaluate_tree(tokens)
    assert deepest == depth
    assert targets[-1] == str(value) and set(targets[:-1]) == {"_"}
    answers[value] += 1
  assert set(answers) <= set(range(10))


def test_early_abandon_keeps_the_distribution():
  """fwp abandons a too-deep tree at once; the authors draw it to its end. Same kept trees'
  distribution: the mean length and answer histogram agree within sampling error."""
  def stats(exact):
    rng = random.Random(7)
    lengths = [len(data.listops_example(rng, 4, exact)[0]) for _ in range(1500)]
    return np.mean(lengths), np.std(lengths) / np.sqrt(len(lengths))
  (m1, s1), (m2, s2) = stats(True), stats(False)
  assert abs(m1 - m2) < 4 * np.hypot(s1, s2)


def test_examples_are_pure_in_seed_split_index(tmp_path):
  a = data.generate("code3", "valid", 12, 5, 10, str(tmp_path))
  data.generate.cache_clear()
  b = data.generate("code3", "valid", 12, 5, 10, str(tmp_path))        # from the .npz cache
  c = data.generate("code3", "valid", 12, 5, 10, str(tmp_path / "other"))  # made again
  for x in (b, c):
    np.testing.assert_array_equal(a.inputs, x.inputs)
    np.testing.assert_array_equal(a.targets, x.targets)
  assert len(os.listdir(tmp_path)) == 2          # the one cache file and the other folder
  other = data.generate("code3", "test", 12, 5, 10, str(tmp_path))
  assert not np.array_equal(a.inputs[:, :20], other.inputs[:, :20])


def test_batches_shuffle_per_epoch_and_pad(tmp_path):
  split = data.generate("listops3", "train", 10, 1, 100, str(tmp_path))
  assert (split.targets >= 0).sum(1).tolist() == [1] * 10        # ListOps: the answer only
  rows = [data.train_batch(split, s, 4, seed=3)["inputs"] for s in range(4)]
  np.testing.assert_array_equal(rows[0], data.train_batch(split, 0, 4, seed=3)["inputs"])
  epoch0 = np.concatenate(rows[:2])
  assert len({r.tobytes() for r in epoch0}) == 8                 # no repeats within an epoch
  assert not np.array_equal(rows[0], rows[2])                     # a new order next epoch
  batches = list(data.eval_batches(split, 4))
  assert len(batches) == 3 and (batches[-1]["targets"][2:] == -1).all()
  wide = split.padded(split.inputs.shape[1] + 5, "x")
  assert (wide.inputs[:, -5:] == 0).all() and (wide.targets[:, -5:] == -1).all()
  with pytest.raises(ValueError, match=r"example of \d+ tokens, longer than config.max_length=3"):
    split.padded(3, "listops3 train")


@pytest.mark.parametrize("problem,message", [
    ("code11", "supports variables 1..10, got 11"), ("listops20", "depths 1..19, got 20"),
    ("listops0", "depths 1..19, got 0"), ("sorting", "Unknown problem 'sorting'")])
def test_bad_problems(problem, message):
  with pytest.raises(ValueError, match=message):
    data.parse(problem)


def test_a_cache_file_holding_something_else_is_named_and_made_again(tmp_path, capsys):
  # Another problem's .npz copied under this one's name, and a truncated file: each is named,
  # said, and the split made again (it trained without complaint on the other arrays before).
  valid = data.generate("code3", "valid", 12, 5, 10, str(tmp_path))
  listops = data.generate("listops10", "valid", 12, 5, 10, str(tmp_path))
  paths = {n: os.path.join(tmp_path, n) for n in os.listdir(tmp_path)}
  code_path = next(p for n, p in paths.items() if n.startswith("code3"))
  listops_path = next(p for n, p in paths.items() if n.startswith("listops10"))
  assert not np.array_equal(valid.inputs, listops.inputs)
  for damage, said in ((lambda: shutil.copy(listops_path, code_path), "it holds listops10"),
                       (lambda: open(code_path, "r+b").truncate(100), "it does not read")):
    damage()
    data.generate.cache_clear()
    again = data.generate("code3", "valid", 12, 5, 10, str(tmp_path))
    assert said in capsys.readouterr().out
    np.testing.assert_array_equal(again.inputs, valid.inputs)
    data.generate.cache_clear()
    data.generate("code3", "valid", 12, 5, 10, str(tmp_path))    # the remade file reads
    assert capsys.readouterr().out == ""
