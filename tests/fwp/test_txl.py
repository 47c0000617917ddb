"""Transformer-XL (fwp.txl, the LM with positional='relative'): its attention is the formula of
Dai et al. 2019 written as a double loop, also in their code's form (scores against distances
klen−1..0, aligned by _rel_shift); decoding token by token with its memory equals the parallel
pass; segments with the memory carried equal one pass; mem_len 0 on one segment is the
relative-position Transformer (float64)."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fwp import lm, txl
from tests.helpers import x64, float64

B, H, D_HEAD, D_MODEL, VOCAB = 2, 2, 3, 6, 11


def _layer_inputs(seed, t, m, count):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(B, t, D_MODEL))
  mem = rng.normal(size=(B, m, D_MODEL))
  bias = 0.5 * rng.normal(size=(2, H, D_HEAD))
  return x, mem, bias


def _reference(layer, x, mem, count, bias, rel_shift=False, clamp_len=0):
  """The attention as a loop over (b, h, i, j), from the formula (or with their _rel_shift);
  clamp_len > 0: a distance above it is embedded as clamp_len (their pos_seq.clamp_)."""
  w = {name: np.asarray(getattr(layer, name).kernel[...]) for name in
       ("q_proj", "k_proj", "v_proj", "r_proj", "out_proj")}
  t, m = x.shape[1], mem.shape[1]
  cat = np.concatenate([mem, x], axis=1)
  klen = m + t
  split = lambda y: y.reshape(y.shape[:-1] + (H, D_HEAD))
  q, k, v = split(x @ w["q_proj"]), split(cat @ w["k_proj"]), split(cat @ w["v_proj"])
  inv_freq = 1 / 10000 ** (np.arange(0, D_MODEL, 2) / D_MODEL)
  clamp = lambda d: min(d, clamp_len) if clamp_len else d
  sinusoid = lambda d: np.concatenate([np.sin(clamp(d) * inv_freq), np.cos(clamp(d) * inv_freq)])
  u, vb = bias
  out = np.zeros((B, t, H, D_HEAD))
  if rel_shift:        # their code: distances klen−1..0, then _rel_shift
    r = split(np.stack([sinusoid(p) for p in range(klen - 1, -1, -1)]) @ w["r_proj"])
    bd = np.einsum("bihd,jhd->ijbh", q + vb, r)                     # [qlen, klen, B, H]
    padded = np.concatenate([np.zeros((t, 1, B, H)), bd], axis=1)
    bd = padded.reshape(klen + 1, t, B, H)[1:].reshape(t, klen, B, H)
  for b in range(B):
    for h in range(H):
      for i in range(t):
        scores = np.full(klen, -np.inf)
        for j in range(klen):
          if j > m + i or j < m - count:
            continue
          dist = m + i - j
          r_d = (sinusoid(dist) @ w["r_proj"]).reshape(H, D_HEAD)[h]
          position = bd[i, j, b, h] if rel_shift else (q[b, i, h] + vb[h]) @ r_d
          scores[j] = ((q[b, i, h] + u[h]) @ k[b, j, h] + position) / np.sqrt(D_HEAD)
        p = np.exp(scores - scores.max())
        out[b, i, h] = (p / p.sum()) @ v[b, :, h]
  return out.reshape(B, t, H * D_HEAD) @ w["out_proj"]


@pytest.mark.parametrize("rel_shift", [False, True])
@pytest.mark.parametrize("t,m,count", [(5, 0, 0), (4, 3, 3), (4, 6, 2), (3, 4, 0)])
def test_relative_attention_is_transformer_xlfloat64(t, m, count, rel_shift):
  with x64():
    layer = float64(txl.RelativeAttention(D_MODEL, H, D_HEAD, m, rngs=nnx.Rngs(0)))
    x, mem, bias = _layer_inputs(1, t, m, count)
    memory = txl.XLMemory(jnp.asarray(mem), jnp.full((B,), count, jnp.int32))
    out, state = layer(jnp.asarray(x), jnp.asarray(bias), initial_state=memory,
                       return_state=True)
    expected = _reference(layer, x, mem, count, bias, rel_shift)
    chex.assert_trees_all_close(out, expected, rtol=1e-12, atol=1e-12)
    # The next memory: the last m inputs of [memory; segment], filled up to m.
    np.testing.assert_array_equal(state.h, np.concatenate([mem, x], axis=1)[:, t:])
    np.testing.assert_array_equal(state.count, min(count + t, m))


@pytest.mark.parametrize("rel_shift", [False, True])
def test_clamp_len_embeds_every_longer_distance_as_clamp_lenfloat64(rel_shift):
  t, m, count = 4, 6, 5                                  # distances 0..9
  with x64():
    x, mem, bias = _layer_inputs(2, t, m, count)
    memory = txl.XLMemory(jnp.asarray(mem), jnp.full((B,), count, jnp.int32))
    outs = {}
    for clamp_len in (0, 3, 9):
      layer = float64(txl.RelativeAttention(D_MODEL, H, D_HEAD, m, rngs=nnx.Rngs(0),
                                            clamp_len=clamp_len))
      outs[clamp_len] = layer(jnp.asarray(x), jnp.asarray(bias), initial_state=memory)
      chex.assert_trees_all_close(outs[clamp_len],
                                  _reference(layer, x, mem, count, bias, rel_shift, clamp_len),
                                  rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(outs[9], outs[0])      # nothing above 9 to clamp
    assert np.abs(np.asarray(outs[3] - outs[0])).max() > 1e-3   # the clamp changes the output
  with pytest.raises(ValueError, match="clamp_len=3 clamps Transformer-XL's relative distances"):
    lm.LMConfig(vocab_size=VOCAB, num_layers=1, d_model=D_MODEL, num_heads=H, d_head=D_HEAD,
                d_ff=8, clamp_len=3)


def _model(mem_len, seed=0):
  config = lm.LMConfig(vocab_size=VOCAB, num_layers=2, d_model=D_MODEL, num_heads=H,
                       d_head=D_HEAD, d_ff=8, dropout=0.0, positional="relative",
                       mem_len=mem_len)
  return float64(lm.TransformerLM(config, rngs=nnx.Rngs(seed)))


def _tokens(t, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (B, t)), jnp.int32)


def test_decoding_with_its_memory_equals_the_parallel_passfloat64():
  """A memory as long as the text: token by token, and in carried segments, as one pass."""
  t = 9
  with x64():
    model, toks = _model(mem_len=t), _tokens(t)
    full = model(toks)
    state, stepped = model.init_state(B, dtype=jnp.float64), []
    for i in range(t):
      log_probs, state = model.step(state, toks[:, i])
      stepped.append(log_probs)
    chex.assert_trees_all_close(jnp.stack(stepped, axis=1), full, rtol=1e-10, atol=1e-12)
    state, pieces = model.init_state(B, dtype=jnp.float64), []
    for start in range(0, t, 4):
      out, state = model(toks[:, start:start + 4], state=state, return_state=True)
      pieces.append(out)
    chex.assert_trees_all_close(jnp.concatenate(pieces, axis=1), full, rtol=1e-10, atol=1e-12)


def test_mem_len_0_on_one_segment_is_the_relative_transformerfloat64():
  with x64():
    toks = _tokens(7, seed=1)
    plain, with_memory = _model(mem_len=0), _model(mem_len=5)   # the same parameters
    chex.assert_trees_all_equal(nnx.state(plain, nnx.Param), nnx.state(with_memory, nnx.Param))
    empty = with_memory.init_state(B, dtype=jnp.float64)
    chex.assert_trees_all_close(with_memory(toks, state=empty), plain(toks), rtol=1e-12)
    # ... and the memory is what makes the difference on the next segment.
    _, state = with_memory(toks, state=empty, return_state=True)
    after = with_memory(toks, state=state)
    assert float(jnp.max(jnp.abs(after - plain(toks)))) > 1e-6


def test_a_short_memory_forgets_beyond_itfloat64():
  """One layer with mem_len 2, token by token: each token sees itself and the 2 before, so
  what came earlier cannot change the last prediction."""
  with x64():
    config = dataclasses.replace(_model(mem_len=2).config, num_layers=1)
    one = float64(lm.TransformerLM(config, rngs=nnx.Rngs(0)))
    a, b = _tokens(8, seed=2), _tokens(8, seed=3)
    mixed = b.at[:, 5:].set(a[:, 5:])      # the same last 3 tokens, others before
    assert bool(jnp.any(mixed != a))
    last = []
    for toks in (a, mixed):
      state = one.init_state(B, dtype=jnp.float64)
      for i in range(8):
        log_probs, state = one.step(state, toks[:, i])
      last.append(log_probs)
    chex.assert_trees_all_close(last[0], last[1], rtol=1e-12)


def test_bad_relative_configs_name_the_field():
  with pytest.raises(ValueError, match="mem_len=4 is Transformer-XL's memory"):
    lm.LMConfig(vocab_size=5, mem_len=4)
  with pytest.raises(ValueError, match="mem_len must be an integer >= 0"):
    lm.LMConfig(vocab_size=5, positional="relative", mem_len=-1)
  from fwp import layers
  with pytest.raises(ValueError, match="needs fast_weight=None"):
    lm.LMConfig(vocab_size=5, positional="relative",
                fast_weight=layers.FastWeightConfig("elu_plus_one"))


@pytest.mark.parametrize("shared", [False, True])
def test_shared_distance_dropout_is_one_mask_for_every_layer(shared, monkeypatch):
  # The authors' Transformer-XL drops the distance embedding once (pos_emb = self.drop(pos_emb))
  # and every layer reads it; fwp's default draws a mask per layer.
  masks, original = [], txl.RelativeAttention.__call__

  def recording(self, x, rel_bias, *, distance_dropout=None, **kwargs):
    masks.append(np.asarray(distance_dropout(jnp.ones((7, D_MODEL)))) != 0)
    return original(self, x, rel_bias, distance_dropout=distance_dropout, **kwargs)

  monkeypatch.setattr(txl.RelativeAttention, "__call__", recording)
  config = lm.LMConfig(vocab_size=VOCAB, num_layers=3, d_model=D_MODEL, num_heads=H,
                       d_head=D_HEAD, d_ff=8, dropout=0.5, positional="relative",
                       shared_distance_dropout=shared)
  model = lm.TransformerLM(config, rngs=nnx.Rngs(0))
  model(_tokens(4), dropout_key=jax.random.key(1))
  assert len(masks) == 3 and 0 < masks[0].mean() < 1
  same = [np.array_equal(masks[0], m) for m in masks[1:]]
  assert same == ([True, True] if shared else [False, False]), same
