"""An LSTM sequence model: the recurrent baseline of the recurrent FWPs' algorithmic tasks.

As the authors' `LSTMModel` (IDSIA/recurrent-fwp, algorithmic/model.py), i.e. PyTorch's
`nn.LSTM` under one embedding and one output layer:
  x_t = drop(E[token_t]);  for each layer l:  (h_t, c_t) = LSTM_l(x_t, h_{t-1}, c_{t-1})
  logits_t = W_out drop(h_t^L) + b_out
with PyTorch's gate order and biases, gates = W_ih x + b_ih + W_hh h + b_hh split as (i, f, g, o),
c_t = σ(f) c_{t-1} + σ(i) tanh(g), h_t = σ(o) tanh(c_t), and PyTorch's initialisation (every LSTM
weight and bias U(±1/√H), E ~ N(0, 1), the output layer U(±1/√H)). No dropout between layers
(the authors pass none to nn.LSTM).

Each layer runs as cuDNN does: its input projection W_ih x for every step at once (one matmul),
then a `lax.scan` over time that carries (h, c) and does only the recurrent W_hh h. Shapes:
tokens [B, T] int -> log-probabilities [B, T, output_size].
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from fwp import checks, layers
from fwp.lm import dropout


@dataclasses.dataclass(frozen=True)
class LSTMConfig:
  vocab_size: int
  output_size: int
  embed_size: int = 128
  hidden_size: int = 256
  num_layers: int = 4
  dropout: float = 0.1

  def __post_init__(self):
    for name in ("vocab_size", "output_size", "embed_size", "hidden_size", "num_layers"):
      checks.positive_int(f"LSTMConfig.{name}", getattr(self, name))
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"LSTMConfig.dropout must be in [0, 1), got {self.dropout!r}.")


def _uniform(rngs: nnx.Rngs, shape, bound: float) -> nnx.Param:
  return nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound))


def lstm_layer(x, w_ih, b_ih, w_hh, b_hh, initial=None):
  """One LSTM layer over x [B, T, D_in] -> (h [B, T, H], (h_T, c_T)); weights [D_in, 4H],
  [H, 4H], biases [4H], gates (i, f, g, o) as PyTorch's."""
  hidden = w_hh.shape[0]
  batch = x.shape[0]
  inputs = jnp.einsum("btd,dg->tbg", x, w_ih) + b_ih + b_hh
  if initial is None:
    zeros = jnp.zeros((batch, hidden), inputs.dtype)
    initial = (zeros, zeros)

  def step(carry, gates_in):
    h, c = carry
    i, f, g, o = jnp.split(gates_in + h @ w_hh, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h

  final, hs = jax.lax.scan(step, initial, inputs)
  return jnp.swapaxes(hs, 0, 1), final


class LSTMModel(nnx.Module):
  """Call on tokens [B, T] for log-probabilities [B, T, output_size] (the same call as
  fwp.lm.TransformerLM's, so a task treats both alike; `projection_key` is unused)."""

  def __init__(self, config: LSTMConfig, *, rngs: nnx.Rngs):
    self.config = config
    h = config.hidden_size
    bound = 1.0 / math.sqrt(h)
    self.embed = nnx.Embed(config.vocab_size, config.embed_size,
                           embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
    self.cells = nnx.List()
    for layer in range(config.num_layers):
      d_in = config.embed_size if layer == 0 else h
      self.cells.append(nnx.Dict(w_ih=_uniform(rngs, (d_in, 4 * h), bound),
                                 b_ih=_uniform(rngs, (4 * h,), bound),
                                 w_hh=_uniform(rngs, (h, 4 * h), bound),
                                 b_hh=_uniform(rngs, (4 * h,), bound)))
    self.out = nnx.Linear(h, config.output_size, kernel_init=_symmetric_uniform(bound),
                          bias_init=_symmetric_uniform(bound), rngs=rngs)

  def __call__(self, tokens, *, dropout_key=None, projection_key=None):
    del projection_key
    if tokens.ndim != 2:
      raise ValueError(f"Expected tokens of shape [batch, time], got {tokens.shape}.")
    rate = self.config.dropout
    site = lambda i: None if dropout_key is None else jax.random.fold_in(dropout_key, i)
    x = dropout(layers.lookup(self.embed, tokens), rate, site(0))
    for cell in self.cells:
      x, _ = lstm_layer(x, cell["w_ih"][...], cell["b_ih"][...], cell["w_hh"][...],
                        cell["b_hh"][...])
    logits = self.out(dropout(x, rate, site(1)))
    return jax.nn.log_softmax(layers.at_least_f32(logits), axis=-1)


def _symmetric_uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init
