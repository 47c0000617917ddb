"""The language model: its forms agree, it is causal, and decoding it as an RNN token by token
gives the parallel pass's log-probabilities (float64, 1e-10), from an empty or a carried state."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from fwp import layers, lm
from tests.helpers import assert_rel_close, x64

VOCAB, T = 13, 8
FW = layers.FastWeightConfig
MODELS = {
    "transformer": None,
    "additive": None,
    "fwp91-sum": FW("identity", update_rule="sum", normalization="none"),
    "linear-sum-attention": FW("elu_plus_one", update_rule="sum", normalization="attention"),
    "linear-delta": FW("elu_plus_one", update_rule="delta", normalization="sum"),
    "dpfp2-sum": FW("dpfp", nu=2, update_rule="sum", normalization="sum"),
    "favor4-delta": FW("favor_plus", num_features=4, update_rule="delta", normalization="sum"),
    "tanh-fwm": FW("tanh", update_rule="fwm", normalization="none", form="recurrent"),
    # Recurrent FWPs (fwp.rfwp): the Delta RNN / LSTM's Delta Nets have every form; RDN is a scan.
    "linear-delta_rnn": FW("elu_plus_one", update_rule="delta", normalization="sum",
                           recurrence="delta_rnn"),
    "dpfp2-rdn": FW("dpfp", nu=2, update_rule="delta", normalization="sum", recurrence="rdn"),
    "linear-delta_lstm": FW("elu_plus_one", update_rule="delta", normalization="sum",
                            recurrence="delta_lstm"),
    # The modern rules: FLA's Gated DeltaNet layer (its short convolutions carry state too), and
    # DeltaProduct (N = 2) under a per-channel gate with β up to 2.
    "fla-gated_delta": FW("identity", update_rule="gated_delta", normalization="none",
                          short_conv=4, qk_norm="l2", output_norm="rmsnorm", output_gate=True),
    "linear-delta_product2-neg": FW("elu_plus_one", update_rule="delta_product", num_writes=2,
                                    gate="channel", beta_max=2.0, normalization="sum"),
}
FORMS = (("recurrent", 64), ("parallel", 64), ("chunked", 3))


# Every model kind, every feature map and normalisation at least once, each form at least once
# (the full product adds minutes and no new code path: φ and the normaliser act before the rule,
# per position, and the forms agree with each other below and in tests/fwp/test_layers.py).
DECODE_CASES = [("transformer", None, None), ("additive", None, None), ("tanh-fwm", None, None),
                ("linear-delta", "chunked", 3), ("linear-sum-attention", "recurrent", 64),
                ("fwp91-sum", "parallel", 64), ("dpfp2-sum", "chunked", 3),
                ("favor4-delta", "parallel", 64), ("linear-delta_rnn", "chunked", 3),
                ("dpfp2-rdn", None, None), ("linear-delta_lstm", "chunked", 3),
                ("fla-gated_delta", "chunked", 3), ("linear-delta_product2-neg", "chunked", 3)]


def build(name, form=None, chunk=64, **overrides):
  """A tiny LM in float64 (parameters cast after init, so every form shares them)."""
  fw = MODELS[name]
  if name == "additive":
    overrides = dict(overrides, scoring="additive")
  if fw is not None and form is not None:
    fw = dataclasses.replace(fw, form=form, chunk_size=chunk)
  config = lm.LMConfig(vocab_size=VOCAB, num_layers=2, d_model=8, num_heads=2, d_head=4,
                       d_ff=16, dropout=0.0, fast_weight=fw, **overrides)
  model = lm.TransformerLM(config, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating)
                       else a, state)
  return nnx.merge(graphdef, state)


def tokens(seed=0, b=2, t=T):
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (b, t)), jnp.int32)


def decode(model, toks, state, transform=lambda f: f):
  """Token by token through model.step (`transform`: jax.jit for traced steps)."""
  graphdef, weights = nnx.split(model)
  step = transform(lambda w, s, tok: nnx.merge(graphdef, w).step(s, tok))
  out = []
  for t in range(toks.shape[1]):
    log_probs, state = step(weights, state, toks[:, t])
    out.append(log_probs)
  return jnp.stack(out, axis=1), state


# The sum rule with its attention normaliser, the delta rule, and an RFWP over each form's Delta
# Net; each feature map's forms agree in tests/fwp/test_layers.py (φ acts per position, before the
# rule).
FORMS_CASES = ["linear-sum-attention", "linear-delta", "linear-delta_rnn"]


class LMEquivalenceTest(chex.TestCase):

  @chex.variants(with_jit=True)
  @parameterized.parameters(*DECODE_CASES)
  def test_decoding_as_an_rnn_equals_the_parallel_pass(self, name, form, chunk):
    """The parallel pass against token-by-token decoding, both traced."""
    self._check_decoding(name, form, chunk)

  @chex.variants(without_jit=True)
  @parameterized.parameters(("linear-delta", "chunked", 3), ("transformer", None, None))
  def test_decoding_as_an_rnn_equals_the_untraced_parallel_pass(self, name, form, chunk):
    """Untraced too, for two cheap cases (the RFWPs' untraced passes alone took ~2 min)."""
    self._check_decoding(name, form, chunk)

  def _check_decoding(self, name, form, chunk):
    with x64():
      model, toks = build(name, form, chunk), tokens()
      graphdef, weights = nnx.split(model)
      full = self.variant(lambda w, t: nnx.merge(graphdef, w)(t))(weights, toks)
      chex.assert_shape(full, (2, T, VOCAB))
      chex.assert_tree_all_finite(full)
      capacity = dict(cache_capacity=T, dtype=jnp.float64)
      stepped, _ = decode(model, toks, model.init_state(2, **capacity), self.variant)
      chex.assert_trees_all_close(stepped, full, rtol=1e-10, atol=1e-12)
      # A prompt in two pieces (the layer's form, carrying state), then stepping: the same.
      piece = self.variant(lambda w, s, t: nnx.merge(graphdef, w)(t, state=s, return_state=True))
      state = model.init_state(2, **capacity)
      first, state = piece(weights, state, toks[:, :3])
      second, state = piece(weights, state, toks[:, 3:6])
      rest, state = decode(model, toks[:, 6:], state, self.variant)
      chex.assert_trees_all_close(jnp.concatenate([first, second, rest], axis=1), full,
                                  rtol=1e-10, atol=1e-12)
      assert int(state.position) == T

  @chex.variants(with_jit=True)
  @parameterized.parameters(*FORMS_CASES)
  def test_forms_agree_on_outputs_and_parameter_gradients(self, name):
    self._check_forms(name)

  @chex.variants(without_jit=True)
  def test_forms_agree_untraced(self):
    """Untraced too, for the sum rule (every op's forms are proved untraced in test_ops)."""
    self._check_forms("linear-sum-attention")

  def _check_forms(self, name):
    """Outputs, loss and parameter gradients of every form in FORMS, in one (traced or untraced)
    call: the forms share the parameters (cast after init), so one compile serves them all."""
    with x64():
      toks = tokens(1)
      splits = [nnx.split(build(name, form, chunk), nnx.Param, ...) for form, chunk in FORMS]
      params = splits[0][1]

      def every_form(params):
        out = []
        for graphdef, _, rest in splits:
          loss = lambda p: lm.cross_entropy(nnx.merge(graphdef, p, rest)(toks[:, :-1]),
                                            toks[:, 1:])
          out.append((nnx.merge(graphdef, params, rest)(toks), jax.value_and_grad(loss)(params)))
        return out

      results = self.variant(every_form)(params)
      out_r, (loss_r, grads_r) = results[0]
      for (form, chunk), (out, (loss, grads)) in zip(FORMS[1:], results[1:]):
        with self.subTest(form=form, chunk_size=chunk):
          chex.assert_tree_all_finite(grads)
          chex.assert_trees_all_close(out, out_r, rtol=1e-10, atol=1e-12)
          chex.assert_trees_all_close(loss, loss_r, rtol=1e-12)
          # Relative to each leaf's scale: gradient leaves here span orders of magnitude.
          assert_rel_close(grads, grads_r, 1e-10, f"{name} {form} gradients")


@pytest.mark.parametrize("name,form", [("linear-delta", "chunked"), ("dpfp2-sum", "parallel"),
                                       ("transformer", None), ("additive", None),
                                       ("tanh-fwm", None), ("linear-delta_rnn", "chunked"),
                                       ("dpfp2-rdn", None)])   # Delta LSTM: tests/fwp/test_rfwp.py
def test_a_later_token_never_changes_an_earlier_log_probability(name, form):
  """By gradients: ∂ log p_t / ∂ x_s = 0 for every s > t (x: the embedded inputs)."""
  with x64():
    model = build(name, form, 3)
    x = model.embed_tokens(tokens(2, b=1))
    jac = jax.jit(jax.jacrev(lambda x: jnp.sum(model.forward(x), axis=-1)))(x)   # [1,T,1,T,D]
    influence = np.abs(np.asarray(jac[0, :, 0])).sum(-1)                   # [t, s]
    assert np.all(influence[np.triu_indices(T, 1)] == 0.0)
    assert np.all(influence[np.diag_indices(T)] > 0.0)


@pytest.mark.parametrize("form,chunk", FORMS)
def test_the_1991_fwp_layer_is_masked_linear_attention(form, chunk):
  """fwp91-sum: the fast weight layer with φ = identity and no normaliser computes exactly the
  unnormalised linear Transformer's (QKᵀ ⊙ M)V, per head, in every form."""
  with x64():
    layer = build("fwp91-sum", form, chunk).blocks[0].attention
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, T, 8)))
    q, k, v = (p(x).reshape(2, T, 2, 4) for p in (layer.q_proj, layer.k_proj, layer.v_proj))
    y, _ = layers.fast_weight_attention(q, k, v, None, layer.config)
    mask = np.tril(np.ones((T, T)))
    expected = jnp.einsum("bhts,bshv->bthv", jnp.einsum("bthd,bshd->bhts", q, k) * mask, v)
    chex.assert_trees_all_close(y, expected, rtol=1e-12, atol=1e-12)


def test_adaptive_softmax_is_a_distribution_over_the_vocabulary():
  with x64():
    model = build("linear-delta", "chunked", 3, adaptive_cutoffs=(4, 9, 100))
    log_probs = model(tokens())
  assert model.config.cutoffs == (4, 9)          # a cutoff past the vocabulary is dropped
  np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-12)


def test_dropout_is_a_function_of_its_key_and_off_without_one():
  config = lm.LMConfig(vocab_size=VOCAB, num_layers=1, d_model=8, num_heads=2, d_head=4,
                       d_ff=16, dropout=0.5, fast_weight=MODELS["linear-delta"])
  graphdef, weights = nnx.split(lm.TransformerLM(config, rngs=nnx.Rngs(0)))
  model = jax.jit(lambda toks, key=None: nnx.merge(graphdef, weights)(toks, dropout_key=key))
  toks, key = tokens(), jax.random.key(3)
  np.testing.assert_array_equal(model(toks, key), model(toks, key))
  assert not np.allclose(model(toks, key), model(toks))
  np.testing.assert_array_equal(model(toks), model(toks))


def test_bfloat16_matmuls_keep_the_memory_in_float32():
  config = lm.LMConfig(vocab_size=VOCAB, num_layers=1, d_model=8, num_heads=2, d_head=4,
                       d_ff=16, dropout=0.0, fast_weight=MODELS["linear-delta"],
                       dtype="bfloat16")
  graphdef, weights = nnx.split(lm.TransformerLM(config, rngs=nnx.Rngs(0)))
  log_probs, state = jax.jit(lambda w, t: nnx.merge(graphdef, w)(t, return_state=True))(
      weights, tokens())
  chex.assert_tree_all_finite(log_probs)
  assert state.layers[0].w.dtype == jnp.float32


@pytest.mark.fast
@pytest.mark.parametrize("field,value,message", [
    ("num_layers", 0, "num_layers must be a positive integer"),
    ("dropout", 1.0, "dropout must be in [0, 1)"),
    ("positional", "rotary", "valid choices: sinusoidal, none"),
    ("dtype", "float16", "float32 or bfloat16"),
    ("adaptive_cutoffs", (9, 4), "increasing positive integers"),
])
def test_bad_config_names_the_field(field, value, message):
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
    lm.LMConfig(vocab_size=VOCAB, **{field: value})


@pytest.mark.fast
def test_softmax_decoding_needs_a_cache_capacity():
  with x64(), pytest.raises(ValueError, match="cache_capacity"):
    build("transformer").init_state(1)
