"""The paper's associative-retrieval model (Schlag et al. 2021, Section 6.1).

A sequence of (key, value) pairs is written into one memory; queries read it. Values are frozen
one-hot vectors used directly as v; keys have a trainable embedding of size e = int(2.2·S);
x_t = [onehot(value_t) ; embed(key_t)], k_t = W_k x_t (d = 64 before φ), β_t = σ(W_β x_t),
q = W_q embed(query key), and the read-out ŷ (size S) is the prediction.

Shapes: keys, values [B, T] ints; queries [B, Q] ints; ŷ [B, Q, S]. The memory is written once
and read for all Q queries, which is what the authors' one-pass-per-query loop computes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from fwp import feature_maps, layers, normalization, ops, rfwp


BETA_INITS = ("torch", "flax")
# update_rule (softmax, additive: no fast weights; the gated rules: a forget gate on W).
RULES = ("sum", "delta", "fwm", "gated_sum", "gated_delta", "softmax", "additive")


class RetrievalModel(nnx.Module):
  """`fast_weight=None` is an attention baseline (`scoring`: "dot" softmax attention or
  Bahdanau's "additive"); otherwise a one-head fast weight memory configured by `fast_weight`
  (feature map, rule, normalisation, form).

  The defaults are the authors' model (ischlag/fast-weight-transformers `synthetic/`): W_k and
  W_q have biases (`qk_bias`; PyTorch's nn.Linear, its init U(±1/√fan_in)), W_β's weight and
  bias are PyTorch's default U(±1/√fan_in) (`beta_init="torch"`; "flax": lecun normal, zero
  bias), and the FWM read-out LayerNorm has eps 1e-5 and no scale or bias (`readout_affine`,
  `readout_eps`)."""

  def __init__(self, num_keys: int, fast_weight: layers.FastWeightConfig | None, *,
               d: int = 64, rngs: nnx.Rngs, scoring: str = "dot", qk_bias: bool = True,
               readout_affine: bool = False, readout_eps: float = 1e-5,
               beta_init: str = "torch"):
    if num_keys < 2:
      raise ValueError(f"num_keys must be >= 2, got {num_keys}.")
    if beta_init not in BETA_INITS:
      raise ValueError(f"Unknown beta_init {beta_init!r}; valid choices: "
                       f"{', '.join(BETA_INITS)}.")
    self.num_keys, self.d, self.fast_weight = num_keys, d, fast_weight
    e = int(2.2 * num_keys)
    self.embed = nnx.Embed(num_keys, e, embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
    # The authors initialise W_k uniform in ±1/√d for fast weight models, Xavier for softmax.
    init = (nnx.initializers.xavier_uniform() if fast_weight is None else
            _uniform_symmetric(1 / math.sqrt(d)))
    self.k_proj = nnx.Linear(num_keys + e, d, use_bias=qk_bias, kernel_init=init,
                             bias_init=_torch_linear_init(num_keys + e), rngs=rngs)
    self.q_proj = nnx.Linear(e, d, use_bias=qk_bias, kernel_init=init,
                             bias_init=_torch_linear_init(e), rngs=rngs)
    uses_beta = fast_weight is not None and fast_weight.uses_beta
    torch_init = {"kernel_init": _torch_linear_init(num_keys + e),
                  "bias_init": _torch_linear_init(num_keys + e)} if beta_init == "torch" else {}
    self.beta_proj = (nnx.Linear(num_keys + e, fast_weight.memories, rngs=rngs, **torch_init)
                      if uses_beta else None)
    fwm = fast_weight is not None and fast_weight.update_rule == "fwm"
    self.layer_norm = (nnx.LayerNorm(num_keys, epsilon=readout_eps, use_bias=readout_affine,
                                     use_scale=readout_affine, rngs=rngs) if fwm else None)
    layers.check_scoring(scoring)
    self.score_weight = (nnx.Param(nnx.initializers.normal(d ** -0.5)(rngs.params(), (d,)))
                         if fast_weight is None and scoring == "additive" else None)
    # The gated rules: α_t = exp(−e^A_log softplus(W_a x_t + dt_bias)) (layers.ForgetGate) on
    # the written pairs' inputs x_t, one per memory or per key channel.
    self.gate = (layers.ForgetGate(num_keys + e, 1, fast_weight.d_dot(d), fast_weight.gate,
                                   rngs=rngs) if fast_weight is not None and fast_weight.gated
                 else None)
    self.recurrent = (RecurrentParts(num_keys, e, d, fast_weight, rngs)
                      if fast_weight is not None and fast_weight.recurrence != "none" else None)
    favor = fast_weight is not None and feature_maps.get(fast_weight.feature_map).needs_projection
    self.projection = (layers.FeatureProjection(layers.draw_projection(rngs.params(),
                                                                       fast_weight, d))
                       if favor else None)

  def _input_projection(self, linear: nnx.Linear, keys, values):
    """linear([onehot(value) ; embed(key)]) without forming the [B, T, S + e] input.

    The one-hot half selects a row of the kernel, and the embedding half is a row of the [S, d]
    table embed · kernel: two gathers instead of a [B·T, S + e] × [S + e, d] product (at S = 600
    that product was ~90% of a training step). Same parameters, same function.
    """
    kernel = linear.kernel[...]
    value_rows = kernel[:self.num_keys]
    key_rows = self.embed.embedding[...] @ kernel[self.num_keys:]
    out = jnp.take(value_rows, values, axis=0) + jnp.take(key_rows, keys, axis=0)
    return out if linear.bias is None else out + linear.bias[...]

  def __call__(self, keys, values, queries, *, projection_key: jax.Array | None = None):
    """ŷ [B, Q, S]: write the whole sequence, then read it once per query.

    `projection_key` draws a fresh FAVOR+ projection for this call (the authors' protocol)."""
    v = jax.nn.one_hot(values, self.num_keys, dtype=jnp.float32)            # [B, T, S]
    k = self._input_projection(self.k_proj, keys, values)                    # [B, T, d]
    q = self.q_proj(layers.lookup(self.embed, queries))                      # [B, Q, d]
    if self.fast_weight is None:
      return _softmax_read(q, k, values, self.num_keys, self.score_weight)
    config = self.fast_weight
    projection = layers.call_projection(self.projection, projection_key, config, self.d, k.dtype)
    if self.recurrent is not None:
      return self._recurrent_read(keys, values, queries, v, k, projection)
    phi_q, phi_k = layers.feature_pair(q, k, config, projection)           # [B, Q|T, d_dot]
    beta = (jax.nn.sigmoid(self._input_projection(self.beta_proj, keys, values))  # [B, T, 1]
            if self.beta_proj is not None else None)
    one_head = lambda a: a[:, :, None]
    if self.gate is not None:      # the gate reaches every entry of W: W_T, then its reads
      w = ops.final_state(config.update_rule, one_head(phi_k), one_head(v), beta,
                          log_decay=self._log_decay(keys, values), form=config.form,
                          chunk_size=config.chunk_size)                    # [B, 1, S, d_dot]
      return jnp.einsum("bvk,bqk->bqv", w[:, 0], phi_q)
    c = ops.read_coefficients(config.update_rule, one_head(phi_q), one_head(phi_k), beta,
                              form=config.form, d_value=self.num_keys,
                              chunk_size=config.chunk_size)                    # [B, Q, 1, T]
    if c is not None:   # y = Σ_t c_t onehot(value_t): scattered, never a [B, T, S] array
      y = scatter_by_value(c[:, :, 0], values, self.num_keys)
    else:
      y = ops.read_final(config.update_rule, one_head(phi_q), one_head(phi_k), one_head(v),
                         beta, form=config.form, chunk_size=config.chunk_size,
                         normalize_first=config.fwm_normalize_first)[:, :, 0]
    if config.attention_normalized:
      z = jnp.sum(phi_k, axis=1)                                             # Σ_t φ(k_t)
      y = normalization.attention_normalize(y, jnp.einsum("bk,bqk->bq", z, phi_q), config.eps)
    if self.layer_norm is not None:
      y = self.layer_norm(y)
    return y


  def _log_decay(self, keys, values):
    """The forget gate's log α [B, T, 1] or [B, T, 1, d_dot] of each written pair."""
    gate = self.gate
    if gate.down is None:
      return gate.log_decay(self._input_projection(gate.proj, keys, values))
    return gate.log_decay(gate.proj(self._input_projection(gate.down, keys, values)))

  def _recurrent_read(self, keys, values, queries, v, k, projection):
    """A recurrent FWP reads at every written step (its output y_t is fed back), so each written
    step also has a query: q_t = W_q embed(key_t), what the memory holds under the key being
    written. The query key is then one more step from the final state that reads and writes
    nothing; every query starts from that same state."""
    config, parts = self.fast_weight, self.recurrent
    phi = layers.feature_function(config, projection)
    proj = lambda linear: self._input_projection(linear, keys, values)
    beta_logit = proj(self.beta_proj)                                        # [B, T, G]
    emb_written = layers.lookup(self.embed, keys)
    emb_query = layers.lookup(self.embed, queries)
    if config.recurrence == "rdn":
      y, state = rfwp.rdn(self.q_proj(emb_written)[:, :, None], k[:, :, None], v[:, :, None],
                          beta_logit, parts.rdn_weights(), phi=phi)
      read = lambda qx: rfwp.rdn_step(state, qx[:, None], None, None, None, parts.rdn_weights(),
                                      phi, write=False)[0][:, 0]
      return jax.vmap(read, in_axes=1, out_axes=1)(self.q_proj(emb_query))  # [B, Q, S]
    g = config.memories                  # the Delta LSTM's gates i, u, o; the values feed u
    gates = lambda a: a.reshape(a.shape[:2] + (g, -1))
    queries_of = lambda emb: gates(self.q_proj(emb) if g == 1 else
                                   jnp.concatenate([self.q_proj(emb), parts.q_extra(emb)], -1))
    if g == 1:
      k_all, v_all = k[:, :, None], v[:, :, None]                            # [B, T, 1, ·]
    else:
      k_all = gates(jnp.concatenate([k, proj(parts.k_extra)], -1))
      v_io = proj(parts.v_extra).reshape(k.shape[:2] + (g - 1, -1))        # gates i and o
      v_all = jnp.concatenate([v_io[:, :, :1], v[:, :, None], v_io[:, :, 1:]], axis=2)
    z, w = ops.delta_rule(phi(queries_of(emb_written), True), phi(k_all, False), v_all,
                          jax.nn.sigmoid(beta_logit), form=config.form,
                          chunk_size=config.chunk_size)                      # z [B, T, G, S]
    kr, vr, br = rfwp.recurrent_writes(gates(proj(parts.rec_proj)), self.num_keys)
    z_query = jnp.einsum("bgsk,bqgk->bqgs", w, phi(queries_of(emb_query), True))
    if g == 1:
      _, state = rfwp.delta_rnn(z, kr, vr, br)
      read = lambda zq: rfwp.delta_rnn_step(state, zq, None, None, None, write=False)[0][:, 0]
    else:
      one_head = lambda a: a[:, :, None]
      _, state = rfwp.delta_lstm(one_head(z), one_head(kr), one_head(vr), one_head(br))
      read = lambda zq: rfwp.delta_lstm_step(state, zq[:, None], None, None, None,
                                             write=False)[0][:, 0]
    return jax.vmap(read, in_axes=1, out_axes=1)(z_query)


class RecurrentParts(nnx.Module):
  """The retrieval model's extra slow weights for a recurrent FWP (fwp.rfwp), one head:
  Delta RNN / LSTM: the recurrent key (softmax), value and β of each memory from x_t;
  Delta LSTM: keys, queries and values of the input and output gates' memories (the update
  gate's values are the one-hot values); RDN: R_q, R_k [S, d], R_v [S, S], r_b [S]."""

  def __init__(self, num_keys: int, e: int, d: int, config: layers.FastWeightConfig,
               rngs: nnx.Rngs):
    s, g = num_keys, config.memories
    init = _uniform_symmetric(1 / math.sqrt(d))
    linear = lambda d_in, d_out, **kw: nnx.Linear(d_in, d_out, use_bias=False, rngs=rngs, **kw)
    self.rec_proj = (linear(s + e, g * (2 * s + 1)) if config.recurrence != "rdn" else None)
    self.k_extra = linear(s + e, (g - 1) * d, kernel_init=init) if g > 1 else None
    self.q_extra = linear(e, (g - 1) * d, kernel_init=init) if g > 1 else None
    self.v_extra = linear(s + e, (g - 1) * s) if g > 1 else None
    self.rdn = (layers.rdn_params(rngs, 1, s, d, 1 / math.sqrt(s))
                if config.recurrence == "rdn" else None)

  def rdn_weights(self) -> rfwp.RDNWeights:
    return rfwp.RDNWeights(*(p[...] for p in self.rdn))


def scatter_by_value(c, values, num_values: int):
  """y [B, Q, S] with y[b, q] = Σ_t c[b, q, t] e_{values[b, t]}: c [B, Q, T] times one-hot
  values [B, T] → [B, T, S], without the one-hot (32 × 600 × 600 floats at S = 600)."""
  b, q, t = c.shape
  rows = jnp.arange(b)[:, None, None]
  cols = jnp.arange(q)[None, :, None]
  return jnp.zeros((b, q, num_values), c.dtype).at[rows, cols, values[:, None, :]].add(c)


def _softmax_read(q, k, values, num_values, score_weight=None):
  """Each query attends over the whole written sequence (it comes after it): scores q·k/√d, or
  wᵀ tanh(q + k) (additive attention) with `score_weight` w [d]; the one-hot values are
  scattered by id."""
  if score_weight is None:
    scores = jnp.einsum("bqd,btd->bqt", q, k) / math.sqrt(q.shape[-1])
  else:
    scores = jnp.einsum("bqtd,d->bqt", jnp.tanh(q[:, :, None] + k[:, None]),
                        score_weight[...].astype(q.dtype))
  return scatter_by_value(jax.nn.softmax(scores, axis=-1), values, num_values)


def _torch_linear_init(fan_in: int):
  """PyTorch nn.Linear's default init of its bias (and, here, of its weight): U(±1/√fan_in)."""
  return _uniform_symmetric(1 / math.sqrt(fan_in))


def _uniform_symmetric(scale):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init
