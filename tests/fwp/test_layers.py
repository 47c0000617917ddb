"""Layers: one set of parameters computes one function, whatever the form."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from fwp import layers
from tests import helpers

D_MODEL, HEADS, D_HEAD, T = 8, 2, 4, 10
LAYER_CASES = [
    dict(feature_map="elu_plus_one", update_rule="sum", normalization="attention"),
    dict(feature_map="dpfp", nu=2, update_rule="delta", normalization="sum"),
    dict(feature_map="favor_plus", num_features=6, update_rule="delta", normalization="sum"),
    dict(feature_map="identity", update_rule="sum", normalization="none"),
    dict(feature_map="dpfp", nu=1, update_rule="delta", normalization="sum_attention"),
]
# The gated rules' layers (fwp.layers.ForgetGate): Gated DeltaNet-like (per-head gates, β up to
# 2) and GLA/KDA-like (per-channel low-rank gates, here on DPFP features, d_dot ≠ d_head).
GATED_CASES = [
    dict(feature_map="elu_plus_one", update_rule="gated_delta", normalization="sum",
         gate="head", beta_max=2.0),
    dict(feature_map="dpfp", nu=1, update_rule="gated_sum", normalization="none",
         gate="channel"),
    dict(feature_map="elu_plus_one", update_rule="gated_delta", normalization="sum",
         gate="channel"),
    # FLA's Gated DeltaNet layer: SiLU short convolutions, L2 q/k, RMSNorm and output gate.
    dict(feature_map="identity", update_rule="gated_delta", normalization="none", gate="head",
         short_conv=4, qk_norm="l2", output_norm="rmsnorm", output_gate=True),
    # DeltaProduct layers: N = 2 with a gate and negative eigenvalues, N = 3 ungated.
    dict(feature_map="identity", update_rule="delta_product", num_writes=2, gate="head",
         normalization="none", beta_max=2.0, short_conv=3, qk_norm="l2", output_norm="rmsnorm"),
    dict(feature_map="elu_plus_one", update_rule="delta_product", num_writes=3, gate="none",
         normalization="sum"),
]
FORMS = [("recurrent", 64), ("parallel", 64), ("chunked", 3)]


def _outputs_and_grads(config):
  """(float64 parameters, fn(params, x) -> (outputs, parameter gradients of a loss that touches
  the outputs and the final state))."""
  layer = layers.FastWeightAttention(D_MODEL, HEADS, D_HEAD, config, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), params)

  def fn(params, x):
    def loss(params):
      out, state = nnx.merge(graphdef, params, rest)(x, return_state=True)
      return jnp.sum(out ** 2) + jnp.sum(state.w), out

    (_, out), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return out, grads

  return params, fn


class LayerFormsTest(chex.TestCase):

  @chex.variants(with_jit=True)
  @parameterized.parameters(*LAYER_CASES, *GATED_CASES)
  def test_layer_forms_agree_float64(self, **case):
    """One layer's parameters, each form: the same outputs and parameter gradients (float64)."""
    self._check_forms(case)

  @chex.variants(without_jit=True)
  @parameterized.parameters(LAYER_CASES[0], LAYER_CASES[3])
  def test_layer_forms_agree_untraced_float64(self, **case):
    """Untraced too, for the cheap cases (every op's forms are proved untraced in test_ops)."""
    self._check_forms(case)

  def _check_forms(self, case):
    """Every form of FORMS in one (traced or untraced) call: one compile for a case's forms."""
    with helpers.x64():
      x = jnp.asarray(np.random.default_rng(0).normal(size=(2, T, D_MODEL)))
      built = [_outputs_and_grads(layers.FastWeightConfig(form=form, chunk_size=chunk_size,
                                                          **case))
               for form, chunk_size in FORMS]
      params0 = built[0][0]
      for params, _ in built[1:]:
        chex.assert_trees_all_equal(params, params0)           # the same parameters
      results = self.variant(lambda p, x: [fn(p, x) for _, fn in built])(params0, x)
      out0, grads0 = results[0]
      for (form, chunk_size), (out, grads) in zip(FORMS, results):
        with self.subTest(form=form, chunk_size=chunk_size):
          chex.assert_shape(out, (2, T, D_MODEL))
          chex.assert_tree_all_finite(grads)
          chex.assert_trees_all_close((out, grads), (out0, grads0), rtol=1e-10, atol=1e-12)


def test_sum_attention_is_the_authors_delta_lm_layer_float64():
  """normalization="sum_attention": lmtool-fwp's delta layers under their default flags, written
  out per head as a loop: φ̂ = φ/Σφ for q and k, W_t = W + β(v − W φ̂k)φ̂kᵀ, and
  y_t = W_t φ̂q_t / (Σ_{s≤t} φ̂k_s · φ̂q_t + eps); streamed one step at a time, the same."""
  with helpers.x64():
    config = layers.FastWeightConfig(feature_map="dpfp", nu=1, update_rule="delta",
                                     normalization="sum_attention", eps=1e-5, form="chunked",
                                     chunk_size=3)
    layer = layers.FastWeightAttention(D_MODEL, HEADS, D_HEAD, config, rngs=nnx.Rngs(1))
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
    layer = nnx.merge(graphdef, jax.tree.map(lambda a: a.astype(jnp.float64), params), rest)
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, T, D_MODEL)))
    out = np.asarray(layer(x))
    heads = lambda a: np.asarray(a).reshape(2, T, HEADS, -1)
    q, k, v = (heads(p(x)) for p in (layer.q_proj, layer.k_proj, layer.v_proj))
    beta = 1 / (1 + np.exp(-np.asarray(layer.beta_proj(x))))
    phi = lambda a: (lambda r: r * np.roll(r, 1, -1))(np.concatenate([np.maximum(a, 0),
                                                                       np.maximum(-a, 0)], -1))
    hat = lambda a: phi(a) / phi(a).sum(-1, keepdims=True)
    y = np.zeros((2, T, HEADS, D_HEAD))
    for b in range(2):
      for h in range(HEADS):
        w, z = np.zeros((D_HEAD, 2 * D_HEAD)), np.zeros(2 * D_HEAD)
        for t in range(T):
          kt, qt = hat(k[b, t, h]), hat(q[b, t, h])
          w = w + beta[b, t, h] * np.outer(v[b, t, h] - w @ kt, kt)
          z = z + kt
          y[b, t, h] = w @ qt / (z @ qt + 1e-5)
    expected = np.asarray(layer.out_proj(jnp.asarray(y.reshape(2, T, -1))))
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-13)
    state, steps = layer.init_state(2, jnp.float64), []
    for t in range(T):
      o, state = layer(x[:, t:t + 1], initial_state=state, return_state=True)
      steps.append(o)
    np.testing.assert_allclose(np.concatenate(steps, 1), out, rtol=1e-10, atol=1e-13)


def _case_id(case):
  return "-".join([case["update_rule"] + str(case.get("num_writes", "")), case["gate"]] +
                  (["conv"] if case.get("short_conv") else []))


@pytest.mark.parametrize("case", GATED_CASES, ids=_case_id)
def test_gated_layer_decodes_token_by_token_float64(case):
  """The gated layers read one token at a time from their state (T = 1 calls, the LM's decoding
  path): the chunked pass's outputs and final state (fast weights and the short convolutions'
  inputs), float64; the gate really forgets (0 < α < 1) and β reaches past 1 when
  beta_max = 2."""
  config = layers.FastWeightConfig(form="chunked", chunk_size=3, **case)
  with helpers.x64():
    layer = helpers.float64(layers.FastWeightAttention(D_MODEL, HEADS, D_HEAD, config,
                                                       rngs=nnx.Rngs(2)))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, T, D_MODEL)))
    graphdef, weights = nnx.split(layer)
    call = jax.jit(lambda w, x, s: nnx.merge(graphdef, w)(x, initial_state=s, return_state=True))
    full, final = jax.jit(lambda w, x: nnx.merge(graphdef, w)(x, return_state=True))(weights, x)
    state, outs = layer.init_state(2, dtype=jnp.float64), []
    for t in range(T):
      out, state = call(weights, x[:, t:t + 1], state)
      outs.append(out)
    chex.assert_trees_all_close((jnp.concatenate(outs, 1), state.w, state.conv),
                                (full, final.w, final.conv), rtol=1e-10, atol=1e-12)
    assert (state.conv is None) == (not config.short_conv)
    if config.gated:
      alpha = jnp.exp(layer.gate(x))
      assert float(alpha.min()) > 0 and float(alpha.max()) < 1
    if config.beta_max == 2:
      assert float(jnp.max(2 * jax.nn.sigmoid(layer.beta_proj(x)))) > 1


def test_fwm_layer_runs_recurrently_and_streams():
  config = layers.FastWeightConfig(feature_map="tanh", update_rule="fwm", normalization="none",
                                   form="recurrent")
  layer = layers.FastWeightAttention(D_MODEL, HEADS, D_HEAD, config, rngs=nnx.Rngs(1))
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, T, D_MODEL)), jnp.float32)
  full, state = layer(x, return_state=True)
  first, mid = layer(x[:, :4], return_state=True)
  second = layer(x[:, 4:], initial_state=mid)
  helpers.assert_rel_close(jnp.concatenate([first, second], 1), full, 1e-5)
  norms = jnp.sqrt(jnp.sum(state.w ** 2, axis=(-2, -1)))
  assert float(jnp.max(norms)) <= 1.0 + 1e-6


def test_favor_projection_is_state_not_parameter_and_redraws():
  config = layers.FastWeightConfig(feature_map="favor_plus", num_features=6,
                                   update_rule="sum", normalization="attention")
  layer = layers.FastWeightAttention(D_MODEL, HEADS, D_HEAD, config, rngs=nnx.Rngs(2))
  param_shapes = [p.shape for p in jax.tree.leaves(nnx.state(layer, nnx.Param))]
  assert param_shapes == [(HEADS * D_HEAD, D_MODEL)] + [(D_MODEL, HEADS * D_HEAD)] * 3
  projection = nnx.state(layer, layers.FeatureProjection)
  assert jax.tree.leaves(projection)[0].shape == (6, D_HEAD)
  x = jnp.ones((1, 3, D_MODEL))
  before = layer(x)
  np.testing.assert_array_equal(before, layer(x))                 # fixed by default
  assert not np.allclose(before, layer(x, projection_key=jax.random.key(5)))
  layer.redraw_projection(jax.random.key(6))
  assert not np.allclose(before, layer(x))


def test_softmax_attention_is_causal_and_matches_definition():
  layer = layers.SoftmaxAttention(D_MODEL, HEADS, D_HEAD, rngs=nnx.Rngs(3))
  x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 6, D_MODEL)), jnp.float32)
  out, (k, v, length) = layer(x, return_state=True)
  assert int(length) == 6
  assert k.shape == v.shape == (1, 6, HEADS, D_HEAD)
  # Position 2 attends only to 0..2: changing later inputs leaves it alone.
  x2 = x.at[:, 3:].set(7.0)
  np.testing.assert_allclose(layer(x2)[:, :3], out[:, :3], rtol=1e-6)
  q = layer.q_proj(x).reshape(1, 6, HEADS, D_HEAD)[0, 2, 0]
  s = k[0, :3, 0] @ q / np.sqrt(D_HEAD)
  manual = jax.nn.softmax(s) @ v[0, :3, 0]
  y = layers.causal_softmax_attention(q[None, None, None].repeat(6, 1), k, v)
  np.testing.assert_allclose(y[0, 2, 0], manual, rtol=1e-5)


def test_additive_attention_matches_a_plain_loop():
  """Bahdanau scoring, per head and query: softmax over s ≤ t of wᵀ tanh(q_t + k_s)."""
  with helpers.x64():
    rng = np.random.default_rng(5)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 5, 2, 3))) for _ in range(3))
    w = jnp.asarray(rng.normal(size=(2, 3)))
    y = layers.causal_softmax_attention(q, k, v, score_weight=w)
    for t in range(5):
      for h in range(2):
        scores = np.array([np.dot(w[h], np.tanh(q[0, t, h] + k[0, s, h])) for s in range(t + 1)])
        p = np.exp(scores - scores.max())
        expected = (p / p.sum()) @ np.asarray(v[0, :t + 1, h])
        np.testing.assert_allclose(y[0, t, h], expected, rtol=1e-12)


@pytest.mark.parametrize("field,value,message", [
    ("feature_map", "relu", "valid choices: identity, elu_plus_one"),
    ("update_rule", "oja", "valid choices: sum, delta, fwm"),
    ("normalization", "layer", "valid choices: none, attention, sum"),
    ("form", "fast", "valid choices: recurrent, parallel, chunked"),
    ("chunk_size", 0, "positive integer"),
    ("nu", 0, "nu >= 1"),
    ("gate", "row", "Unknown gate 'row'; valid choices: head, channel"),
    ("beta_max", 3.0, r"beta_max must be in \(0, 2\]"),
])
def test_bad_config(field, value, message):
  with pytest.raises(ValueError, match=message):
    layers.FastWeightConfig(**{"feature_map": "dpfp", field: value})


@pytest.mark.parametrize("fields,message", [
    (dict(update_rule="gated_sum", normalization="attention"),
     "takes normalization 'none' or 'sum'"),
    (dict(update_rule="delta", num_writes=2), "num_writes is delta_product's N >= 1"),
    (dict(update_rule="delta_product", num_writes=0), "got num_writes=0"),
    (dict(update_rule="gated_delta", gate="none"), "needs a forget gate"),
    (dict(update_rule="delta", qk_norm="l2"), "it needs normalization 'none', got 'sum'"),
    (dict(update_rule="delta", qk_norm="rms"), "Unknown qk_norm 'rms'; valid choices: none, l2"),
    (dict(update_rule="delta", output_norm="layer"),
     "Unknown output_norm 'layer'; valid choices: none, rmsnorm"),
    (dict(update_rule="delta", output_gate=1), "output_gate must be True or False"),
    (dict(update_rule="delta", short_conv=-1), "convolution width >= 1, or 0"),
    (dict(update_rule="delta", short_conv=4, recurrence="delta_rnn"),
     "not of the recurrent FWPs"),
])
def test_gated_layers_name_what_they_cannot_take(fields, message):
  with pytest.raises(ValueError, match=message):
    layers.FastWeightConfig(**dict(dict(normalization="sum"), **fields))


def test_a_one_write_delta_product_layer_is_the_delta_rule_layer_float64():
  """delta_product with N = 1 (the name delta_product1) and no gate: the same parameters, drawn
  in the same order, and the delta rule layer's outputs and final state."""
  with helpers.x64():
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, T, D_MODEL)))
    built = [helpers.float64(layers.FastWeightAttention(
        D_MODEL, HEADS, D_HEAD, layers.FastWeightConfig(form="chunked", chunk_size=3,
                                                        normalization="sum", **rule),
        rngs=nnx.Rngs(3))) for rule in (dict(update_rule="delta"),
                                         dict(update_rule="delta_product", num_writes=1,
                                              gate="none"))]
    chex.assert_trees_all_equal(nnx.state(built[0], nnx.Param), nnx.state(built[1], nnx.Param))
    (y0, s0), (y1, s1) = (layer(x, return_state=True) for layer in built)
    chex.assert_trees_all_close((y1, s1.w), (y0, s0.w), rtol=1e-10, atol=1e-12)


def test_fla_gated_deltanet_layer_is_a_plain_loop_float64():
  """FLA's GatedDeltaNet layer, written out per head as a loop a reader can check: SiLU of a
  width-4 depthwise causal convolution on each of q, k, v; q, k L2-normalised, q scaled by
  d^-1/2; α = exp(−e^A_log softplus(W_a x + dt_bias)), β = 2σ(W_β x);
  W_t = α_t W + β_t (v_t − α_t W k_t) k_tᵀ, y_t = W_t q_t; per-head RMSNorm × SiLU(W_g x)."""
  config = layers.FastWeightConfig(feature_map="identity", update_rule="gated_delta",
                                   normalization="none", beta_max=2.0, short_conv=4,
                                   qk_norm="l2", output_norm="rmsnorm", output_gate=True,
                                   form="chunked", chunk_size=3)
  with helpers.x64():
    layer = helpers.float64(layers.FastWeightAttention(D_MODEL, HEADS, D_HEAD, config,
                                                       rngs=nnx.Rngs(4)))
    layer.output_scale[...] = jnp.linspace(0.5, 1.5, D_HEAD)       # not the ones it starts as
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, T, D_MODEL)))
    out = np.asarray(layer(x))
    silu = lambda a: a / (1 + np.exp(-a))
    sigmoid = lambda a: 1 / (1 + np.exp(-a))

    def conv(proj, module):
      a, w = np.asarray(proj(x)), np.asarray(module.kernel[...])      # [B, T, C], [4, C]
      padded = np.concatenate([np.zeros((2, 3, a.shape[2])), a], 1)
      return silu(np.stack([sum(w[j] * padded[:, t + j] for j in range(4))
                            for t in range(T)], 1))

    heads = lambda a: a.reshape(2, T, HEADS, D_HEAD)
    q, k, v = (heads(conv(p, m)) for p, m in zip((layer.q_proj, layer.k_proj, layer.v_proj),
                                                 layer.convs))
    beta = 2 * sigmoid(np.asarray(layer.beta_proj(x)))
    gate = layer.gate
    a = np.asarray(gate.proj(x)) + np.asarray(gate.dt_bias[...])
    alpha = np.exp(-np.exp(np.asarray(gate.a_log[...])) * np.log1p(np.exp(a)))
    l2 = lambda a: a / np.sqrt(np.sum(a * a) + 1e-6)
    g = heads(np.asarray(layer.output_gate(x)))
    y = np.zeros((2, T, HEADS, D_HEAD))
    for b in range(2):
      for h in range(HEADS):
        w = np.zeros((D_HEAD, D_HEAD))
        for t in range(T):
          kt, qt = l2(k[b, t, h]), l2(q[b, t, h]) / np.sqrt(D_HEAD)
          w = alpha[b, t, h] * w
          w = w + beta[b, t, h] * np.outer(v[b, t, h] - w @ kt, kt)
          o = w @ qt
          o = o / np.sqrt(np.mean(o * o) + 1e-5) * np.linspace(0.5, 1.5, D_HEAD)
          y[b, t, h] = o * silu(g[b, t, h])
    expected = np.asarray(layer.out_proj(jnp.asarray(y.reshape(2, T, -1))))
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-13)


def test_bad_combinations():
  with pytest.raises(ValueError, match="nonlinear in W"):
    layers.FastWeightConfig(update_rule="fwm", form="chunked")
  with pytest.raises(ValueError, match="positive feature map"):
    layers.FastWeightConfig(feature_map="tanh", normalization="sum")
  layer = layers.FastWeightAttention(D_MODEL, HEADS, D_HEAD, layers.FastWeightConfig(),
                                     rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"\[batch, time, 8\]"):
    layer(jnp.ones((1, 3, D_MODEL + 1)))
  with pytest.raises(ValueError, match="Only favor_plus"):
    layer.redraw_projection(jax.random.key(0))
