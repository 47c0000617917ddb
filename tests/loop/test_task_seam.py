"""The Task seam: a third family, defined in this file alone, trains behind the one loop.

The toy family is a linear classifier of the sign of a random vector's sum, registered with
experiments.tasks.register (nothing in experiments/ names it). It uses what a new family would:
host batches that are a function of (seed, step), a loss with a token weight that varies per
batch and an aux number, its own optimizer, a higher-is-better selection metric (accuracy), a
resumable field of its own and a record of its data. The tests train it with the loop, resume it
bitwise, and check that patience and the best checkpoint follow the maximum.
"""

import json
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from configs import common
from experiments import tasks, train
from tests.helpers import final_params, read_metrics, strip_timing

DIM = 6


class ToyTask:
  selection = ("accuracy", "max")

  def __init__(self, config, mesh=None):
    del mesh
    self.config = config
    self.summary_fields = dict(toy_dim=DIM)
    self._eval = jax.jit(self._eval_numbers, static_argnums=0)

  def build_model(self, rngs):
    return nnx.Linear(DIM, 2, rngs=rngs)

  def optimizer(self):
    return optax.sgd(self.config.learning_rate, momentum=0.9)

  def _examples(self, stream: int, index: int, n: int):
    rng = np.random.default_rng([self.config.seed, stream, index])
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x, (x.sum(-1) > 0).astype(np.int32)

  def host_batch(self, step):
    x, y = self._examples(0, step, self.config.batch_size)
    # A varying number of scored examples per batch: the train loss must be weighted by it.
    mask = (np.arange(self.config.batch_size) < 2 + step % 5).astype(np.float32)
    return dict(x=x, y=y, mask=mask)

  def loss(self, model, batch, step):
    del step
    nll = optax.softmax_cross_entropy_with_integer_labels(model(batch["x"]), batch["y"])
    weight = batch["mask"].sum()
    correct = (model(batch["x"]).argmax(-1) == batch["y"]) * batch["mask"]
    return (nll * batch["mask"]).sum() / weight, {"weight": weight,
                                                  "accuracy": correct.sum() / weight}

  def _eval_numbers(self, graphdef, params, rest, x, y):
    logits = nnx.merge(graphdef, params, rest)(x)
    return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
            (logits.argmax(-1) == y).mean())

  def evaluate(self, graphdef, params, rest, step):
    x, y = self._examples(1, 0, 256)
    loss, accuracy = self._eval(graphdef, params, rest, x, y)
    script = self.config.scripted_accuracy
    if script:     # the selection test's accuracies, one per eval, in place of the real ones
      accuracy = script[step // self.config.eval_every - 1]
    return dict(eval_loss=loss, accuracy=accuracy)

  def final(self, graphdef, params, rest, step):
    x, y = self._examples(2, 0, self.config.eval_examples)
    return dict(test_accuracy=self._eval(graphdef, params, rest, x, y)[1])


def _validate(config):
  if config.eval_examples < 1:
    raise ValueError(f"config.eval_examples must be >= 1, got {config.eval_examples!r}.")


TOY = types.SimpleNamespace(validate=_validate, make=ToyTask, RESUMABLE=("eval_examples",),
                            ADDED_FIELDS={}, data_identity=lambda config: {"toy": DIM})


@pytest.fixture(autouse=True)
def toy_family():
  tasks.register("toy", TOY)
  yield
  tasks._FAMILIES.pop("toy")
  tasks.TASKS = tuple(tasks._FAMILIES)


def toy_config(**overrides) -> ml_collections.ConfigDict:
  c = common.loop_config("toy")
  c.learning_rate, c.batch_size, c.max_steps, c.eval_every = 0.05, 16, 40, 10
  c.checkpoint_every, c.keep_checkpoints, c.tensorboard = 10, 1, False
  c.eval_examples = 256         # test examples of the final evaluation (may change on resume)
  c.scripted_accuracy = ()
  c.update(overrides)
  return c


def test_the_toy_family_trains_with_a_weighted_train_loss(tmp_path):
  summary = train.train(toy_config(), str(tmp_path))
  metrics = read_metrics(tmp_path)
  assert [m["step"] for m in metrics] == [10, 20, 30, 40]
  assert set(metrics[0]) >= {"train_loss", "train_accuracy", "eval_loss", "accuracy"}
  assert metrics[-1]["accuracy"] > 0.8 and metrics[-1]["eval_loss"] < metrics[0]["eval_loss"]
  assert summary["best_accuracy"] == max(m["accuracy"] for m in metrics)
  assert summary["final_accuracy"] == metrics[-1]["accuracy"]
  assert summary["stop_reason"] == "max_steps" and summary["toy_dim"] == DIM
  assert 0.8 < summary["test_accuracy"] <= 1.0
  saved = json.load(open(tmp_path / "config.json"))
  assert saved["task"] == "toy" and saved["data_identity"] == {"toy": DIM}


def test_the_train_loss_is_weighted_by_each_batch(tmp_path):
  """train_loss over an eval interval is Σ w·loss / Σ w, w the batch's scored examples."""
  config = toy_config(max_steps=10)
  task = ToyTask(config)
  tx = task.optimizer()
  graphdef, state = train.create_state(task, tx, config.seed)
  step_fn = train.compile_step(graphdef, tx, task)
  arrays, losses, weights = state.arrays, [], []
  for step in range(3):
    params = arrays["params"]
    loss, aux = task.loss(nnx.merge(graphdef, params, arrays["rest"]),
                          jax.tree.map(jnp.asarray, task.host_batch(step)), step)
    losses.append(float(loss))
    weights.append(float(aux["weight"]))
    arrays = step_fn(arrays, step, task.host_batch(step))
  assert weights == [2.0, 3.0, 4.0]
  np.testing.assert_allclose(float(arrays["sums"]["loss"]) / float(arrays["sums"]["weight"]),
                             np.dot(losses, weights) / sum(weights), rtol=1e-6)


def test_the_toy_family_resumes_bitwise(tmp_path):
  alone, split = tmp_path / "alone", tmp_path / "split"
  train.train(toy_config(), str(alone))
  first = train.train(toy_config(max_steps=20), str(split))
  assert first["steps"] == 20
  again = train.train(toy_config(eval_examples=128), str(split))   # a resumable field of its own
  assert again["steps"] == 40
  assert strip_timing(read_metrics(alone)) == strip_timing(read_metrics(split))
  for a, b in zip(final_params(alone), final_params(split)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="learning_rate"):    # a field that changes the run
    train.train(toy_config(max_steps=60, learning_rate=0.1), str(split))


def test_patience_and_the_best_checkpoint_follow_the_maximum(tmp_path):
  """Accuracy 0.2, 0.9, 0.5, 0.4, 0.3 with patience 2: the best is the second eval (a min-metric
  would pick the first), the run stops after the fifth, and the best checkpoint is kept."""
  config = toy_config(max_steps=100, patience=2, scripted_accuracy=(0.2, 0.9, 0.5, 0.4, 0.3))
  summary = train.train(config, str(tmp_path))
  assert summary["stop_reason"] == "patience" and summary["steps"] == 50
  assert summary["best_accuracy"] == 0.9 and summary["final_accuracy"] == 0.3
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps == [20, 50]           # the best (by the maximum) and the latest
