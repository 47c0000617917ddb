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
  @parameterized.parameters("linear-sum", "dpfp2-delta", "favor64-sum", "linear-gated_sum",
                            "dpfp1-gated_delta")
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


@pytest.mark.parametrize("curve,gate", [("linear-gated_sum", "head"),
                                        ("linear-gated_delta", "channel")])
def test_gated_retrieval_reads_a_plain_loop_float64(curve, gate):
  """A gated retrieval model, written out as a loop: x_t = [onehot(v_t); embed(k_t)], φ̂ the
  sum-normalised φ, α_t = exp(−e^A_log softplus(W_a x_t + dt_bias)) (per memory or per key
  channel), W_t = W_{t−1} diag(α_t) + (v_t − β_t W_{t−1} diag(α_t) φ̂k_t) φ̂k_tᵀ for the gated
  delta rule (β = 1 for the sum), and ŷ = W_T φ̂q of every query."""
  with helpers.x64():
    config, model = _model(curve, gate=gate)
    model = helpers.float64(model)
    batch = data.train_batch(0, 0, batch_size=2, num_keys=6, setting=2)
    keys, values, queries = batch["keys"], batch["values"], batch["queries"]
    y = np.asarray(model(keys, values, queries))
    x = np.concatenate([np.eye(6)[np.asarray(values)],
                        np.asarray(model.embed.embedding[...])[np.asarray(keys)]], -1)
    linear = lambda l, a: a @ np.asarray(l.kernel[...]) + (0 if l.bias is None else
                                                          np.asarray(l.bias[...]))
    elu1 = lambda a: np.where(a > 0, a + 1, np.exp(a))
    phi_k = elu1(linear(model.k_proj, x))
    phi_k = phi_k / phi_k.sum(-1, keepdims=True)                    # keys: no eps
    phi_q = elu1(linear(model.q_proj, np.asarray(model.embed.embedding[...])[
        np.asarray(queries)]))
    phi_q = phi_q / (phi_q.sum(-1, keepdims=True) + 1e-6)           # the authors' query eps
    g = model.gate
    a = linear(g.proj, x if g.down is None else linear(g.down, x)) + np.asarray(g.dt_bias[...])
    alpha = np.exp(-np.exp(np.asarray(g.a_log[...])) * np.log1p(np.exp(a)))   # [B, T, 1|K]
    beta = (1 / (1 + np.exp(-linear(model.beta_proj, x)))[..., 0]
            if model.beta_proj is not None else None)
    for b in range(2):
      w = np.zeros((6, phi_k.shape[-1]))
      for t in range(keys.shape[1]):
        w = w * alpha[b, t]                                           # W diag(α_t)
        v = np.eye(6)[int(values[b, t])]
        kt = phi_k[b, t]
        w = w + (np.outer(beta[b, t] * (v - w @ kt), kt) if beta is not None
                 else np.outer(v, kt))
      np.testing.assert_allclose(y[b], phi_q[b] @ w.T, rtol=1e-9, atol=1e-12)


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
