"""A decoder-only Transformer language model whose attention is any fast weight layer or softmax.

Trained in parallel (every position of a segment at once, in the layer's parallel / chunked /
recurrent form) and decoded as an RNN: `init_state` and `step(state, tokens)` carry each layer's
fast weights (W, and z under attention normalisation) from one token to the next, so a fast
weight model's memory is the same size at token 10 and token 10⁶. Softmax layers carry their
growing key/value cache instead.

Block (post-LN, as the authors' Transformer-XL code; `pre_norm=True` for pre-LN):
  h = LN(x + drop(scale · attn(x)));  out = LN(h + drop(W₂ drop(relu(W₁ h))))
`scale` is 1/√d_head for fast weight layers, as in the authors' layers (lmtool-fwp), 1 for
softmax. The input is √d_model · embed(token) + sinusoid(position), dropped out; the output
embedding is tied to the input one. With `adaptive_cutoffs` the output is the authors' adaptive
softmax (div_val 1: one tied embedding, a head over the shortlist and one logit per tail
cluster, then a softmax inside each cluster); it is computed in full, so `__call__` returns
log-probabilities over the whole vocabulary either way, which is all a loss or a sampler needs.

Departures from the authors, named: positions count forward from the segment's start (theirs
count back from its end: another function, which cannot continue into decoding; `positional=
"none"` is their --no_pos); β has a bias. Their other details are options (docs/departures.md):
`final_dropout` (theirs: on), `init="authors"` (their N(0, 0.02) weights_init), `layer_norm_eps`
(theirs: 1e-5), `pre_norm_residual="normed"`; configs/wikitext103.py sets them as theirs.
Dropout keys are explicit arguments, so a step is a pure function of (params, batch, key) and
resume is exact.

With `positional="relative"` the attention is Transformer-XL's (fwp.txl): softmax over a memory
of the previous `mem_len` hidden states per layer and the segment, relative positions, no
absolute ones; its state is that memory, of fixed size, so it too continues from segment to
segment (the baseline of the paper's Table 4).

Shapes: tokens [B, T] int; logits [B, T, V]; state = LMState(position [], layers (per layer a
FastWeightState, KVCache or txl.XLMemory)).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from fwp import checks, layers, srwm, txl

# "relative": Transformer-XL's relative positions (fwp.txl; softmax attention only), no absolute
# positions at the input.
POSITIONALS = ("sinusoidal", "none", "relative")
EMBEDDINGS = ("scaled", "plain")
PRE_NORM_RESIDUALS = ("input", "normed")
INITS = ("flax", "authors")


@dataclasses.dataclass(frozen=True)
class LMConfig:
  vocab_size: int
  num_layers: int = 4
  d_model: int = 128
  num_heads: int = 4
  d_head: int = 32
  d_ff: int = 512
  dropout: float = 0.1
  fast_weight: layers.FastWeightConfig | None = None    # None: softmax attention
  scoring: str = "dot"                                  # without fast weights: dot | additive
  pre_norm: bool = False
  positional: str = "sinusoidal"
  adaptive_cutoffs: tuple[int, ...] = ()                # () = one softmax over the vocabulary
  dtype: str = "float32"                                # matmul dtype: float32 | bfloat16
  # A sequence model with its own output classes (the algorithmic tasks): the authors'
  # models there have an untied output layer, a plain N(0, 1) embedding, no embedding dropout,
  # no 1/√d_head on the fast weight output and, pre-LN, no final LayerNorm. The defaults are
  # the language model's.
  output_size: int = 0              # 0: the tied output embedding over vocab_size
  embedding: str = "scaled"         # scaled: √d_model·E, E ~ N(0, 0.02) | plain: E ~ N(0, 1)
  embedding_dropout: bool = True    # dropout on the blocks' input
  fast_weight_scale: bool = True    # 1/√d_head on a fast weight layer's output
  final_norm: bool | None = None    # a LayerNorm after the last block; None: when pre_norm
  # IDSIA/lmtool-fwp's details (docs/departures.md): "normed" adds a pre-LN block's attention
  # residual to LN(x), as their fast weight layers under --pre_lnorm (h = LN(h); h + attn(h)),
  # and (final_norm None) has no final LayerNorm, as their models; "input" adds it to x (fwp's,
  # and Transformer-XL's). Their LayerNorm eps is torch's 1e-5.
  pre_norm_residual: str = "input"
  layer_norm_eps: float = 1e-6
  # Dropout on the last hidden state, before the output layer (the authors' `self.drop(core_out)`
  # after their last layer; fwp's models before 2026-12 had none).
  final_dropout: bool = False
  # "authors": their train.py's weights_init (--init normal, --init_std 0.02): every Linear
  # kernel N(0, 0.02) and bias 0, every LayerNorm scale N(1, 0.02) and bias 0 (the embedding is
  # N(0, 0.02) under either). "flax": flax's defaults (lecun-normal kernels, scale 1).
  init: str = "flax"
  # Transformer-XL (positional="relative"): how many previous hidden states each layer attends
  # to besides the segment (its memory, the state; 0: a Transformer with relative positions).
  mem_len: int = 0
  # Transformer-XL: distances above clamp_len share clamp_len's embedding (the authors'
  # --clamp_len; their WikiText-103 evaluation scripts use 384); 0: never clamped.
  clamp_len: int = 0
  # Transformer-XL in training: True drops the distance embedding with one mask that every
  # layer shares (the authors' code: pos_emb = self.drop(pos_emb) once); False: a mask per layer.
  shared_distance_dropout: bool = False

  def __post_init__(self):
    for name in ("vocab_size", "num_layers", "d_model", "num_heads", "d_head", "d_ff"):
      checks.positive_int(f"LMConfig.{name}", getattr(self, name))
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"LMConfig.dropout must be in [0, 1), got {self.dropout!r}.")
    if self.positional not in POSITIONALS:
      raise ValueError(f"Unknown positional encoding {self.positional!r}; valid choices: "
                       f"{', '.join(POSITIONALS)}.")
    layers.check_scoring(self.scoring)
    checks.at_least("LMConfig.mem_len", self.mem_len, 0)
    if self.positional == "relative" and (self.fast_weight is not None or self.scoring != "dot"):
      raise ValueError("positional='relative' is Transformer-XL's softmax attention (fwp.txl); "
                       "it needs fast_weight=None and scoring='dot'.")
    checks.at_least("LMConfig.clamp_len", self.clamp_len, 0)
    if self.clamp_len and self.positional != "relative":
      raise ValueError(f"clamp_len={self.clamp_len} clamps Transformer-XL's relative distances; "
                       f"it needs positional='relative', got {self.positional!r}.")
    if self.shared_distance_dropout and self.positional != "relative":
      raise ValueError(f"shared_distance_dropout drops Transformer-XL's distance embedding; it "
                       f"needs positional='relative', got {self.positional!r}.")
    if self.positional == "relative" and self.pre_norm:
      # The authors' pre-LN Transformer-XL keeps the normalised hidden states as its memory
      # behind a stop-gradient, which fwp's memory (the block's input) is not: refused rather
      # than computed differently (docs/departures.md).
      raise ValueError("positional='relative' (Transformer-XL) is post-LN here (pre_norm=False): "
                       "the authors' pre-LN variant's memory is not built.")
    if self.mem_len and self.positional != "relative":
      raise ValueError(f"mem_len={self.mem_len} is Transformer-XL's memory; it needs "
                       f"positional='relative', got {self.positional!r}.")
    if self.pre_norm_residual not in PRE_NORM_RESIDUALS:
      raise ValueError(f"Unknown pre_norm_residual {self.pre_norm_residual!r}; valid choices: "
                       f"{', '.join(PRE_NORM_RESIDUALS)}.")
    eps = self.layer_norm_eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
      raise ValueError(f"LMConfig.layer_norm_eps must be a number > 0, got {eps!r}.")
    if self.init not in INITS:
      raise ValueError(f"Unknown init {self.init!r}; valid choices: {', '.join(INITS)}.")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"LMConfig.dtype must be float32 or bfloat16, got {self.dtype!r}.")
    if self.embedding not in EMBEDDINGS:
      raise ValueError(f"Unknown embedding {self.embedding!r}; valid choices: "
                       f"{', '.join(EMBEDDINGS)}.")
    if isinstance(self.output_size, bool) or not isinstance(self.output_size, int) or (
        self.output_size < 0):
      raise ValueError(f"LMConfig.output_size must be an integer >= 0 (0: the tied output "
                       f"embedding), got {self.output_size!r}.")
    if self.output_size and self.adaptive_cutoffs:
      raise ValueError("adaptive_cutoffs are for the tied output embedding (output_size 0), got "
                       f"output_size={self.output_size}.")
    cut = tuple(self.adaptive_cutoffs)
    if any(not isinstance(c, int) or c < 1 for c in cut) or list(cut) != sorted(set(cut)):
      raise ValueError(f"adaptive_cutoffs must be increasing positive integers, got {cut!r}.")

  @property
  def cutoffs(self) -> tuple[int, ...]:
    """The adaptive softmax's cluster boundaries inside this vocabulary (cutoffs past it drop)."""
    return tuple(c for c in self.adaptive_cutoffs if c < self.vocab_size)


class LMState(NamedTuple):
  position: jax.Array            # [] int32: tokens consumed so far
  layers: tuple                  # one FastWeightState or KVCache per block


sinusoid = layers.sinusoid     # re-exported: the LM's positions


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Inverted dropout; the identity when `key` is None (evaluation) or the rate is 0."""
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def _site(key, index):
  return None if key is None else jax.random.fold_in(key, index)


class Block(nnx.Module):
  def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
    self.config = config
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else None
    if config.positional == "relative":
      self.attention = txl.RelativeAttention(config.d_model, config.num_heads, config.d_head,
                                             config.mem_len, rngs=rngs, dtype=dtype,
                                             clamp_len=config.clamp_len)
      self.scale = 1.0
    elif config.fast_weight is None:
      self.attention = layers.SoftmaxAttention(config.d_model, config.num_heads, config.d_head,
                                               rngs=rngs, dtype=dtype, scoring=config.scoring)
      self.scale = 1.0
    elif config.fast_weight.recurrence == "srwm":
      self.attention = srwm.SRWMAttention(config.d_model, config.num_heads, config.d_head,
                                          rngs=rngs, dtype=dtype)
      self.scale = 1.0
    else:
      self.attention = layers.FastWeightAttention(config.d_model, config.num_heads,
                                                  config.d_head, config.fast_weight, rngs=rngs,
                                                  dtype=dtype)
      self.scale = 1.0 / math.sqrt(config.d_head) if config.fast_weight_scale else 1.0
    self.norm_attention = nnx.LayerNorm(config.d_model, epsilon=config.layer_norm_eps,
                                        rngs=rngs)
    self.ff_in = nnx.Linear(config.d_model, config.d_ff, dtype=dtype, rngs=rngs)
    self.ff_out = nnx.Linear(config.d_ff, config.d_model, dtype=dtype, rngs=rngs)
    self.norm_ff = nnx.LayerNorm(config.d_model, epsilon=config.layer_norm_eps, rngs=rngs)

  def __call__(self, x, state, dropout_key, projection_key, rel_bias=None, distance_key=None):
    """`distance_key`: the key of the distance embedding's dropout when every layer shares one
    mask (LMConfig.shared_distance_dropout); otherwise the block draws its own."""
    rate, pre = self.config.dropout, self.config.pre_norm
    if self.config.positional == "relative":
      key = distance_key if self.config.shared_distance_dropout else _site(dropout_key, 3)
      kwargs = dict(rel_bias=rel_bias, distance_dropout=lambda r: dropout(r, rate, key))
    elif self.config.fast_weight is None:
      kwargs = {}
    else:
      kwargs = dict(projection_key=projection_key)
    if isinstance(self.attention, srwm.SRWMAttention):
      # The SRWM's pre-norm block (fwp-formal-lang's SRWMlayer): the layer reads x itself and
      # the residual is LayerNorm(x): LN(x) + SRWM(x).
      attn_in, residual = x, self.norm_attention(x) if pre else x
    else:
      attn_in = self.norm_attention(x) if pre else x
      residual = attn_in if pre and self.config.pre_norm_residual == "normed" else x
    a, state = self.attention(attn_in, initial_state=state, return_state=True, **kwargs)
    x = residual + dropout(self.scale * a.astype(x.dtype), rate, _site(dropout_key, 0))
    if not pre:
      x = self.norm_attention(x)
    ff_in = self.norm_ff(x) if pre else x
    h = dropout(jax.nn.relu(self.ff_in(ff_in)), rate, _site(dropout_key, 1))
    x = x + dropout(self.ff_out(h).astype(x.dtype), rate, _site(dropout_key, 2))
    if not pre:
      x = self.norm_ff(x)
    return x, state


def authors_init(model: nnx.Module, rngs: nnx.Rngs, std: float = 0.02) -> None:
  """Re-initialises `model` in place as lmtool-fwp's train.py `weights_init` does: every Linear
  kernel N(0, std) and bias 0; every LayerNorm scale N(1, std) and bias 0. Embeddings and other
  parameters (a recurrent FWP's R matrices) keep their own initialisers."""
  for _, module in sorted(nnx.iter_modules(model), key=lambda item: str(item[0])):
    if isinstance(module, nnx.Linear):
      kernel = module.kernel[...]
      module.kernel[...] = std * jax.random.normal(rngs.params(), kernel.shape, kernel.dtype)
      if module.bias is not None:
        module.bias[...] = jnp.zeros_like(module.bias[...])
    elif isinstance(module, nnx.LayerNorm):
      if module.scale is not None:
        scale = module.scale[...]
        module.scale[...] = 1.0 + std * jax.random.normal(rngs.params(), scale.shape,
                                                          scale.dtype)
      if module.bias is not None:
        module.bias[...] = jnp.zeros_like(module.bias[...])


class TransformerLM(nnx.Module):
  """Call on tokens [B, T] for log-probabilities [B, T, V]; `state` continues from a carried
  LMState (an RNN over segments), `return_state` gives the state after the last token."""

  def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
    self.config = config
    std = 0.02 if config.embedding == "scaled" else 1.0
    self.embed = nnx.Embed(config.vocab_size, config.d_model,
                           embedding_init=nnx.initializers.normal(std), rngs=rngs)
    self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
    # None: after pre-LN blocks, except the authors' ("normed" residuals: no final LayerNorm).
    final_norm = ((config.pre_norm and config.pre_norm_residual == "input")
                  if config.final_norm is None else config.final_norm)
    self.final_norm = (nnx.LayerNorm(config.d_model, epsilon=config.layer_norm_eps, rngs=rngs)
                       if final_norm else None)
    self.head = (nnx.Linear(config.d_model, config.output_size, rngs=rngs)
                 if config.output_size else None)
    self.output_bias = (None if config.output_size else
                        nnx.Param(jnp.zeros((config.vocab_size,))))
    # Transformer-XL's r_w_bias and r_r_bias (u, v), shared by every layer.
    self.rel_bias = (nnx.Param(nnx.initializers.normal(0.02)(
        rngs.params(), (2, config.num_heads, config.d_head)))
        if config.positional == "relative" else None)
    num_clusters = len(config.cutoffs)
    self.cluster_proj = (nnx.Linear(config.d_model, num_clusters, rngs=rngs)
                         if num_clusters else None)
    if config.init == "authors":
      authors_init(self, rngs, std=0.02)

  def init_state(self, batch_size: int, *, cache_capacity: int = 0,
                 dtype=jnp.float32) -> LMState:
    """The empty state. Softmax layers need `cache_capacity` >= the tokens they will see;
    Transformer-XL's is its memory of mem_len positions per layer (no capacity needed)."""
    if self.config.positional == "relative":
      per_layer = [b.attention.init_state(batch_size, dtype) for b in self.blocks]
    elif self.config.fast_weight is None:
      if cache_capacity < 1:
        raise ValueError("A softmax-attention LM decodes with a key/value cache: pass "
                         "cache_capacity >= the number of tokens to process.")
      per_layer = [b.attention.init_state(batch_size, cache_capacity, dtype) for b in self.blocks]
    else:
      per_layer = [b.attention.init_state(batch_size, dtype) for b in self.blocks]
    return LMState(jnp.zeros((), jnp.int32), tuple(per_layer))

  def __call__(self, tokens, *, state: LMState | None = None, return_state: bool = False,
               dropout_key: jax.Array | None = None, projection_key: jax.Array | None = None):
    if tokens.ndim != 2:
      raise ValueError(f"Expected tokens of shape [batch, time], got {tokens.shape}.")
    start = jnp.zeros((), jnp.int32) if state is None else state.position
    return self.forward(self.embed_tokens(tokens, start), state=state, return_state=return_state,
                        dropout_key=dropout_key, projection_key=projection_key)

  def embed_tokens(self, tokens, start=0):
    """√d_model · embed(token) + sinusoid(start + t): the blocks' input [B, T, d_model] (no
    √d_model under embedding='plain')."""
    c = self.config
    x = layers.lookup(self.embed, tokens)
    if c.embedding == "scaled":
      x = x * math.sqrt(c.d_model)
    if c.positional == "sinusoidal":
      x = x + sinusoid(start + jnp.arange(tokens.shape[1]), c.d_model, x.dtype)
    return x

  def forward(self, x, *, state: LMState | None = None, return_state: bool = False,
              dropout_key: jax.Array | None = None, projection_key: jax.Array | None = None):
    """The model from embedded inputs x [B, T, d_model] (what `__call__` feeds it)."""
    start = jnp.zeros((), jnp.int32) if state is None else state.position
    if self.config.embedding_dropout:
      x = dropout(x, self.config.dropout, _site(dropout_key, 0))
    new_states = []
    distance_key = _site(dropout_key, len(self.blocks) + 2)      # shared_distance_dropout's
    for i, block in enumerate(self.blocks):
      layer_state = None if state is None else state.layers[i]
      x, layer_state = block(x, layer_state, _site(dropout_key, i + 1),
                             _site(projection_key, i),
                             None if self.rel_bias is None else self.rel_bias[...], distance_key)
      new_states.append(layer_state)
    if self.final_norm is not None:
      x = self.final_norm(x)
    if self.config.final_dropout:
      x = dropout(x, self.config.dropout, _site(dropout_key, len(self.blocks) + 1))
    out = self.log_probs(x)
    if return_state:
      return out, LMState(start + x.shape[1], tuple(new_states))
    return out

  def log_probs(self, h):
    """h [..., d_model] -> log p [..., V] through the tied output embedding (or the output
    layer of output_size classes)."""
    if self.head is not None:
      return jax.nn.log_softmax(layers.at_least_f32(self.head(h)), axis=-1)
    logits = h @ self.embed.embedding[...].T.astype(h.dtype) + self.output_bias[...]
    cut = self.config.cutoffs
    if not cut:
      return jax.nn.log_softmax(layers.at_least_f32(logits), axis=-1)
    logits = layers.at_least_f32(logits)
    head = jnp.concatenate([logits[..., :cut[0]],
                            layers.at_least_f32(self.cluster_proj(h))], axis=-1)
    head = jax.nn.log_softmax(head, axis=-1)
    parts = [head[..., :cut[0]]]
    bounds = cut + (self.config.vocab_size,)
    for i in range(len(cut)):
      tail = jax.nn.log_softmax(logits[..., bounds[i]:bounds[i + 1]], axis=-1)
      parts.append(head[..., cut[0] + i:cut[0] + i + 1] + tail)
    return jnp.concatenate(parts, axis=-1)

  def step(self, state: LMState, tokens):
    """One token per sequence, tokens [B] -> (log p [B, V], next state): the RNN view."""
    out, state = self(tokens[:, None], state=state, return_state=True)
    return out[:, 0], state


def cross_entropy(log_probs, targets):
  """Mean negative log-likelihood in nats per token."""
  return -jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], axis=-1))
