"""The LSTM baseline against a plain per-step NumPy loop (float64, 1e-12), its gradients against
a Python loop of jnp steps, and the sequence-model options of fwp.lm.LMConfig that the
algorithmic tasks use (untied output layer, plain embedding, no final norm, no 1/√d_head)."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fwp import layers, lm, lstm
from tests.helpers import x64, float64


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def numpy_lstm(model: lstm.LSTMModel, tokens: np.ndarray) -> np.ndarray:
  """PyTorch's nn.LSTM equations, one step at a time, then log_softmax(W h + b)."""
  x = np.asarray(model.embed.embedding[...])[tokens]                # [B, T, E]
  for cell in model.cells:
    w_ih, b_ih = np.asarray(cell["w_ih"][...]), np.asarray(cell["b_ih"][...])
    w_hh, b_hh = np.asarray(cell["w_hh"][...]), np.asarray(cell["b_hh"][...])
    hidden = w_hh.shape[0]
    h = np.zeros((x.shape[0], hidden))
    c = np.zeros((x.shape[0], hidden))
    outs = []
    for t in range(x.shape[1]):
      gates = x[:, t] @ w_ih + b_ih + h @ w_hh + b_hh
      i, f, g, o = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
      c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
      h = sigmoid(o) * np.tanh(c)
      outs.append(h)
    x = np.stack(outs, axis=1)
  logits = x @ np.asarray(model.out.kernel[...]) + np.asarray(model.out.bias[...])
  logits = logits - logits.max(-1, keepdims=True)
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def _model(dtype=jnp.float64):
  config = lstm.LSTMConfig(vocab_size=11, output_size=7, embed_size=6, hidden_size=5,
                           num_layers=3, dropout=0.0)
  model = lstm.LSTMModel(config, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, jax.tree.map(lambda a: a.astype(dtype), state))


def test_lstm_equals_a_numpy_loopfloat64():
  with x64():
    model = _model()
    tokens = np.random.default_rng(0).integers(0, 11, (3, 9))
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(tokens))),
                               numpy_lstm(model, tokens), rtol=0, atol=1e-12)


def test_lstm_gradients_equal_a_python_loopfloat64():
  """jax.grad through the scan = jax.grad through a Python loop of the same cell."""
  with x64():
    model = _model()
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 11, (2, 6)))
    graphdef, params = nnx.split(model)

    def loss_scan(p):
      return jnp.sum(nnx.merge(graphdef, p)(tokens)[..., 0])

    def loss_loop(p):
      m = nnx.merge(graphdef, p)
      x = m.embed.embedding[...][tokens]
      for cell in m.cells:
        h = c = jnp.zeros((2, 5))
        outs = []
        for t in range(6):
          gates = x[:, t] @ cell["w_ih"][...] + cell["b_ih"][...] + h @ cell["w_hh"][...] + \
              cell["b_hh"][...]
          i, f, g, o = jnp.split(gates, 4, axis=-1)
          c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
          h = jax.nn.sigmoid(o) * jnp.tanh(c)
          outs.append(h)
        x = jnp.stack(outs, 1)
      return jnp.sum(jax.nn.log_softmax(m.out(x), -1)[..., 0])

    chex.assert_trees_all_close(jax.grad(loss_scan)(params), jax.grad(loss_loop)(params),
                                atol=1e-12, rtol=0)


def test_lstm_is_causal_and_uses_dropout_only_with_a_key():
  model = lstm.LSTMModel(lstm.LSTMConfig(11, 7, 6, 5, 2, dropout=0.5), rngs=nnx.Rngs(1))
  a = jnp.asarray([[1, 2, 3, 4, 5]])
  b = a.at[0, 3:].set(9)
  np.testing.assert_array_equal(np.asarray(model(a)[:, :3]), np.asarray(model(b)[:, :3]))
  dropped = model(a, dropout_key=jax.random.key(0))
  assert not np.allclose(np.asarray(dropped), np.asarray(model(a)))


def numpy_elstm(model: lstm.LSTMModel, tokens: np.ndarray) -> np.ndarray:
  """fwp-formal-lang's QuasiLSTMModel, written as their QuasiLSTMlayer's loop: per step
  z = tanh(W_z x + w_z * c + b_z), f = σ(W_f x + w_f * c + b_f), c = c f + (1 − f) z; then
  out = c σ(W_o [x, c] + b_o) and log_softmax(W out + b)."""
  cell = {k: np.asarray(v[...]) for k, v in model.cells[0].items()}
  x = np.asarray(model.embed.embedding[...])[tokens]
  hidden = cell["w"].shape[1] // 2
  wm_z, wm_f = cell["w"][:, :hidden], cell["w"][:, hidden:]
  wv_z, wv_f = cell["v"][:hidden], cell["v"][hidden:]
  b_z, b_f = cell["b"][:hidden], cell["b"][hidden:]
  c, outs = np.zeros((x.shape[0], hidden)), []
  for t in range(x.shape[1]):
    z = np.tanh(x[:, t] @ wm_z + wv_z * c + b_z)
    f = sigmoid(x[:, t] @ wm_f + wv_f * c + b_f)
    c = c * f + (1.0 - f) * z
    gate = sigmoid(np.concatenate([x[:, t], c], -1) @ cell["w_o"] + cell["b_o"])
    outs.append(c * gate)
  logits = np.stack(outs, 1) @ np.asarray(model.out.kernel[...]) + np.asarray(model.out.bias[...])
  logits = logits - logits.max(-1, keepdims=True)
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


@pytest.mark.fast
def test_elstm_equals_the_authors_loop_and_its_gradients_a_python_loopfloat64():
  with x64():
    config = lstm.LSTMConfig(vocab_size=11, output_size=7, embed_size=6, hidden_size=5,
                             num_layers=1, dropout=0.0, cell="elstm")
    graphdef, state = nnx.split(lstm.LSTMModel(config, rngs=nnx.Rngs(2)))
    model = nnx.merge(graphdef, jax.tree.map(lambda a: a.astype(jnp.float64), state))
    tokens = np.random.default_rng(3).integers(0, 11, (3, 9))
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(tokens))),
                               numpy_elstm(model, tokens), rtol=0, atol=1e-12)
    graphdef, params = nnx.split(model)

    def loss_loop(p):
      m = nnx.merge(graphdef, p)
      cell, x = m.cells[0], m.embed.embedding[...][tokens]
      c, outs = jnp.zeros((3, 5)), []
      for t in range(9):
        pre = x[:, t] @ cell["w"][...] + cell["v"][...] * jnp.concatenate([c, c], -1) + \
            cell["b"][...]
        f = jax.nn.sigmoid(pre[:, 5:])
        c = c * f + (1 - f) * jnp.tanh(pre[:, :5])
        outs.append(c * jax.nn.sigmoid(jnp.concatenate([x[:, t], c], -1) @ cell["w_o"][...]
                                       + cell["b_o"][...]))
      return jnp.sum(jax.nn.log_softmax(m.out(jnp.stack(outs, 1)), -1)[..., 0])

    loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(jnp.asarray(tokens))[..., 0])
    chex.assert_trees_all_close(jax.grad(loss)(params), jax.grad(loss_loop)(params),
                                atol=1e-12, rtol=0)


@pytest.mark.parametrize("field,value,message", [
    ("hidden_size", 0, "hidden_size must be a positive integer"),
    ("dropout", 1.0, r"dropout must be in \[0, 1\)"),
    ("cell", "gru", "LSTMConfig.cell.*'gru'.*lstm, elstm"),
    ("num_layers", 2, "e-LSTM model has one layer")])
def test_lstm_config_errors(field, value, message):
  extra = {"cell": "elstm"} if field == "num_layers" else {}
  with pytest.raises(ValueError, match=message):
    lstm.LSTMConfig(**{"vocab_size": 3, "output_size": 2, field: value, **extra})


FW = layers.FastWeightConfig("elu_plus_one", update_rule="delta", normalization="sum")


def test_sequence_model_options_compute_what_they_say():
  """output_size: log_softmax(head(h)) and no tied bias; embedding='plain': E[token] with no
  √d_model; final_norm=False under pre_norm: no final LayerNorm; fast_weight_scale=False: the
  block adds the attention output unscaled."""
  base = lm.LMConfig(vocab_size=9, num_layers=1, d_model=8, num_heads=2, d_head=4, d_ff=16,
                     dropout=0.0, fast_weight=FW, pre_norm=True, positional="none")
  seq = dataclasses.replace(base, output_size=5, embedding="plain", final_norm=False,
                            fast_weight_scale=False, embedding_dropout=False)
  with x64():
    model = lm.TransformerLM(seq, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, jax.tree.map(lambda a: a.astype(jnp.float64), state))
    assert model.output_bias is None and model.final_norm is None
    tokens = jnp.asarray([[1, 4, 2, 7, 3]])
    x = model.embed.embedding[...][tokens]
    np.testing.assert_array_equal(np.asarray(model.embed_tokens(tokens)), np.asarray(x))
    block = model.blocks[0]
    a = block.attention(block.norm_attention(x))
    h = x + a                                       # no 1/√d_head
    h = h + block.ff_out(jax.nn.relu(block.ff_in(block.norm_ff(h))))
    expected = jax.nn.log_softmax(model.head(h), axis=-1)
    np.testing.assert_allclose(np.asarray(model(tokens)), np.asarray(expected), atol=1e-12)
    assert model(tokens).shape == (1, 5, 5)
  tied = lm.TransformerLM(base, rngs=nnx.Rngs(0))
  assert tied.head is None and tied.final_norm is not None      # the LM's defaults


def test_lmtool_block_options_compute_what_they_say():
  """pre_norm_residual='normed': h = LN(x); h + attn(h)/√d_head, then the feed-forward's
  residual onto its own input, as lmtool-fwp's fast weight layer and PositionwiseFF under
  --pre_lnorm; layer_norm_eps reaches every LayerNorm."""
  config = lm.LMConfig(vocab_size=9, num_layers=1, d_model=8, num_heads=2, d_head=4, d_ff=16,
                       dropout=0.0, fast_weight=FW, pre_norm=True, positional="none",
                       final_norm=False, pre_norm_residual="normed", layer_norm_eps=1e-5)
  with x64():
    model = lm.TransformerLM(config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, jax.tree.map(lambda a: a.astype(jnp.float64), state))
    block = model.blocks[0]
    assert block.norm_attention.epsilon == block.norm_ff.epsilon == 1e-5
    tokens = jnp.asarray([[1, 4, 2, 7, 3]])
    x = model.embed_tokens(tokens)
    h = block.norm_attention(x)
    h = h + block.attention(h) / 2.0                # 1/√d_head, d_head = 4
    h = h + block.ff_out(jax.nn.relu(block.ff_in(block.norm_ff(h))))
    expected = jax.nn.log_softmax(h @ model.embed.embedding[...].T + model.output_bias[...], -1)
    np.testing.assert_allclose(np.asarray(model(tokens)), np.asarray(expected), atol=1e-12)
  with pytest.raises(ValueError, match="'norm'; valid choices: input, normed"):
    lm.LMConfig(vocab_size=9, pre_norm_residual="norm")


def _lm_task_config(**model_fields):
  from configs import language_model
  c = language_model.get_config("linear-sum")
  c.model.update(num_layers=1, d_model=8, num_heads=2, d_head=4, d_ff=16, dropout=0.0,
                 positional="none", **model_fields)
  return c


def test_sum_scale_scores_is_lmtool_attn_type_4():
  """model.sum_scale='scores': lmtool-fwp's LinearMultiHeadAttn (attn_type 4), written out: per
  head a_ts = (φq_t·φk_s)/√d_head for s <= t, y_t = Σ_s a_ts v_s / (Σ_s a_ts + 1e-5), then
  o_net and the post-LN block."""
  from experiments.tasks.language_model import task
  with x64():
    config = task.lm_config(_lm_task_config(sum_scale="scores", attention_eps=1e-5), 9)
    model = float64(lm.TransformerLM(config, rngs=nnx.Rngs(0)))
    tokens = jnp.asarray([[1, 4, 2, 7, 3, 3]])
    x = np.asarray(model.embed_tokens(tokens))[0]                   # [T, D]
    att = model.blocks[0].attention
    proj = lambda m: (x @ np.asarray(m.kernel[...])).reshape(len(x), 2, 4)
    q, k, v = proj(att.q_proj), proj(att.k_proj), proj(att.v_proj)
    phi = lambda a: np.where(a > 0, a + 1.0, np.exp(a))             # ELU + 1
    y = np.zeros_like(q)
    for t in range(len(x)):
      for h in range(2):
        a = np.array([phi(q[t, h]) @ phi(k[s, h]) / 2.0 for s in range(t + 1)])
        y[t, h] = (a[:, None] * v[:t + 1, h]).sum(0) / (a.sum() + 1e-5)
    block = model.blocks[0]
    hidden = block.norm_attention(x + att.out_proj(jnp.asarray(y.reshape(len(x), -1))))
    hidden = block.norm_ff(hidden + block.ff_out(jax.nn.relu(block.ff_in(hidden))))
    expected = jax.nn.log_softmax(hidden @ model.embed.embedding[...].T
                                  + model.output_bias[...], -1)
    np.testing.assert_allclose(np.asarray(model(tokens))[0], np.asarray(expected), atol=1e-12)


@pytest.mark.parametrize("fields,message", [
    (dict(sum_scale="inside"), "Unknown model.sum_scale 'inside'; valid choices: output, scores"),
    (dict(sum_scale="scores", update_rule="delta", normalization="sum"),
     "needs normalization='attention', got 'sum'"),
    (dict(init="xavier"), "Unknown init 'xavier'; valid choices: flax, authors")])
def test_lm_option_errors_name_the_choices(fields, message):
  from experiments.tasks.language_model import task
  with pytest.raises(ValueError, match=message):
    task.lm_config(_lm_task_config(**fields), 9)


def test_final_dropout_drops_the_last_hidden_state():
  """final_dropout=True: the authors' self.drop(core_out) after the last block, with its own
  key site; off without a key."""
  config = lm.LMConfig(vocab_size=9, num_layers=1, d_model=8, num_heads=2, d_head=4, d_ff=16,
                       dropout=0.5, fast_weight=FW, positional="none", final_dropout=True)
  with x64():
    model = float64(lm.TransformerLM(config, rngs=nnx.Rngs(0)))
    tokens, key = jnp.asarray([[1, 4, 2, 7, 3]]), jax.random.key(5)
    x = lm.dropout(model.embed_tokens(tokens), 0.5, jax.random.fold_in(key, 0))
    x, _ = model.blocks[0](x, None, jax.random.fold_in(key, 1), None)
    x = lm.dropout(x, 0.5, jax.random.fold_in(key, 2))
    np.testing.assert_allclose(np.asarray(model(tokens, dropout_key=key)),
                               np.asarray(model.log_probs(x)), atol=1e-12)
    plain = float64(lm.TransformerLM(dataclasses.replace(config, final_dropout=False),
                                      rngs=nnx.Rngs(0)))
    np.testing.assert_array_equal(np.asarray(model(tokens)), np.asarray(plain(tokens)))


def test_authors_init_is_lmtool_weights_init():
  """init='authors': every Linear kernel N(0, 0.02), biases 0, LayerNorm scales N(1, 0.02) and
  biases 0 (lmtool-fwp train.py weights_init); the embedding N(0, 0.02) either way."""
  config = lm.LMConfig(vocab_size=500, num_layers=2, d_model=64, num_heads=4, d_head=16,
                       d_ff=256, fast_weight=FW, init="authors")
  model = lm.TransformerLM(config, rngs=nnx.Rngs(0))
  kernels, biases, scales = [], [], []
  for _, module in nnx.iter_modules(model):
    if isinstance(module, nnx.Linear):
      kernels.append(np.asarray(module.kernel[...]).ravel())
      if module.bias is not None:
        biases.append(np.asarray(module.bias[...]).ravel())
    elif isinstance(module, nnx.LayerNorm):
      scales.append(np.asarray(module.scale[...]).ravel())
      biases.append(np.asarray(module.bias[...]).ravel())
  kernels, scales = np.concatenate(kernels), np.concatenate(scales)
  assert kernels.size > 90_000 and abs(kernels.std() - 0.02) < 0.0005
  assert abs(kernels.mean()) < 0.0005
  assert abs(scales.mean() - 1.0) < 0.01 and abs(scales.std() - 0.02) < 0.005
  assert not np.any(np.concatenate(biases))
  assert abs(np.asarray(model.embed.embedding[...]).std() - 0.02) < 0.001
  flax_init = lm.TransformerLM(dataclasses.replace(config, init="flax"), rngs=nnx.Rngs(0))
  assert np.asarray(flax_init.blocks[0].ff_in.kernel[...]).std() > 0.1     # lecun: 1/√64


@pytest.mark.parametrize("changes,message", [
    (dict(embedding="learned"), "Unknown embedding 'learned'; valid choices: scaled, plain"),
    (dict(output_size=-1), "output_size must be an integer >= 0"),
    (dict(output_size=4, adaptive_cutoffs=(3,)), "adaptive_cutoffs are for the tied")])
def test_sequence_model_option_errors(changes, message):
  with pytest.raises(ValueError, match=message):
    lm.LMConfig(vocab_size=9, **changes)


def test_last_draw_evaluation_reads_the_last_training_projection():
  """model.eval_projection='last_draw': evaluating the parameters after `step` steps uses the
  FAVOR+ projection training step step-1 drew (the authors' proj_matrix keeps the last draw);
  use_last_draw stores it for a reader that calls the model without keys; 'init' and step 0
  use the stored (initial) projection."""
  from experiments.tasks.language_model import task
  c = _lm_task_config(feature_map="favor_plus", num_features=4, update_rule="delta",
                      normalization="sum", eval_projection="last_draw")
  with x64():
    model = float64(lm.TransformerLM(task.lm_config(c, 9), rngs=nnx.Rngs(0)))
    batch = {"inputs": jnp.asarray([[1, 4, 2, 7, 3]]), "targets": jnp.asarray([[4, 2, 7, 3, 1]])}
    trained_loss, _ = task.lm_loss(c, model, batch, 6)              # training step 6 (dropout 0)
    key = task.eval_projection_key(c, 7)                            # after 7 steps
    eval_loss = lm.cross_entropy(model(batch["inputs"], projection_key=key), batch["targets"])
    np.testing.assert_allclose(float(eval_loss), float(trained_loss), rtol=1e-12)
    initial = model(batch["inputs"])
    assert not np.allclose(np.asarray(initial), np.asarray(model(batch["inputs"],
                                                                 projection_key=key)))
    task.use_last_draw(model, c, 7)
    np.testing.assert_allclose(np.asarray(model(batch["inputs"])),
                               np.asarray(model(batch["inputs"], projection_key=key)), atol=1e-12)
  assert task.eval_projection_key(c, 0) is None
  c.model.eval_projection = "init"
  assert task.eval_projection_key(c, 7) is None
  c.model.eval_projection = "last"
  with pytest.raises(ValueError, match="Unknown model.eval_projection 'last'; valid choices: "
                                       "init, last_draw"):
    task.validate(c)
