"""fwp's side of the language-model rows of `experiments.studies.authors_crosscheck`: each case
builds fwp's block (or a 2-layer LM) from configs/wikitext103.py — the authors' settings — at a
small size, in float64, and writes its parameters under the authors' state_dict names
(IDSIA/lmtool-fwp `model_main.py`), the input and a random cotangent; their side,
experiments/studies/authors_crosscheck_lm_torch.py, loads those parameters into their layer
(strictly: every parameter given, every shape checked), runs forward and backward and writes
outputs and gradients back under the same names.

A block is compared on Σ g ⊙ block(x) (g fixed and random): its output, the gradient with
respect to x and every parameter's gradient. The LM on its mean next-token loss: per-token
losses and every parameter's gradient. fwp's β projection has a bias that theirs has not (a
departure, docs/departures.md); it is set to 0 here and its gradient is not compared.

Which of their layers each fwp LM name reproduces (`attn_type`, their flags) is LM_NAMES.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# fwp LM name -> (their attn_type, what it is); the rows of the paper's LM tables.
LM_NAMES = {
    "transformer": (2, "MultiHeadAttn: softmax"),
    "linear-sum": (34, "CudaFastWeightSumLinearTransformerLayer: ELU+1, sum rule"),
    "favor16-sum": (35, "CudaFastWeightSumPerformerLayer: FAVOR+, sum rule"),
    "dpfp2-sum": (6, "DPFPMultiHeadAttn: DPFP, sum rule (their only DPFP sum layer)"),
    "linear-delta": (24, "CudaFastWeightLinearTransformerLayer: ELU+1, delta rule"),
    "favor16-delta": (25, "CudaFastWeightPerformerLayer: FAVOR+, delta rule"),
    "dpfp2-delta": (26, "CudaFastWeightDPFPTransformerLayer: DPFP, delta rule"),
    "linear-delta_rnn": (134, "CudaFastRNNv2Layer: the Delta RNN (IDSIA/recurrent-fwp)"),
    "linear-delta_lstm": (254, "CudaFastLSTMv4Layer: the Delta LSTM (IDSIA/recurrent-fwp)"),
}
SIZES = dict(d_model=16, num_heads=2, d_head=8, d_ff=24)
VOCAB, TIME, BATCH = 23, 9, 3

class Case(NamedTuple):
  kind: str              # block | lm (2 layers)
  name: str              # the fwp LM name (configs/wikitext103.py:small-<name>)
  attn_type: int         # their layer
  flags: dict            # their flags: pre_lnorm, skip_attn_normalization, no_pos
  overrides: dict        # on fwp's config.model
  what: str
  must_match: bool       # fwp's authors-faithful setting: the study fails unless it MATCHes


_POST = dict(pre_lnorm=False, skip_attn_normalization=False)     # their default flags
_SKIP = dict(pre_lnorm=False, skip_attn_normalization=True)
_PRE = dict(pre_lnorm=True, skip_attn_normalization=True)
CASES = (
    [Case("block", name, LM_NAMES[name][0], _POST, {}, "default", True)
     for name in ("transformer", "linear-sum", "favor16-sum", "dpfp2-sum")] +
    [Case("block", name, LM_NAMES[name][0], _SKIP, {}, "default", True)
     for name in ("linear-delta", "favor16-delta", "dpfp2-delta")] +
    [Case("block", name, LM_NAMES[name][0], _POST, {"normalization": "sum_attention"},
          "normalization=sum_attention: their default flags", True)
     for name in ("linear-delta", "favor16-delta", "dpfp2-delta")] +
    [Case("block", "linear-delta", 24, _PRE, {"pre_norm": True}, "pre_norm=True: their "
          "--pre_lnorm", True),
     Case("block", "linear-sum", 34, dict(_POST, pre_lnorm=True), {"pre_norm": True},
          "pre_norm=True: their --pre_lnorm", True),
     *[Case("block", name, LM_NAMES[name][0], dict(_PRE, kernel_softmax_eps=0.0), {},
            "default, against their kernel with an exact softmax (their Python test loop's)",
            True) for name in ("linear-delta_rnn", "linear-delta_lstm")],
     Case("block", "linear-sum", 4, _POST, {"sum_scale": "scores"},
          "sum_scale=scores: their attn_type 4", True),
     Case("block", "favor16-sum", 5, _POST, {"sum_scale": "scores"},
          "sum_scale=scores: their attn_type 5", True),
     Case("projection", "favor16-delta", 25, {}, {},
          "FAVOR+ projection: favor_projection=lmtool, their draw from the same Gaussians",
          True),
     Case("lm", "linear-delta", 24, dict(_SKIP, no_pos=True), {"positional": "none"},
          "2-layer LM, positional=none: their --no_pos", True),
     Case("lm", "dpfp2-sum", 6, dict(_POST, no_pos=True), {"positional": "none"},
          "2-layer LM, positional=none: their --no_pos", True),
     # fwp's other behaviours, each against the authors' layer it departs from.
     Case("block", "linear-delta", 24, _POST, {}, "default against their default flags "
          "(departure: sum normalisation only)", False),
     Case("block", "dpfp2-sum", 6, _POST, {"sum_scale": "output"},
          "option sum_scale=output (the CPU configs)", False),
     Case("block", "linear-sum", 34, _POST, {"attention_eps": 1e-6},
          "option attention_eps=1e-6 (the CPU configs)", False),
     Case("block", "linear-delta", 24, _SKIP, {"layer_norm_eps": 1e-6},
          "option layer_norm_eps=1e-6 (flax's; the CPU configs)", False),
     Case("block", "linear-delta", 24, _PRE, {"pre_norm": True, "pre_norm_residual": "input"},
          "option pre_norm_residual=input", False),
     Case("block", "favor16-delta", 25, _SKIP, {"favor_eps": 0.0}, "option favor_eps=0", False),
     *[Case("block", name, LM_NAMES[name][0], _PRE, {}, "default against their kernel as "
            "written (departure: its softmax divides by Σexp + 1e-6)", False)
       for name in ("linear-delta_rnn", "linear-delta_lstm")],
     Case("lm", "linear-delta", 24, dict(_SKIP, no_pos=False), {},
          "2-layer LM, sinusoidal positions (departure: fwp counts forward, theirs back from "
          "the segment's end)", False)])


def config_for(name: str, overrides: dict, num_layers: int = 1):
  """configs/wikitext103.py:small-<name> at the cross-check's size, dropout 0, no adaptive
  softmax, then `overrides` on config.model. The parameters are drawn with flax's initialisers
  (both sides then load them): their N(0, 0.02) would make the attention's share of a block's
  output and gradient too small for a difference there to show against the whole."""
  from configs import wikitext103
  config = wikitext103.get_config(f"small-{name}")
  config.model.update(num_layers=num_layers, dropout=0.0, adaptive_cutoffs=(), init="flax",
                      **SIZES)
  config.model.update(overrides)
  return config


def _heads(kernel, heads):
  """A [D, H·d] kernel as [D, H, d]."""
  return kernel.reshape(kernel.shape[0], heads, -1)


def block_names(tree, attn_type: int, heads: int, prefix: str = "") -> dict:
  """fwp's Block parameters (or their gradients) under the authors' DecoderLayer names."""
  a = tree["attention"]
  get = lambda module, field="kernel": np.asarray(a[module][field][...], np.float64)
  out = {}
  if attn_type in (2, 4, 5, 6):              # q_net; kv_net = [k; v]
    out["dec_attn.q_net.weight"] = get("q_proj").T
    out["dec_attn.kv_net.weight"] = np.concatenate([get("k_proj"), get("v_proj")], axis=1).T
  else:                                      # per head [q, k, v(, β)] in one projection
    parts = [_heads(get(m), heads) for m in ("q_proj", "k_proj", "v_proj")]
    name = "qkv_net"
    if "rec_proj" in a and attn_type == 254:
      # The Delta LSTM: per head, per gate g in (i, u, o) [q_g, k_g, v_g, k_r_g, v_r_g], then
      # [β_i, β_r_i, β_u, β_r_u, β_o, β_r_o]; fwp's heads are (head, gate) pairs, gate inner.
      d = get("q_proj").shape[1] // (heads * 3)
      gate = lambda m: get(m).reshape(get(m).shape[0], heads, 3, -1)
      q, k, v, rec, beta = (gate(m) for m in ("q_proj", "k_proj", "v_proj", "rec_proj",
                                               "beta_proj"))
      parts = []
      for g in range(3):
        parts += [q[:, :, g], k[:, :, g], v[:, :, g], rec[:, :, g, :d], rec[:, :, g, d:2 * d]]
      for g in range(3):
        parts += [beta[:, :, g], rec[:, :, g, 2 * d:]]
      name = "qkv_net"
    elif "rec_proj" in a:                    # the Delta RNN: [q, k, v, k_r, v_r, β, β_r]
      rec, v = _heads(get("rec_proj"), heads), parts[0].shape[-1]
      parts += [rec[..., :v], rec[..., v:2 * v], _heads(get("beta_proj"), heads),
                rec[..., 2 * v:]]
      name = "qkvb_net"
    elif "beta_proj" in a:
      parts.append(_heads(get("beta_proj"), heads))
      name = "qkvb_net"
    fused = np.concatenate(parts, axis=-1)
    out[f"dec_attn.{name}.weight"] = fused.reshape(fused.shape[0], -1).T
  out["dec_attn.o_net.weight"] = get("out_proj").T
  norm = lambda module, field: np.asarray(tree[module][field][...], np.float64)
  out["dec_attn.layer_norm.weight"] = norm("norm_attention", "scale")
  out["dec_attn.layer_norm.bias"] = norm("norm_attention", "bias")
  out["pos_ff.CoreNet.0.weight"] = norm("ff_in", "kernel").T
  out["pos_ff.CoreNet.0.bias"] = norm("ff_in", "bias")
  out["pos_ff.CoreNet.3.weight"] = norm("ff_out", "kernel").T
  out["pos_ff.CoreNet.3.bias"] = norm("ff_out", "bias")
  out["pos_ff.layer_norm.weight"] = norm("norm_ff", "scale")
  out["pos_ff.layer_norm.bias"] = norm("norm_ff", "bias")
  return {prefix + name: value for name, value in out.items()}


def lm_names(tree, attn_type: int, heads: int) -> dict:
  out = {"word_emb.emb_layers.0.weight": np.asarray(tree["embed"]["embedding"][...]),
         "crit.out_layers.0.bias": np.asarray(tree["output_bias"][...])}
  for i in range(len(tree["blocks"])):
    out.update(block_names(tree["blocks"][i], attn_type, heads, prefix=f"layers.{i}."))
  return out


def _zero_beta_bias(params):
  """fwp's β bias (theirs has none) set to 0, in every block."""
  import jax.numpy as jnp
  blocks = params["blocks"]
  for i in range(len(blocks)):
    beta = blocks[i]["attention"].get("beta_proj") if "attention" in blocks[i] else None
    if beta is not None and "bias" in beta:
      beta["bias"][...] = jnp.zeros_like(beta["bias"][...])


def _projection_case(row: Case, seed: int):
  """FAVOR+'s projection as configs/wikitext103.py draws it (favor_projection), built from
  Gaussians that their side feeds to their draw_orthogonal_random_matrix(d_head, m) in place
  of its torch.randn calls."""
  import jax.numpy as jnp

  from fwp import feature_maps
  from tests.helpers import x64
  config = config_for(row.name, row.overrides)
  d, m = SIZES["d_head"], config.model.num_features
  if config.model.favor_projection != "lmtool":
    raise ValueError(f"{row.name}: the projection row needs favor_projection='lmtool', got "
                     f"{config.model.favor_projection!r}")
  rng = np.random.default_rng(seed)
  blocks = rng.standard_normal((-(-d // m), m, m))
  norms = rng.standard_normal((d, m))
  with x64():
    ours = np.asarray(feature_maps.lmtool_projection_from(jnp.asarray(blocks),
                                                          jnp.asarray(norms)))
  randn = {f"randn:{i:02d}": a for i, a in enumerate(list(blocks) + [norms])}
  case = dict(kind="projection", attn_type=row.attn_type, d_head=d, proj_dim=m, **randn)
  return case, {"y": ours.T, "loss": 0.0}


def fwp_case(row: Case, seed: int = 0):
  """(what their side needs, fwp's outputs and gradients under their names), float64."""
  kind, name, attn_type, flags, overrides = row[:5]
  if kind == "projection":
    return _projection_case(row, seed)
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from experiments.tasks.language_model import task
  from fwp import lm

  config = config_for(name, overrides, num_layers=1 if kind == "block" else 2)
  model = lm.TransformerLM(task.lm_config(config, VOCAB), rngs=nnx.Rngs(seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
  _zero_beta_bias(params)
  rest = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating)
                      else a, rest)
  heads = SIZES["num_heads"]
  rng = np.random.default_rng(seed)
  case = dict(kind=kind, attn_type=attn_type, n_head=heads, d_model=SIZES["d_model"],
              d_head=SIZES["d_head"], d_inner=SIZES["d_ff"], proj_dim=config.model.num_features,
              n_roll=config.model.nu, n_layer=2, vocab_size=VOCAB,
              pre_lnorm=flags["pre_lnorm"], skip_attn_normalization=flags["skip_attn_normalization"],
              no_pos=flags.get("no_pos", False),
              kernel_softmax_eps=flags.get("kernel_softmax_eps", 1e-6))
  projection = getattr(model.blocks[0].attention, "projection", None)
  if projection is not None:
    if kind != "block":
      raise ValueError("their LM's FAVOR+ layers each draw their own projection; the LM rows "
                       "hand one, so they take no FAVOR+ model")
    case["proj_matrix"] = np.asarray(projection[...], np.float64).T      # their [d_head, m]
  if kind == "block":
    x = jnp.asarray(rng.standard_normal((BATCH, TIME, SIZES["d_model"])))
    g = jnp.asarray(rng.standard_normal((BATCH, TIME, SIZES["d_model"])))

    def loss(params, x):
      block = nnx.merge(graphdef, params, rest).blocks[0]
      y, _ = block(x, None, None, None)
      return jnp.sum(y * g), y

    (value, y), (grads, gx) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    names = lambda tree: block_names(tree["blocks"][0], attn_type, heads)
    case.update(x=np.asarray(x).transpose(1, 0, 2), g=np.asarray(g).transpose(1, 0, 2))
    ours = dict(y=np.asarray(y).transpose(1, 0, 2), x=np.asarray(gx).transpose(1, 0, 2))
  else:
    tokens = jnp.asarray(rng.integers(0, VOCAB, (BATCH, TIME)))
    targets = jnp.asarray(rng.integers(0, VOCAB, (BATCH, TIME)))

    def loss(params):
      log_p = nnx.merge(graphdef, params, rest)(tokens)
      nll = -jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
      return jnp.mean(nll), nll

    (value, nll), grads = jax.value_and_grad(loss, has_aux=True)(params)
    names = lambda tree: lm_names(tree, attn_type, heads)
    case.update(tokens=np.asarray(tokens).T, targets=np.asarray(targets).T)
    ours = dict(y=np.asarray(nll).T)
  case.update({"p:" + k: v for k, v in names(params).items()})
  ours.update({"p:" + k: v for k, v in names(grads).items()})
  ours["loss"] = float(value)
  return case, ours
