"""Golden numbers: the first training steps of two paper models, pinned.

These change when the model's initialisation, the data generator, the loss or the optimizer
change. If such a change is intended, rerun this test, check the new numbers are sensible (losses
near 0.5 at the start: ŷ ≈ 0 costs ½ per query) and update them in the same commit, saying why.
A change of form, chunk size or a pure speed-up must leave them alone (to 1e-5).
"""

import numpy as np
import pytest

from configs import associative_recall
from experiments import optim, train
from experiments.tasks import associative_recall as retrieval_task

pytestmark = pytest.mark.fast   # the golden step: two curves, three steps

GOLDEN = {
    # curve: (cumulative train loss after steps 0, 1, 2; eval loss after 3 steps)
    # The authors' model (fwp's defaults since 2026-12-02: W_k, W_q biases, W_β torch init).
    "linear-sum": ([0.36696046590805054, 0.7334573268890381, 1.0858144760131836],
                   0.38742825388908386),
    "dpfp1-delta": ([0.49126845598220825, 0.982154369354248, 1.4708973169326782],
                    0.4923118054866791),
    # `:before`, the model of the committed results: the numbers pinned before the change,
    # unchanged, so that variant is the old model exactly.
    "linear-sum:before": ([0.36658385396003723, 0.7333740592002869, 1.0859096050262451],
                          0.38746023178100586),
    "dpfp1-delta:before": ([0.4935398995876312, 0.9876163005828857, 1.479515790939331],
                           0.49394771456718445),
}


@pytest.mark.parametrize("curve", sorted(GOLDEN))
def test_first_steps_are_pinned(curve):
  config = associative_recall.get_config(curve)
  config.num_keys = 8
  task = retrieval_task.make(config)
  tx = optim.optimizer(config)
  graphdef, state = train.create_state(task, tx, config.seed)
  train_step = train.compile_step(graphdef, tx, task)
  arrays, losses = state.arrays, []
  for step in range(3):
    arrays = train_step(arrays, step, None)
    losses.append(float(arrays["sums"]["loss"]))
  expected_losses, expected_eval = GOLDEN[curve]
  np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
  np.testing.assert_array_equal(arrays["sums"]["weight"], 3.0)
  eval_loss = task.evaluate(graphdef, arrays["params"], arrays["rest"], 3)["eval_loss"]
  np.testing.assert_allclose(float(eval_loss), expected_eval, rtol=1e-5)
