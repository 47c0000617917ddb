"""Flax NNX layers: multi-head fast weight attention, and a causal softmax-attention baseline.

Shapes: x [B, T, D] in, [B, T, D] out; per head, q and k are d_head before φ and d_dot after.
`fast_weight_attention` is the functional core (φ, normalisation, rule, form) that both the layer
and the paper's retrieval model call.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from fwp import checks, feature_maps, normalization, ops, rfwp

RECURRENCES = ("none",) + rfwp.RECURRENCES + ("srwm",)   # srwm: fwp.srwm's layer
GATES = ("head", "channel", "none")
GATE_RANK = 16              # the per-channel gate's low-rank projection (FLA's KDA: 16)
QK_NORMS = ("none", "l2")
OUTPUT_NORMS = ("none", "rmsnorm")
L2_EPS = 1e-6               # FLA's l2norm: x / sqrt(Σx² + eps)
RMS_EPS = 1e-5              # FLA's GatedDeltaNet norm_eps


@dataclasses.dataclass(frozen=True)
class FastWeightConfig:
  """What a fast weight layer computes; `form` and `chunk_size` only say how."""
  feature_map: str = "elu_plus_one"
  nu: int = 1                        # DPFP-ν
  num_features: int = 64             # FAVOR+ m (d_dot = 2m)
  update_rule: str = "sum"
  normalization: str = "attention"
  form: str = "auto"
  chunk_size: int = 64
  eps: float = 1e-6                  # attention normaliser: z·φ(q) + eps
  # FAVOR+ (feature_maps.favor_plus). The defaults are the authors' `prime`: φ(q)·φ(k) estimates
  # exp(q·k), no offset, no stabiliser. "performer" scales x by d^{-1/4} first (exp(q·k/√d),
  # Choromanski et al.'s definition); favor_eps is lmtool-fwp's kernel_eps (their LM: 1e-4);
  # favor_stabilize divides a query's features by their largest (exact under a normaliser up to
  # its eps; a guard against underflow the authors do not have).
  favor_scaling: str = "none"
  favor_eps: float = 0.0
  favor_stabilize: bool = False
  # How the projection is drawn (feature_maps.PROJECTIONS): "orthogonal", rows orthogonal in
  # blocks and each N(0, I) (Choromanski et al.; the synthetic code's law), or "lmtool", the
  # authors' LM layers' draw (its arguments swapped: columns of a row-scaled orthogonal stack).
  favor_projection: str = "orthogonal"
  # Sum normalisation of queries: φ(q) / (Σφ(q) + sum_query_eps); keys never have an eps. The
  # authors' retrieval model: 1e-6; their LM layers: 0.
  sum_query_eps: float = 0.0
  # fwm: False leaves the first write from the empty memory unnormalised (the authors' retrieval
  # code normalises from the second write on); only for a sequence read from W = 0. Other
  # rules ignore it.
  fwm_normalize_first: bool = True
  # Recurrent FWPs (fwp.rfwp): "delta_rnn" and "delta_lstm" add recurrent fast weights on top of
  # Delta Nets (which keep `form`); "rdn" makes the slow net recurrent (always a scan).
  recurrence: str = "none"
  # What the fast weights are summed in (fwp.ops.ACCUMULATE): "float32" (bfloat16 inputs, float32
  # state; the default) or "input" (pure bfloat16 under bfloat16 inputs; results/precision.md).
  accumulate: str = "float32"
  # The gated rules (gated_sum, gated_delta): where the forget gate α = exp(log_decay) acts.
  # "head": one per head, α = exp(−exp(A_log) · softplus(W_a x + dt_bias)), as Mamba-2 and FLA's
  # GatedDeltaNet layer; "channel": one per key channel (KDA), the same form with a rank-
  # GATE_RANK projection W_a = W_up W_down and A_log per head, dt_bias per channel; "none":
  # delta_product without a gate.
  gate: str = "head"
  # β = beta_max · σ(W_β x): 1 is the delta rule's (0, 1); 2 lets I − β k kᵀ have negative
  # eigenvalues (Grazzi et al. 2025; the `-neg` of a model name).
  beta_max: float = 1.0
  # delta_product: N, the delta writes per token (N keys, values and β per head and token).
  num_writes: int = 1
  # FLA's DeltaNet / Gated DeltaNet layer options, all off by default. short_conv: the width of
  # a depthwise causal convolution on each of q, k, v's projections, then SiLU (FLA's
  # ShortConvolution(activation="silu"); width 4 there), carrying its last width − 1 inputs in
  # the decoding state. qk_norm="l2": φ(q), φ(k) divided by their L2 norm (√(Σx² + 1e-6)) and
  # q scaled by d_dot^-1/2 (FLA's use_qk_l2norm_in_kernel and default scale); it replaces the
  # normaliser, so it needs normalization="none". output_norm="rmsnorm": each head's read-out
  # RMS-normalised over its d_head values (eps 1e-5, a learned scale); output_gate: the
  # read-out times SiLU(W_g x) (with both: FLA's FusedRMSNormGated).
  short_conv: int = 0
  qk_norm: str = "none"
  output_norm: str = "none"
  output_gate: bool = False

  def __post_init__(self):
    feature_maps.check_name(self.feature_map)
    normalization.check_name(self.normalization)
    ops.validate(self.update_rule, self.form, self.chunk_size, self.accumulate)
    record = ops.rules.get(self.update_rule)
    writes = self.num_writes
    if isinstance(writes, bool) or not isinstance(writes, int) or writes < 1 or (
        writes > 1 and not record.writes_per_token):
      raise ValueError(f"num_writes is delta_product's N >= 1 (every other rule writes once per "
                       f"token: 1), got num_writes={writes!r} with update_rule="
                       f"{self.update_rule!r}.")
    check_choice("qk_norm", self.qk_norm, QK_NORMS)
    if self.qk_norm != "none" and self.normalization != "none":
      raise ValueError(f"qk_norm={self.qk_norm!r} normalises φ(q), φ(k) itself; it needs "
                       f"normalization 'none', got {self.normalization!r}.")
    check_choice("output_norm", self.output_norm, OUTPUT_NORMS)
    if not isinstance(self.output_gate, bool):
      raise ValueError(f"output_gate must be True or False, got {self.output_gate!r}.")
    if isinstance(self.short_conv, bool) or not isinstance(self.short_conv, int) or (
        self.short_conv < 0):
      raise ValueError(f"short_conv is a convolution width >= 1, or 0 for none (FLA's: 4), got "
                       f"{self.short_conv!r}.")
    extras = self.short_conv or self.output_gate or self.output_norm != "none"
    if extras and self.recurrence != "none":
      raise ValueError(f"short_conv, output_norm and output_gate are options of the fast weight "
                       f"layer, not of the recurrent FWPs; got recurrence={self.recurrence!r}.")
    check_choice("gate", self.gate, GATES)
    if self.gate == "none" and record.gated and not record.gate_optional:
      raise ValueError(f"The {self.update_rule} rule needs a forget gate: gate 'head' or "
                       f"'channel' ('none' is for delta_product, whose gate is optional).")
    if record.gated and (self.attention_normalized or self.recurrence != "none"):
      raise ValueError(f"The {self.update_rule} rule's layer forgets through its gate; it takes "
                       f"normalization 'none' or 'sum' (an attention normaliser would need the "
                       f"same decay) and no recurrence, got normalization="
                       f"{self.normalization!r}, recurrence={self.recurrence!r}.")
    if isinstance(self.beta_max, bool) or not isinstance(self.beta_max, (int, float)) or not (
        0 < self.beta_max <= 2):
      raise ValueError(f"beta_max must be in (0, 2] (2: negative eigenvalues), got "
                       f"{self.beta_max!r}.")
    if self.recurrence != "none" and self.accumulate != "float32":
      raise ValueError(f"The recurrent FWPs (fwp.rfwp) always accumulate in float32; "
                       f"accumulate={self.accumulate!r} is for recurrence='none'.")
    check_choice("recurrence", self.recurrence, RECURRENCES)
    if self.recurrence != "none" and (self.update_rule != "delta"
                                      or self.attention_normalized):
      raise ValueError(f"The {self.recurrence} recurrent FWP is built on the delta rule with sum "
                       f"or no normalisation (as the authors' layers), got update_rule="
                       f"{self.update_rule!r}, normalization={self.normalization!r}.")
    if self.recurrence == "srwm" and (self.feature_map != "identity"
                                      or self.normalization != "none"):
      raise ValueError(f"The SRWM reads its input as it is (fwp-formal-lang's SRWMlayer): it "
                       f"takes feature_map 'identity' and normalization 'none', got "
                       f"{self.feature_map!r}, {self.normalization!r}.")
    if self.feature_map == "dpfp" and (not isinstance(self.nu, int) or self.nu < 1):
      raise ValueError(f"dpfp needs an integer nu >= 1, got nu={self.nu!r}.")
    if self.feature_map == "favor_plus" and self.num_features < 1:
      raise ValueError(f"favor_plus needs num_features >= 1, got {self.num_features}.")
    feature_maps.check_favor_options(self.favor_scaling, self.favor_eps)
    check_choice("favor_projection", self.favor_projection, feature_maps.PROJECTIONS)
    for name in ("eps", "sum_query_eps"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
    if self.sum_normalized and not feature_maps.get(self.feature_map).positive:
      raise ValueError(f"Sum normalisation divides by Σφ, so it needs a positive feature map "
                       f"({', '.join(feature_maps.POSITIVE)}), got {self.feature_map!r}.")

  @property
  def sum_normalized(self) -> bool:
    """φ(q), φ(k) divided by their sums ("sum", "sum_attention")."""
    return self.normalization in ("sum", "sum_attention")

  @property
  def attention_normalized(self) -> bool:
    """The output divided by z·φ(q) + eps ("attention", "sum_attention")."""
    return self.normalization in ("attention", "sum_attention")

  @property
  def favor_options(self) -> dict:
    """feature_maps.favor_plus's options (ignored by the other feature maps)."""
    return {"scaling": self.favor_scaling, "kernel_eps": self.favor_eps}

  @property
  def uses_beta(self) -> bool:
    return ops.rules.get(self.update_rule).uses_beta

  @property
  def gated(self) -> bool:
    """Whether the layer has a forget gate (delta_product's is optional: gate="none")."""
    return ops.rules.get(self.update_rule).gated and self.gate != "none"

  @property
  def memories(self) -> int:
    """Delta Nets per head: three (gates i, u, o) for the Delta LSTM, else one."""
    return rfwp.GATES if self.recurrence == "delta_lstm" else 1

  def d_dot(self, d_head: int) -> int:
    return feature_maps.output_dim(self.feature_map, d_head, nu=self.nu,
                                   num_features=self.num_features)


def sinusoid(positions: jax.Array, d_model: int, dtype=jnp.float32) -> jax.Array:
  """[..., d_model]: sin in the first half, cos in the second (Transformer-XL's layout): the
  LM's absolute positions and Transformer-XL's distance embedding (fwp.txl)."""
  compute = jnp.promote_types(dtype, jnp.float32)
  inv_freq = 1.0 / (10000 ** (jnp.arange(0, d_model, 2, dtype=compute) / d_model))
  angles = positions[..., None].astype(compute) * inv_freq
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1).astype(dtype)


def lookup(embed: nnx.Embed, ids) -> jax.Array:
  """embed(ids) in the table's current dtype: nnx.Embed fixes its compute dtype when built, so
  after its parameters are cast (to float64, for the equivalence proofs) it would round the rows
  back to float32."""
  return jnp.take(embed.embedding[...], ids, axis=0)


class FastWeightState(NamedTuple):
  """The fast weights after the last step: w [B, H, V, d_dot]; z [B, H, 1, d_dot] is the attention
  normaliser's running key sum (None for other normalisations); `rec` is a recurrent FWP's state
  (fwp.rfwp: DeltaRNNState, DeltaLSTMState, or RDNState, which holds the RDN's W, w is None);
  `conv` the short convolutions' inputs so far (None: a sequence start, zeros)."""
  w: jax.Array | None
  z: jax.Array | None = None
  rec: tuple | None = None
  conv: tuple | None = None       # short_conv: q, k, v's last width − 1 inputs [B, width − 1, C]


def fast_weight_attention(q, k, v, beta, config: FastWeightConfig, *, projection=None,
                          initial_state: FastWeightState | None = None, log_decay=None):
  """q, k [B, T, H, d_head] before φ; v [B, T, H, V]; beta [B, T, H] or None; log_decay (the
  gated rules) [B, T, H] or [B, T, H, d_dot].

  Returns (y [B, T, H, V], FastWeightState).
  """
  q, k = feature_pair(q, k, config, projection)
  w0 = None if initial_state is None else initial_state.w
  y, w = ops.apply_rule(config.update_rule, q, k, v, beta if config.uses_beta else None,
                        log_decay=log_decay,
                        form=config.form, chunk_size=config.chunk_size, initial_state=w0,
                        accumulate=config.accumulate,
                        normalize_first=config.fwm_normalize_first)
  z = None
  if config.attention_normalized:
    z0 = None if initial_state is None else initial_state.z
    den, z = normalization.attention_denominator(q, k, form=_linear_form(config), chunk_size=
                                                 config.chunk_size, initial_state=z0,
                                                 accumulate=config.accumulate)
    y = normalization.attention_normalize(y, den, config.eps)
  return y, FastWeightState(w, z)


def feature_pair(q, k, config: FastWeightConfig, projection=None):
  """(φ(q), φ(k)) for `config`, sum-normalised when its normalisation is "sum"."""
  phi = feature_function(config, projection)
  return phi(q, True), phi(k, False)


def feature_function(config: FastWeightConfig, projection=None):
  """phi(x, is_query): φ, then sum normalisation when the config asks for it."""
  def phi(x, is_query):
    # A query-side stabiliser is exact only where a normaliser divides it out.
    stabilize = is_query and config.favor_stabilize and config.normalization != "none"
    x = feature_maps.apply(config.feature_map, x, nu=config.nu, projection=projection,
                           is_query=stabilize, **config.favor_options)
    if config.qk_norm == "l2":
      x = x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + L2_EPS)
      return x * x.shape[-1] ** -0.5 if is_query else x
    if not config.sum_normalized:
      return x
    return normalization.sum_normalize(x, config.sum_query_eps if is_query else 0.0)
  return phi


def _linear_form(config: FastWeightConfig) -> str:
  # The normaliser is a sum-rule memory, which has every form; FWM layers run it recurrently.
  return config.form if config.form in ops.FORMS else "recurrent"


class FeatureProjection(nnx.Variable):
  """FAVOR+'s random projection: state that checkpoints restore, but not a trainable parameter."""


def draw_projection(key, config: FastWeightConfig, d_head: int, dtype=jnp.float32):
  return feature_maps.PROJECTIONS[config.favor_projection](key, config.num_features, d_head,
                                                           dtype)


def call_projection(stored: FeatureProjection | None, key, config: FastWeightConfig,
                    d_head: int, dtype):
  """The FAVOR+ projection for one call: fresh from `key` when given, else the stored one."""
  if stored is None:
    return None
  return stored[...] if key is None else draw_projection(key, config, d_head, dtype)


class FastWeightAttention(nnx.Module):
  """Multi-head linear attention / fast weight programmer, or a recurrent FWP (config.recurrence).

  Call with x [B, T, D]. `projection_key` draws a fresh FAVOR+ projection for this call only (the
  authors redraw at every forward pass); without it the layer's stored projection is used, and
  `redraw_projection` replaces that one.

  Recurrent FWPs (fwp.rfwp), as the authors' layers: the Delta RNN adds, per head, a recurrent
  key (softmax), value and β (sigmoid) from x; the Delta LSTM has three Delta Nets (q, k, v, β per
  gate) and three such recurrent writes; the RDN adds learned R_q, R_k, R_v, r_b (normal, std
  1/√d_head) through which tanh(y_{t-1}) enters q, k, v and β.
  """

  def __init__(self, d_model: int, num_heads: int, d_head: int, config: FastWeightConfig, *,
               rngs: nnx.Rngs, dtype=None):
    if config.update_rule == "fwm" and not config.fwm_normalize_first:
      raise ValueError("fwm_normalize_first=False (the authors' retrieval model) depends on "
                       "where a sequence starts, so a layer that is also run one step at a time "
                       "from a state would compute another function; it needs True.")
    self.num_heads, self.d_head, self.config = num_heads, d_head, config
    linear = lambda d_out: nnx.Linear(d_model, d_out, use_bias=False, dtype=dtype, rngs=rngs)
    heads = num_heads * config.memories
    writes = config.num_writes           # delta_product's N keys, values and β per head
    self.q_proj = linear(heads * d_head)
    self.k_proj = linear(heads * writes * d_head)
    self.v_proj = linear(heads * writes * d_head)
    self.beta_proj = (nnx.Linear(d_model, heads * writes, dtype=dtype, rngs=rngs)
                      if config.uses_beta else None)
    conv = lambda width: ShortConv(width, config.short_conv, rngs=rngs)
    self.convs = (nnx.List([conv(heads * d_head), conv(heads * writes * d_head),
                            conv(heads * writes * d_head)]) if config.short_conv else None)
    self.output_gate = linear(num_heads * d_head) if config.output_gate else None
    self.output_scale = (nnx.Param(jnp.ones((d_head,))) if config.output_norm == "rmsnorm"
                         else None)
    self.gate = (ForgetGate(d_model, num_heads, config.d_dot(d_head), config.gate, rngs=rngs,
                            dtype=dtype) if config.gated else None)
    # Delta RNN / LSTM: recurrent key and value (d_head each) and β per head and memory.
    self.rec_proj = (linear(heads * (2 * d_head + 1))
                     if config.recurrence in ("delta_rnn", "delta_lstm") else None)
    self.rdn_weights = (rdn_params(rngs, num_heads, d_head, d_head, 1.0 / math.sqrt(d_head))
                        if config.recurrence == "rdn" else None)
    self.out_proj = linear_out(num_heads * d_head, d_model, dtype, rngs)
    self.projection = (FeatureProjection(draw_projection(rngs.params(), config, d_head))
                       if feature_maps.get(config.feature_map).needs_projection else None)

  def redraw_projection(self, key: jax.Array) -> None:
    if self.projection is None:
      raise ValueError(f"Only favor_plus has a projection to redraw, this layer uses "
                       f"{self.config.feature_map!r}.")
    # In the stored projection's dtype, as a call with a projection key draws in its inputs'.
    self.projection[...] = draw_projection(key, self.config, self.d_head,
                                           self.projection[...].dtype)

  def init_state(self, batch_size: int, dtype=jnp.float32) -> FastWeightState:
    """The empty memory: W = 0 (and z = 0 under attention normalisation; a recurrent FWP's R,
    y and c are 0 too)."""
    c, h, v = self.config, self.num_heads, self.d_head
    d_dot = c.d_dot(self.d_head)
    zeros = lambda *shape: jnp.zeros((batch_size,) + shape, dtype)
    if c.recurrence == "rdn":
      return FastWeightState(None, None, rfwp.RDNState(zeros(h, v, d_dot), zeros(h, v)))
    w = zeros(h * c.memories, v, d_dot)
    z = zeros(h, 1, d_dot) if c.attention_normalized else None
    rec = {"none": None,
           "delta_rnn": rfwp.DeltaRNNState(zeros(h, v, v), zeros(h, v)),
           "delta_lstm": rfwp.DeltaLSTMState(zeros(h, rfwp.GATES, v, v), zeros(h, v),
                                             zeros(h, v))}[c.recurrence]
    conv = (None if self.convs is None else
            tuple(zeros(c.short_conv - 1, m.kernel.shape[1]) for m in self.convs))
    return FastWeightState(w, z, rec, conv)

  def __call__(self, x, *, initial_state: FastWeightState | None = None,
               return_state: bool = False, projection_key: jax.Array | None = None):
    _check_input(x, self.out_proj.out_features)
    b, t, _ = x.shape
    config, memories = self.config, self.config.memories
    # The projections may run in bfloat16 (dtype=); the memory is always at least float32.
    heads = lambda y, n=self.num_heads * memories: at_least_f32(y).reshape(b, t, n, -1)
    q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
    conv = None
    if self.convs is not None:
      tails = (None,) * 3 if initial_state is None or initial_state.conv is None else (
          initial_state.conv)
      (q, tq), (k, tk), (v, tv) = (m(a, tail) for m, a, tail in zip(self.convs, (q, k, v),
                                                                    tails))
      conv = (tq, tk, tv)
    beta_logit = (at_least_f32(self.beta_proj(x)) if self.beta_proj is not None else None)
    if ops.rules.get(config.update_rule).writes_per_token:      # delta_product, any N >= 1
      # FLA's GatedDeltaProduct layout: the N writes outermost in each projection.
      writes = lambda y: jnp.moveaxis(at_least_f32(y).reshape(b, t, config.num_writes,
                                                              self.num_heads, -1), 2, 3)
      q, k, v = heads(q), writes(k), writes(v)
      beta_logit = None if beta_logit is None else writes(beta_logit)[..., 0]
    else:
      q, k, v = heads(q), heads(k), heads(v)
    projection = call_projection(self.projection, projection_key, config, self.d_head,
                                 q.dtype)
    rec0 = None if initial_state is None else initial_state.rec
    if config.recurrence == "rdn":
      weights = rfwp.RDNWeights(*(p[...].astype(q.dtype) for p in self.rdn_weights))
      y, rec = rfwp.rdn(q, k, v, beta_logit, weights, phi=feature_function(config, projection),
                        initial_state=rec0)
      state = FastWeightState(None, None, rec)
    else:
      beta = None if beta_logit is None else config.beta_max * jax.nn.sigmoid(beta_logit)
      log_decay = None if self.gate is None else self.gate(x)
      y, state = fast_weight_attention(q, k, v, beta, config, projection=projection,
                                       initial_state=initial_state, log_decay=log_decay)
      if self.rec_proj is not None:
        y, rec = self._recurrent_part(y, heads(self.rec_proj(x)), rec0)
        state = state._replace(rec=rec)
      state = state._replace(conv=conv)
    y = self._output(y, x)
    out = self.out_proj(y.reshape(b, t, -1))
    return (out, state) if return_state else out

  def _output(self, y, x):
    """The read-out y [B, T, H, V] after the options: per-head RMSNorm, then × SiLU(W_g x)."""
    if self.output_scale is not None:
      y = y * jax.lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + RMS_EPS)
      y = y * self.output_scale[...].astype(y.dtype)
    if self.output_gate is not None:
      g = at_least_f32(self.output_gate(x)).reshape(y.shape)
      y = y * jax.nn.silu(g)
    return y

  def _recurrent_part(self, z, rec_in, rec0):
    """The Delta RNN / LSTM recurrence on the Delta Nets' outputs z [B, T, H·memories, V]."""
    kr, vr, br = rfwp.recurrent_writes(rec_in, self.d_head)
    if self.config.recurrence == "delta_rnn":
      return rfwp.delta_rnn(z, kr, vr, br, initial_state=rec0)
    b, t = z.shape[:2]
    gates = lambda a: a.reshape((b, t, self.num_heads, rfwp.GATES) + a.shape[3:])
    return rfwp.delta_lstm(gates(z), gates(kr), gates(vr), gates(br), initial_state=rec0)


class ShortConv(nnx.Module):
  """A depthwise causal convolution of width W over time, then SiLU, on x [B, T, C]: FLA's
  ShortConvolution (bias-free, activation "silu"), y_t = SiLU(Σ_j w_j ⊙ x_{t−W+1+j}), with
  x before the sequence the `tail` [B, W − 1, C] of inputs carried from a previous call (zeros
  at a sequence start). Returns (y, the new tail). Initialised as torch's Conv1d with one input
  channel per group: U(±1/√W)."""

  def __init__(self, channels: int, width: int, *, rngs: nnx.Rngs):
    bound = 1.0 / math.sqrt(width)
    self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (width, channels), minval=-bound,
                                               maxval=bound))

  def __call__(self, x, tail=None):
    width, t = self.kernel.shape[0], x.shape[1]
    if tail is None:
      tail = jnp.zeros((x.shape[0], width - 1, x.shape[2]), x.dtype)
    xs = jnp.concatenate([tail.astype(x.dtype), x], axis=1)         # [B, W − 1 + T, C]
    kernel = self.kernel[...].astype(x.dtype)
    y = sum(kernel[j] * xs[:, j:j + t] for j in range(width))
    return jax.nn.silu(y), xs[:, xs.shape[1] - (width - 1):]


class ForgetGate(nnx.Module):
  """log α [B, T, H] ("head") or [B, T, H, d_dot] ("channel") from x [B, T, D]:
  −exp(A_log) · softplus(W_a x + dt_bias), as FLA's GatedDeltaNet (and Mamba-2) computes it, so
  α ∈ (0, 1). Initialised as FLA's GatedDeltaNet: A uniform in (0, 16) (Mamba-2's: (1, 16)),
  dt log-uniform in (0.001, 0.1) (floor 1e-4) and dt_bias its inverse softplus. "channel":
  W_a = W_up W_down of rank GATE_RANK, A_log per head, dt_bias per channel (KDA's gate)."""

  def __init__(self, d_model: int, num_heads: int, d_dot: int, kind: str, *, rngs: nnx.Rngs,
               dtype=None):
    self.num_heads, self.kind = num_heads, kind
    width = num_heads * (d_dot if kind == "channel" else 1)
    linear = lambda d_in, d_out: nnx.Linear(d_in, d_out, use_bias=False, dtype=dtype, rngs=rngs)
    self.down = linear(d_model, GATE_RANK) if kind == "channel" else None
    self.proj = linear(GATE_RANK if kind == "channel" else d_model, width)
    self.a_log = nnx.Param(jnp.log(jax.random.uniform(rngs.params(), (num_heads,),
                                                      minval=0.0, maxval=16.0)))
    dt = jnp.exp(jax.random.uniform(rngs.params(), (width,), minval=math.log(1e-3),
                                    maxval=math.log(0.1)))
    dt = jnp.maximum(dt, 1e-4)
    self.dt_bias = nnx.Param(dt + jnp.log(-jnp.expm1(-dt)))       # softplus⁻¹(dt)

  def __call__(self, x):
    h = x if self.down is None else self.down(x)
    return self.log_decay(self.proj(h))

  def log_decay(self, a):
    """log α from the projection's output a = W_a x [B, T, width] (a model that projects its
    input its own way, fwp.retrieval, calls this)."""
    b, t, _ = a.shape
    a = at_least_f32(a)
    a = a + self.dt_bias[...].astype(a.dtype)
    rate = jnp.exp(self.a_log[...].astype(a.dtype))
    if self.kind == "head":
      return -rate * jax.nn.softplus(a)                              # [B, T, H]
    return -rate[:, None] * jax.nn.softplus(a.reshape(b, t, self.num_heads, -1))


class KVCache(NamedTuple):
  """Softmax attention's decoding state: keys and values of every position so far, in a buffer of
  fixed capacity L (k, v [B, L, H, d_head]); positions >= `length` are empty. It grows with the
  context, which is the point of comparison with a fast weight memory."""
  k: jax.Array
  v: jax.Array
  length: jax.Array        # [] int32


SCORINGS = ("dot", "additive")


class SoftmaxAttention(nnx.Module):
  """Causal softmax attention with FastWeightAttention's interface. Its state is a KVCache: with
  `initial_state`, the T new positions are written at [length, length + T) of the cache (which
  must have room: capacity is static, the length is traced, so it cannot be checked here) and
  attend to everything before them.

  `scoring="dot"`: q·k/√d (Vaswani et al. 2017). `scoring="additive"`: wᵀ tanh(q + k) per head,
  with q = W_q x and k = W_k x the projections (Bahdanau, Cho, Bengio 2014); it forms a
  [B, T, S, H, d] tensor, so time and memory are O(T²·d), not O(T²)."""

  def __init__(self, d_model: int, num_heads: int, d_head: int, *, rngs: nnx.Rngs,
               dtype=None, scoring: str = "dot"):
    check_scoring(scoring)
    self.num_heads, self.d_head = num_heads, d_head
    linear = lambda d_out: nnx.Linear(d_model, d_out, use_bias=False, dtype=dtype, rngs=rngs)
    self.q_proj = linear(num_heads * d_head)
    self.k_proj = linear(num_heads * d_head)
    self.v_proj = linear(num_heads * d_head)
    self.out_proj = linear_out(num_heads * d_head, d_model, dtype, rngs)
    self.score_weight = (nnx.Param(nnx.initializers.normal(d_head ** -0.5)(
        rngs.params(), (num_heads, d_head))) if scoring == "additive" else None)

  def init_state(self, batch_size: int, capacity: int, dtype=jnp.float32) -> KVCache:
    shape = (batch_size, capacity, self.num_heads, self.d_head)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))

  def __call__(self, x, *, initial_state: KVCache | None = None, return_state: bool = False):
    _check_input(x, self.out_proj.out_features)
    b, t, _ = x.shape
    heads = lambda y: y.reshape(b, t, self.num_heads, self.d_head)
    q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
    w = None if self.score_weight is None else self.score_weight[...].astype(q.dtype)
    if initial_state is None:
      y = causal_softmax_attention(q, k, v, score_weight=w)
      state = KVCache(k, v, jnp.asarray(t, jnp.int32))
    else:
      cache = initial_state
      start = cache.length
      ks = jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), start, axis=1)
      vs = jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), start, axis=1)
      query_pos = start + jnp.arange(t)
      visible = jnp.arange(ks.shape[1])[None, :] <= query_pos[:, None]      # [T, L]
      y = causal_softmax_attention(q, ks.astype(q.dtype), vs.astype(q.dtype), mask=visible,
                                   score_weight=w)
      state = KVCache(ks, vs, start + t)
    out = self.out_proj(y.reshape(b, t, -1))
    return (out, state) if return_state else out


def linear_out(d_in: int, d_out: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(d_in, d_out, use_bias=False, dtype=dtype, rngs=rngs)


def causal_softmax_attention(q, k, v, mask=None, score_weight=None):
  """q [B, T, H, d], k [B, S, H, d], v [B, S, H, V]; scores q·k/√d, or with `score_weight` w
  [H, d] the additive scores wᵀ tanh(q + k). `mask` [T, S] says which keys each query sees; by
  default the causal mask (S = T)."""
  if score_weight is None:
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
  else:
    scores = jnp.einsum("btshd,hd->bhts", jnp.tanh(q[:, :, None] + k[:, None]), score_weight)
  if mask is None:
    mask = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))
  scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
  return jnp.einsum("bhts,bshv->bthv", jax.nn.softmax(scores, axis=-1), v)


def at_least_f32(x):
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def check_choice(field: str, value, choices) -> None:
  """ValueError naming `field`'s bad value and its valid choices."""
  checks.choice(field, value, choices)


def check_scoring(scoring: str) -> None:
  check_choice("attention scoring", scoring, SCORINGS)


def rdn_params(rngs: nnx.Rngs, heads: int, d_value: int, d_in: int, std: float) -> nnx.List:
  """An RDN's recurrent slow weights (rfwp.RDNWeights: R_q, R_k [H, V, D], R_v [H, V, V],
  r_b [H, V]) as parameters drawn from N(0, std²)."""
  init = nnx.initializers.normal(std)
  shapes = rfwp.RDNWeights((heads, d_value, d_in), (heads, d_value, d_in),
                           (heads, d_value, d_value), (heads, d_value))
  return nnx.List([nnx.Param(init(rngs.params(), shape)) for shape in shapes])


def _check_input(x, d_model: int) -> None:
  if x.ndim != 3 or x.shape[-1] != d_model:
    raise ValueError(f"Expected x of shape [batch, time, {d_model}], got {x.shape}.")
