"""fwp's side of the formal-language rows of `python -m experiments.studies.authors_crosscheck
--formal_code=...`: the SRWM and e-LSTM models of configs/formal_languages.py, small, in float64,
with their parameters under IDSIA/fwp-formal-lang's names (model.py `SRWM`, `QuasiLSTMModel`).
Their side: authors_crosscheck_formal_torch.py. A case is the log-probabilities of a batch of
tokens and the gradient of Σ r ⊙ log p with respect to every parameter.
"""

from __future__ import annotations

import dataclasses

SIZES = dict(d_model=8, num_heads=2, d_ff=16, num_layers=2, embed_size=6)
BATCH, TIME = 3, 11


@dataclasses.dataclass(frozen=True)
class Row:
  model: str          # the name after "<task>-" in configs/formal_languages.py
  theirs: str         # their model type and class
  what: str = "default"


CASES = (Row("srwm", "12 (SRWM: SRWMlayer + TransformerFFlayers)"),
         Row("elstm", "10 (QuasiLSTMModel)"))


def _model(row: Row):
  from configs import formal_languages
  from experiments.tasks.algorithmic import task as algorithmic
  from experiments.tasks.formal_languages import data
  from fwp import lm, lstm
  from flax import nnx
  config = formal_languages.get_config(f"dyck-1-{row.model}")
  m = config.model
  m.d_model, m.num_heads, m.d_ff = SIZES["d_model"], SIZES["num_heads"], SIZES["d_ff"]
  m.d_head, m.embed_size = SIZES["d_model"] // SIZES["num_heads"], SIZES["embed_size"]
  if row.model != "elstm":
    m.num_layers = SIZES["num_layers"]
  vocab, out = len(data.input_vocabulary("dyck-1")), len(data.output_vocabulary("dyck-1"))
  model_config = algorithmic.model_config(config, vocab, out)
  build = lstm.LSTMModel if isinstance(model_config, lstm.LSTMConfig) else lm.TransformerLM
  return build(model_config, rngs=nnx.Rngs(0)), vocab, out


def _srwm_names(params, e):
  """fwp's SRWM model's parameters under their state_dict names (torch Linear: [out, in])."""
  import numpy as np
  out = {"embedding.weight": params["embed"]["embedding"]}
  for i, block in params["blocks"].items():
    w0 = np.asarray(block["attention"]["w0"])                  # [H, 3E + 4, E]
    a, f = f"layers.{2 * i}", f"layers.{2 * i + 1}"
    out[f"{a}.W_y"] = np.swapaxes(w0[:, :e], 1, 2)[None]
    out[f"{a}.W_q"] = np.swapaxes(w0[:, e:2 * e], 1, 2)[None]
    out[f"{a}.W_k"] = np.swapaxes(w0[:, 2 * e:3 * e], 1, 2)[None]
    out[f"{a}.w_b"] = np.swapaxes(w0[:, 3 * e:], 1, 2)[None]
    out[f"{a}.layer_norm.weight"] = block["norm_attention"]["scale"]
    out[f"{a}.layer_norm.bias"] = block["norm_attention"]["bias"]
    out[f"{a}.out_linear.weight"] = np.asarray(block["attention"]["out_proj"]["kernel"]).T
    out[f"{f}.linear1.weight"] = np.asarray(block["ff_in"]["kernel"]).T
    out[f"{f}.linear1.bias"] = block["ff_in"]["bias"]
    out[f"{f}.linear2.weight"] = np.asarray(block["ff_out"]["kernel"]).T
    out[f"{f}.linear2.bias"] = block["ff_out"]["bias"]
    out[f"{f}.layer_norm.weight"] = block["norm_ff"]["scale"]
    out[f"{f}.layer_norm.bias"] = block["norm_ff"]["bias"]
  out["out_layer.weight"] = np.asarray(params["head"]["kernel"]).T
  out["out_layer.bias"] = params["head"]["bias"]
  return out


def _elstm_names(params):
  import numpy as np
  cell = params["cells"][0]
  w, v, b = (np.asarray(cell[k]) for k in ("w", "v", "b"))
  h = w.shape[1] // 2
  return {"embedding.weight": params["embed"]["embedding"],
          "rnn_func.wm_z": w[:, :h].T, "rnn_func.wm_f": w[:, h:].T,
          "rnn_func.wv_z": v[None, :h], "rnn_func.wv_f": v[None, h:],
          "rnn_func.bias_z": b[None, :h], "rnn_func.bias_f": b[None, h:],
          "output_gate.weight": np.asarray(cell["w_o"]).T, "output_gate.bias": cell["b_o"],
          "out_layer.weight": np.asarray(params["out"]["kernel"]).T,
          "out_layer.bias": params["out"]["bias"]}


def _plain(tree):
  """An nnx.State as nested dicts of arrays (list indices as ints)."""
  import numpy as np
  if hasattr(tree, "get_value"):
    return np.asarray(tree.get_value())
  if hasattr(tree, "items"):
    return {k: _plain(v) for k, v in tree.items()}
  return np.asarray(tree)


def fwp_case(row: Row):
  """(what their side needs, fwp's log-probabilities and gradients) for one row, float64."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  model, vocab, out = _model(row)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
  rng = np.random.default_rng(5)
  tokens = rng.integers(1, vocab, (BATCH, TIME))
  r = rng.normal(size=(BATCH, TIME, out))

  def loss(params):
    log_probs = nnx.merge(graphdef, params, rest)(jnp.asarray(tokens))
    return jnp.sum(log_probs * r), log_probs

  (value, log_probs), grads = jax.value_and_grad(loss, has_aux=True)(params)
  name = (lambda tree: _elstm_names(_plain(tree))) if row.model == "elstm" else (
      lambda tree: _srwm_names(_plain(tree), SIZES["d_model"] // SIZES["num_heads"]))
  theirs = {f"p:{k}": np.asarray(v, np.float64) for k, v in name(params).items()}
  case = dict(theirs, kind=row.model, tokens=tokens, r=r, in_vocab=vocab, out_vocab=out,
              heads=SIZES["num_heads"], d_model=SIZES["d_model"], d_ff=SIZES["d_ff"],
              layers=SIZES["num_layers"], emb=SIZES["embed_size"])
  ours = {k: np.asarray(v, np.float64) for k, v in name(grads).items()}
  return case, dict(ours, y=np.asarray(log_probs), loss=float(value))
