"""The self-referential weight matrix (fwp.srwm) against a plain loop written as the authors'
reference loop (fwp-formal-lang self_ref_v0/__init__.py: x @ W_y, x @ W_q, ... with W_y, W_q,
W_k [E, E] and w_b [E, 4]), in float64: outputs, final state and gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from fwp import layers, lm, srwm
from tests.helpers import float64, x64


def softmax(a):
  e = np.exp(a - a.max())
  return e / e.sum()


def authors_loop(x, wy, wq, wk, wb, input_softmax=False):
  """One sequence of one head, as their loop: x [T, E]; returns y [T, E] and the final blocks."""
  out = []
  for x_t in x:
    x_t = softmax(x_t) if input_softmax else x_t
    out.append(x_t @ wy)                       # read with the weights before the write
    q, k = softmax(x_t @ wq), softmax(x_t @ wk)
    by, bq, bk, bb = 1 / (1 + np.exp(-(x_t @ wb)))
    wy = wy + np.outer(k, by * (q @ wy - k @ wy))
    wq = wq + np.outer(k, bq * (q @ wq - k @ wq))
    wk = wk + np.outer(k, bk * (q @ wk - k @ wk))
    wb = wb + np.outer(k, bb * (q @ wb - k @ wb))
  return np.stack(out), (wy, wq, wk, wb)


def _blocks(w, e):
  """fwp's [3E + 4, E] state as the authors' W_y, W_q, W_k [E, E] and w_b [E, 4]."""
  return w[:e].T, w[e:2 * e].T, w[2 * e:3 * e].T, w[3 * e:].T


@pytest.mark.fast
@pytest.mark.parametrize("phi,t,segment", [("identity", 11, 4), ("softmax", 9, 64),
                                           ("identity", 8, 4)])
def test_srwm_is_the_authors_loop_float64(monkeypatch, phi, t, segment):
  with x64():
    _authors_loop_case(monkeypatch, phi, t, segment)


def _authors_loop_case(monkeypatch, phi, t, segment):
  monkeypatch.setattr(srwm, "REMAT_SEGMENT", segment)
  b, h, e = 2, 3, 5
  rng = np.random.default_rng(0)
  x = rng.normal(size=(b, t, h, e))
  w0 = rng.uniform(-1, 1, size=(b, h, srwm.rows(e), e))
  y, w = srwm.srwm(jnp.asarray(x), jnp.asarray(w0), phi=phi)
  for i in range(b):
    for j in range(h):
      want_y, want_w = authors_loop(x[i, :, j], *_blocks(w0[i, j], e),
                                    input_softmax=phi == "softmax")
      np.testing.assert_allclose(y[i, :, j], want_y, rtol=1e-12, atol=1e-12)
      for got, want in zip(_blocks(np.asarray(w[i, j]), e), want_w):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.fast
def test_srwm_gradients_are_the_plain_loops_float64(monkeypatch):
  with x64():
    _gradient_case(monkeypatch)


def _gradient_case(monkeypatch):
  monkeypatch.setattr(srwm, "REMAT_SEGMENT", 3)
  b, t, h, e = 2, 7, 2, 4
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(b, t, h, e)))
  w0 = jnp.asarray(rng.uniform(-1, 1, size=(1, h, srwm.rows(e), e)))   # shared over the batch
  r = jnp.asarray(rng.normal(size=(b, t, h, e)))
  rw = jnp.asarray(rng.normal(size=(b, h, srwm.rows(e), e)))

  def loss(fn, x, w0):
    y, w = fn(x, w0)
    return jnp.sum(y * r) + jnp.sum(w * rw)

  def plain(x, w0):
    w, ys = jnp.broadcast_to(w0, (b,) + w0.shape[1:]), []
    for s in range(t):
      y_s, w = srwm.srwm_step(w, x[:, s])
      ys.append(y_s)
    return jnp.stack(ys, 1), w

  got = jax.jit(jax.grad(lambda x, w0: loss(srwm.srwm, x, w0), (0, 1)))(x, w0)
  want = jax.grad(lambda x, w0: loss(plain, x, w0), (0, 1))(x, w0)
  chex.assert_trees_all_close(got, want, rtol=1e-11, atol=1e-12)
  # and the step itself is the authors' loop (the first test): so the gradient is theirs
  assert got[1].shape == w0.shape


@pytest.mark.fast
def test_bad_srwm_shapes_and_maps_are_named():
  x = jnp.zeros((1, 3, 2, 4))
  with pytest.raises(ValueError, match=r"w0 is \[B or 1, H, 3E \+ 4, E\] = \[1, 2, 16, 4\]"):
    srwm.srwm(x, jnp.zeros((1, 2, 12, 4)))
  with pytest.raises(ValueError, match="Unknown SRWM input map 'relu'; valid choices: identity"):
    srwm.srwm(x, jnp.zeros((1, 2, 16, 4)), phi="relu")
  with pytest.raises(ValueError, match=r"x is \[B, T, H, E\]"):
    srwm.srwm(x[0], jnp.zeros((1, 2, 16, 4)))


def _srwm_lm(**changes):
  fast = layers.FastWeightConfig("identity", update_rule="delta", normalization="none",
                                 recurrence="srwm")
  config = lm.LMConfig(vocab_size=7, output_size=5, num_layers=2, d_model=8, num_heads=2,
                       d_head=4, d_ff=16, dropout=0.0, fast_weight=fast, pre_norm=True,
                       final_norm=False, positional="none", embedding="plain",
                       fast_weight_scale=False, **changes)
  return float64(lm.TransformerLM(config, rngs=nnx.Rngs(0)))


@pytest.mark.fast
def test_an_srwm_lm_is_the_authors_block_and_decodes_as_an_rnn_float64():
  """fwp-formal-lang's SRWM model: embedding, then per layer LN(h) + W_o srwm(h) (no input
  projection) and the pre-LN feed-forward block, then the untied output layer; one token at a
  time from the state gives the same log-probabilities."""
  with x64():
    model = _srwm_lm()
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, 7, (2, 6)))
    got = model(tokens)
    h = model.embed.embedding[...][tokens]
    for block in model.blocks:
      y, _ = srwm.srwm(h.reshape(2, 6, 2, 4), block.attention.w0[...][None])
      h = block.norm_attention(h) + block.attention.out_proj(y.reshape(2, 6, 8))
      h = h + block.ff_out(jax.nn.relu(block.ff_in(block.norm_ff(h))))
    want = model.log_probs(h)        # the untied output layer, then log_softmax
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    state, steps = model.init_state(2, dtype=jnp.float64), []
    for t in range(6):
      out, state = model.step(state, tokens[:, t])
      steps.append(out)
    np.testing.assert_allclose(jnp.stack(steps, 1), got, rtol=0, atol=1e-12)


@pytest.mark.fast
def test_srwm_layer_options_are_checked():
  with pytest.raises(ValueError, match="SRWM reads its input as it is.*'elu_plus_one'"):
    layers.FastWeightConfig("elu_plus_one", update_rule="delta", normalization="none",
                            recurrence="srwm")
  with pytest.raises(ValueError, match="num_heads × d_head = d_model"):
    srwm.SRWMAttention(8, 2, 3, rngs=nnx.Rngs(0))
