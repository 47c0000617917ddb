"""The task's data: properties of both settings, and purity in (seed, step)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.tasks.associative_recall import data


def test_setting1_has_every_key_once_and_target_is_its_value():
  b = data.train_batch(0, 3, batch_size=16, num_keys=12, setting=1)
  keys, values = np.asarray(b["keys"]), np.asarray(b["values"])
  assert keys.shape == (16, 12)
  for row in keys:
    assert sorted(row) == list(range(12))                      # no repeated keys
  for i in range(16):
    pos = list(keys[i]).index(b["queries"][i, 0])
    assert b["targets"][i, 0] == values[i, pos]


def test_setting2_target_is_last_occurrence():
  b = data.train_batch(1, 5, batch_size=64, num_keys=6, setting=2)
  keys, values = np.asarray(b["keys"]), np.asarray(b["values"])
  assert keys.shape == (64, 12)
  repeated = 0
  for i in range(64):
    q = b["queries"][i, 0]
    positions = np.nonzero(keys[i] == q)[0]
    assert b["targets"][i, 0] == values[i, positions.max()]
    repeated += len(positions) > 1
  assert repeated > 10, "with replacement, queried keys must often repeat"


def test_batches_are_pure_functions_of_seed_and_step():
  a = data.train_batch(7, 11, batch_size=4, num_keys=10, setting=2)
  b = data.train_batch(7, 11, batch_size=4, num_keys=10, setting=2)
  c = data.train_batch(7, 12, batch_size=4, num_keys=10, setting=2)
  d = data.train_batch(8, 11, batch_size=4, num_keys=10, setting=2)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["keys"], c["keys"])
  assert not np.array_equal(a["keys"], d["keys"])


def test_eval_queries_every_unique_key_up_to_the_cap():
  e = data.eval_batch(0, 100, num_keys=8, setting=2, num_sequences=20)
  keys, queries, mask = (np.asarray(e[k]) for k in ("keys", "queries", "mask"))
  assert keys.shape == (20, 8)                # the authors' setting-2 eval: length S, not 2S
  for i in range(20):
    assert set(queries[i][mask[i]]) == set(keys[i])
  for target, m in zip(np.asarray(e["targets"]).ravel(), mask.ravel()):
    assert (target >= 0) == m
  full = data.eval_batch(0, 100, num_keys=8, setting=2, full_length=True)
  assert full["keys"].shape == (20, 16)
  capped = data.eval_batch(0, 1, num_keys=300, setting=1, num_sequences=2)
  assert capped["queries"].shape == (2, 200) and bool(np.all(capped["mask"]))


@pytest.mark.parametrize("n", [1, 7, 100, data.PAIRWISE_MAX, data.PAIRWISE_MAX + 1])
def test_argsort_rows_is_a_stable_argsort(n):
  """The setting-1 permutations are exactly jnp.argsort's (so the data stream did not change
  when the faster ranking replaced it), ties included."""
  u = jax.random.uniform(jax.random.key(n), (5, n))
  u = u.at[:, n // 2].set(u[:, 0]).at[1].set(0.5)         # ties: a pair in each row, a whole row
  np.testing.assert_array_equal(data.argsort_rows(u), jnp.argsort(u, axis=-1, stable=True))
  assert data.argsort_rows(u).dtype == jnp.int32
