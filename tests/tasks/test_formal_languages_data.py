"""The formal-language and state-tracking data: the strings are in their languages, every target
is its definition (plain loops), the sets match the authors' generator in distribution, and a
split is a pure function of (task, seed, split, index)."""

import itertools
import math

import numpy as np
import pytest

from experiments.tasks.formal_languages import data

# satwik77/Transformer-Formal-Languages' generators (src/utils/*_generator.py at their HEAD), run
# with torch and ipdb stubbed out, `random.seed(1); np.random.seed(1)`, in the order below, each
# asked for 2,000 training strings (lengths [2, 50]; counter-n: n) then 500 of Bin1, as their
# generate_data.py windows them: (mean length, standard deviation, distinct strings).
AUTHORS = {
    "parity": {"train": (24.05, 15.05, 1800), "valid2": (82.60, 17.14, 500)},
    "dyck-1": {"train": (29.14, 11.17, 2000), "valid2": (74.66, 15.02, 500)},
    "shuffle-2": {"train": (23.48, 12.02, 2000), "valid2": (74.57, 14.02, 500)},
    "reset_dyck": {"train": (26.82, 14.55, 2000), "valid2": (77.19, 21.08, 500)},
    "aa-star": {"train": (25.71, 14.07, 25), "valid2": (75.11, 13.91, 25)},
    "abab-star": {"train": (25.55, 13.46, 12), "valid2": (74.54, 14.08, 13)},
    "counter-2": {"train": (52.32, 28.69, 49), "valid2": (151.95, 29.15, 50)},
    "counter-3": {"train": (78.28, 41.58, 49), "valid2": (229.00, 42.85, 50)},
}
# Their lists' longest strings (reset Dyck-1 checks only the lower bound: up to 2 * 50 + 1).
LONGEST = {"reset_dyck": {"train": 101, "valid2": 201}}


@pytest.mark.parametrize("task", sorted(AUTHORS))
def test_the_sets_match_the_authors_generator_in_distribution(task):
  for split, size in (("train", 2000), ("valid2", 500)):
    strings = data.split_strings(task, split, size, seed=1, train_size=2000)
    lengths = np.array([len(s) for s in strings])
    mean, std, distinct = AUTHORS[task][split]
    window = data.TRAIN_WINDOW if split == "train" else data.bin1_window(task)
    per = 3 if task == "counter-3" else 2 if task == "counter-2" else 1
    longest = LONGEST.get(task, {}).get(split, window.high * per)
    assert lengths.min() >= window.low * per and lengths.max() <= longest, (task, split)
    if task == "parity" and split == "train":   # repeats by the appended 1: a random count
      assert abs(len(set(strings)) - distinct) < 0.02 * size
    else:                                        # all distinct, or the window's every string
      assert len(set(strings)) == distinct, (task, split)
    # Two samples of the same distribution: their means differ by < 4 standard errors.
    if len(strings) == size:
      assert abs(lengths.mean() - mean) < 4 * math.sqrt(2) * std / math.sqrt(size), (task, split)


def _in_language(task, s):
  if task == "parity":
    return s.count("1") % 2 == 0
  if task == "aa-star":
    return set(s) == {"a"} and len(s) % 2 == 0
  if task == "abab-star":
    return s == "abab" * (len(s) // 4) and len(s) % 4 == 0
  if task.startswith("counter-"):
    letters = "abc"[:int(task[-1])]
    n = len(s) // len(letters)
    return s == "".join(c * n for c in letters)
  if task in ("dyck-1", "shuffle-2"):
    stack = []
    for c in s:
      if c in "([":
        stack.append(c)
      elif not stack or stack.pop() != {")": "(", "]": "["}[c]:
        return False
    return not stack
  if task == "reset_dyck":
    head, _, tail = s.partition("1")
    depth = 0
    for c in head:
      depth += 1 if c == "(" else -1
      if depth < 0:
        return False
    return "1" not in tail and _in_language("dyck-1", tail)
  raise AssertionError(task)


def _next_allowed(task, s, i):
  """The target by brute force: which continuations of s[:i+1] can still reach the language."""
  prefix = s[:i + 1]
  if task == "parity":
    return "1" if prefix.count("1") % 2 == 0 else "0"
  if task in ("aa-star", "abab-star"):
    return "1" if _in_language(task, prefix) else "0"
  if task == "dyck-1":
    return "1" if prefix.count("(") > prefix.count(")") else "0"
  if task == "shuffle-2":
    return "".join("1" if prefix.count(o) > prefix.count(c) else "0" for o, c in ("()", "[]"))
  if task == "reset_dyck":
    segment = prefix.rpartition("1")[2] if prefix[-1] != "1" else ""
    return "1" if segment.count("(") > segment.count(")") else "0"
  if task.startswith("counter-"):
    letters = "abc"[:int(task[-1])]
    n = len(s) // len(letters)
    if i < n:
      return chr(ord(letters[-1]) + 1)    # a or b
    if i == len(s) - 1:
      return "T"
    return s[i + 1]
  raise AssertionError(task)


@pytest.mark.parametrize("task", data.LANGUAGES)
def test_every_string_is_in_its_language_and_every_target_is_its_definition(task):
  for split in ("train", "valid2"):
    for s in data.split_strings(task, split, 300, seed=3, train_size=300):
      assert _in_language(task, s), (task, s)
      assert data.targets(task, s) == [_next_allowed(task, s, i) for i in range(len(s))], s


@pytest.mark.parametrize("task", data.TRACKING)
def test_state_tracking_targets_are_the_running_state(task):
  for tokens in data.split_strings(task, "train", 50, seed=0, train_size=50):
    got = data.targets(task, tokens)
    if task.startswith("mod-"):
      m = int(task[4:])
      want = [str(sum(int(t) for t in tokens[:i + 1]) % m) for i in range(len(tokens))]
    else:
      # Permutation matrices: the prefix's product is P(g_t) ... P(g_1), read back as an index.
      n = int(task[1])
      perms = list(itertools.permutations(range(n)))
      matrix = lambda p: np.eye(n, dtype=int)[list(p)].T      # e_i -> e_p(i)
      product, want = np.eye(n, dtype=int), []
      for t in tokens:
        product = matrix(perms[int(t)]) @ product
        image = tuple(int(np.argmax(product[:, i])) for i in range(n))
        want.append(str(perms.index(image)))
    assert got == want


def test_a_split_is_a_pure_function_of_its_index_and_bins_are_disjoint_where_the_authors_are():
  for task in ("parity", "dyck-1", "s3", "aa-star"):
    short = data.split_strings(task, "train", 100, seed=7, train_size=100)
    long = data.split_strings(task, "train", 300, seed=7, train_size=300)
    assert long[:100] == short, task
    assert data.split_strings(task, "train", 100, seed=8, train_size=100) != short, task
  for task in ("parity", "reset_dyck"):      # one stream for train and Bin0, split
    train = set(data.split_strings(task, "train", 1000, seed=1, train_size=1000))
    valid = data.split_strings(task, "valid", 300, seed=1, train_size=1000)
    shared = train & set(valid)
    # parity's list tests a draw before it appends the 1: only such strings repeat.
    assert not shared if task == "reset_dyck" else all(s.endswith("1") for s in shared)
  test = data.split_strings("dyck-1", "test", 200, seed=1, train_size=1000)
  assert test != data.split_strings("dyck-1", "valid2", 200, seed=1, train_size=1000)
  assert min(len(s) for s in test) >= data.bin1_window("dyck-1").low


def test_encoded_splits_are_cached_and_padded(tmp_path):
  split = data.generate("shuffle-2", "valid", 40, 2, 100, str(tmp_path))
  again = data.generate.__wrapped__("shuffle-2", "valid", 40, 2, 100, str(tmp_path))
  np.testing.assert_array_equal(split.inputs, again.inputs)
  assert len(list(tmp_path.iterdir())) == 1
  strings = data.split_strings("shuffle-2", "valid", 40, 2, 100)
  for row, s in zip(range(40), strings):
    n = len(s)
    assert split.lengths[row] == n and (split.inputs[row, n:] == 0).all()
    assert (split.targets[row, n:] == -1).all() and (split.targets[row, :n] >= 0).all()
    vocab = data.output_vocabulary("shuffle-2")
    assert [vocab[t] for t in split.targets[row, :n]] == data.targets("shuffle-2", s)


@pytest.mark.fast
def test_unknown_tasks_splits_and_windows_are_named():
  with pytest.raises(ValueError, match="Unknown formal-language task 'dyck-2'.*parity"):
    data.check_task("dyck-2")
  with pytest.raises(ValueError, match="Unknown split 'bin1'.*valid2"):
    data.split_strings("parity", "bin1", 3, 0, 3)
  with pytest.raises(ValueError, match=r"\[0, 50\]"):
    data.check_window("parity", data.Window(0, 50), "the training window")
  with pytest.raises(ValueError, match="multiple of 4"):
    data.check_window("abab-star", data.Window(5, 7), "Bin1")
  assert data.check_window("abab-star", data.Window(5, 8), "Bin1") == data.Window(5, 8)
