"""The retrieval model: the same parameters give the same function in every form."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from configs import associative_recall
from experiments.tasks.associative_recall import data
from experiments.tasks import associative_recall as retrieval_task
from tests import helpers


def _model(curve, num_keys=6, **model_overrides):
  config = associative_recall.get_config(curve)
  config.num_keys = num_keys
  config.model.update(model_overrides)
  return config, retrieval_task.build_model(config, nnx.Rngs(0))


def traced(model):
  """The model's __call__ under jax.jit (untraced, a delta or RFWP model dispatches op by op:
  tens of seconds a call on a CPU)."""
  graphdef, state = nnx.split(model)
  return jax.jit(lambda *args, **kwargs: nnx.merge(graphdef, state)(*args, **kwargs))


class ModelFormsTest(chex.TestCase):

  @chex.variants(with_jit=True)
  @parameterized.parameters("linear-sum", "dpfp2-delta", "favor64-sum")
  def test_model_forms_agree_with_gradients(self, curve):
    """The retrieval model's loss and parameter gradients are the same in every form (float64)."""
    self._check_forms(curve)

  @chex.variants(without_jit=True)
  def test_model_forms_agree_untraced(self):
    """Untraced too, one model (every op's forms are proved untraced in test_ops; untraced, the
    delta model alone took 40-160 s of the suite)."""
    self._check_forms("linear-sum")

  def _check_forms(self, curve):
    """The three forms in one (traced or untraced) call: one compile for a curve's forms."""
    batch = data.train_batch(0, 0, batch_size=3, num_keys=6, setting=2)
    forms = ("recurrent", "parallel", "chunked")
    with helpers.x64():
      losses, params = [], None
      for form in forms:
        config, model = _model(curve, form=form, chunk_size="5")
        graphdef, form_params, rest = nnx.split(model, nnx.Param, ...)
        form_params = jax.tree.map(lambda p: p.astype(jnp.float64), form_params)
        params = form_params if params is None else params
        chex.assert_trees_all_equal(form_params, params)       # one seed: the same parameters

        def loss(params, graphdef=graphdef, rest=rest):
          y = nnx.merge(graphdef, params, rest)(batch["keys"], batch["values"], batch["queries"])
          return retrieval_task.retrieval_loss(y, batch["targets"], 6)

        losses.append(loss)
      results = self.variant(lambda p: [jax.value_and_grad(f)(p) for f in losses])(params)
    for form, got in zip(forms, results):
      with self.subTest(form=form):
        chex.assert_tree_all_finite(got[1])
        chex.assert_trees_all_close(got, results[0], rtol=1e-10, atol=1e-13)


def test_input_projection_equals_the_concatenated_input():
  config, model = _model("dpfp1-delta")
  keys, values = jnp.array([[0, 3, 5]]), jnp.array([[2, 2, 4]])
  x = jnp.concatenate([jax.nn.one_hot(values, 6), model.embed(keys)], axis=-1)
  np.testing.assert_allclose(model._input_projection(model.k_proj, keys, values),
                             model.k_proj(x), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(model._input_projection(model.beta_proj, keys, values),
                             model.beta_proj(x), rtol=1e-5, atol=1e-6)


def test_paper_dimensions():
  _, model = _model("dpfp3-sum", num_keys=100)
  assert model.embed.embedding.shape == (100, 220)             # e = int(2.2 S)
  assert model.k_proj.kernel.shape == (320, 64)                # [one-hot ; embedding] -> d = 64
  assert model.beta_proj is None
  _, fwm = _model("tanh-fwm", num_keys=10)
  assert fwm.layer_norm is not None and fwm.beta_proj is not None


def test_favor_redraw_changes_output_and_fixed_projection_does_not():
  _, model = _model("favor64-sum")
  batch = data.train_batch(0, 0, batch_size=2, num_keys=6, setting=1)
  args, model = (batch["keys"], batch["values"], batch["queries"]), traced(model)
  np.testing.assert_array_equal(model(*args), model(*args))
  assert not np.allclose(model(*args), model(*args, projection_key=jax.random.key(3)))


def test_additive_baseline_reads_like_its_definition():
  """The `additive` curve: each query's read-out is softmax_t(wᵀ tanh(q + k_t)) · v."""
  config, model = _model("additive")
  assert model.score_weight is not None and config.model.update_rule == "additive"
  keys, values, queries = jnp.array([[0, 3, 5]]), jnp.array([[2, 2, 4]]), jnp.array([[3]])
  y = model(keys, values, queries)
  q = model.q_proj(model.embed(queries))[0, 0]
  k = model._input_projection(model.k_proj, keys, values)[0]
  scores = jnp.tanh(q + k) @ model.score_weight[...]
  expected = jax.nn.softmax(scores) @ jax.nn.one_hot(values[0], 6)
  np.testing.assert_allclose(y[0, 0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("curve", ["linear-delta_rnn", "dpfp1-rdn", "linear-delta_lstm"])
def test_recurrent_fwp_queries_read_the_final_state_and_write_nothing(curve):
  """Each query is one step from the state after the sequence: two queries give what each gives
  alone, and the prediction depends on the written values (the memory is read)."""
  config, model = _model(curve)
  batch = data.train_batch(0, 0, batch_size=2, num_keys=6, setting=2)
  keys, values, queries = batch["keys"], batch["values"], jnp.array([[1, 4], [0, 5]])
  model = traced(model)
  both = model(keys, values, queries)
  assert both.shape == (2, 2, 6) and np.all(np.isfinite(both))
  for j in range(2):
    np.testing.assert_allclose(model(keys, values, queries[:, j:j + 1])[:, 0], both[:, j],
                               rtol=1e-5, atol=1e-6)
  assert not np.allclose(model(keys, (values + 1) % 6, queries), both)
