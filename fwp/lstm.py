"""An LSTM sequence model: the recurrent baseline of the recurrent FWPs' algorithmic tasks, and the
e-LSTM of the formal-language tasks (`cell="elstm"`, elstm_layer).

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


CELLS = ("lstm", "elstm")


@dataclasses.dataclass(frozen=True)
class LSTMConfig:
  vocab_size: int
  output_size: int
  embed_size: int = 128
  hidden_size: int = 256
  num_layers: int = 4
  dropout: float = 0.1
  cell: str = "lstm"             # lstm | elstm (one layer: IDSIA/rtrl-elstm's element-wise LSTM)

  def __post_init__(self):
    for name in ("vocab_size", "output_size", "embed_size", "hidden_size", "num_layers"):
      checks.positive_int(f"LSTMConfig.{name}", getattr(self, name))
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"LSTMConfig.dropout must be in [0, 1), got {self.dropout!r}.")
    checks.choice("LSTMConfig.cell", self.cell, CELLS)
    if self.cell == "elstm" and self.num_layers != 1:
      raise ValueError(f"The e-LSTM model has one layer (as fwp-formal-lang's QuasiLSTMModel), "
                       f"got num_layers={self.num_layers}.")


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


def elstm_layer(x, w, v, b, initial=None):
  """The e-LSTM cell (Irie, Gopalakrishnan, Schmidhuber 2023, IDSIA/rtrl-elstm; fwp-formal-lang's
  QuasiLSTMlayer) over x [B, T, D_in] -> (c [B, T, H], c_T): its recurrence is element-wise,
    z_t = tanh(W_z x_t + v_z ⊙ c_{t-1} + b_z),  f_t = σ(W_f x_t + v_f ⊙ c_{t-1} + b_f)
    c_t = f_t ⊙ c_{t-1} + (1 − f_t) ⊙ z_t
  with w [D_in, 2H] = [W_z | W_f]ᵀ, v and b [2H] = [v_z, v_f], [b_z, b_f]."""
  hidden = w.shape[1] // 2
  inputs = jnp.einsum("btd,dg->tbg", x, w)
  c0 = jnp.zeros((x.shape[0], hidden), inputs.dtype) if initial is None else initial

  def step(c, projected):
    pre = projected + v * jnp.concatenate([c, c], -1) + b
    z, f = jnp.tanh(pre[..., :hidden]), jax.nn.sigmoid(pre[..., hidden:])
    c = c * f + (1.0 - f) * z
    return c, c

  final, cs = jax.lax.scan(step, c0, inputs)
  return jnp.swapaxes(cs, 0, 1), final


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
    if config.cell == "elstm":
      # QuasiLSTMlayer's init: every weight, vector and bias N(0, 0.1) (forget bias 0); the
      # output gate σ(W_o [x; c] + b_o) is an nn.Linear (PyTorch's U(±1/√fan_in)).
      normal = lambda *shape: nnx.Param(0.1 * jax.random.normal(rngs.params(), shape))
      fan_in = config.embed_size + h
      self.cells.append(nnx.Dict(w=normal(config.embed_size, 2 * h), v=normal(2 * h),
                                 b=normal(2 * h),
                                 w_o=_uniform(rngs, (fan_in, h), 1.0 / math.sqrt(fan_in)),
                                 b_o=_uniform(rngs, (h,), 1.0 / math.sqrt(fan_in))))
    for layer in range(config.num_layers if config.cell == "lstm" else 0):
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
      if self.config.cell == "elstm":
        c, _ = elstm_layer(x, cell["w"][...], cell["v"][...], cell["b"][...])
        gate = jax.nn.sigmoid(jnp.concatenate([x, c], -1) @ cell["w_o"][...] + cell["b_o"][...])
        x = c * gate
        continue
      x, _ = lstm_layer(x, cell["w_ih"][...], cell["b_ih"][...], cell["w_hh"][...],
                        cell["b_hh"][...])
    logits = self.out(dropout(x, rate, site(1)))
    return jax.nn.log_softmax(layers.at_least_f32(logits), axis=-1)


def _symmetric_uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init
