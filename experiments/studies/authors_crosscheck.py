"""fwp against the authors' own code, in float64: the retrieval model of every paper curve and
the language-model layers of every paper row, run by both on the same inputs and parameters,
outputs and gradients compared.

  python -m experiments.studies.authors_crosscheck --authors_code=/tmp/fwt/synthetic \
      --lmtool_code=/tmp/lmtool/src \
      --formal_code=/tmp/fwp-formal-lang \
      --authors_python=/tmp/torchenv/bin/python        # writes results/authors_crosscheck.md

--authors_code is a checkout of ischlag/fast-weight-transformers' `synthetic/` directory,
--lmtool_code IDSIA/lmtool-fwp's `src/` directory, --formal_code a checkout of IDSIA/fwp-formal-lang
(any may be left out; the file then holds the others' rows only) and --authors_python a Python with torch
(experiments/studies/authors_synthetic.py says how to get it and their code; torch is not a
project requirement). The LM rows: experiments/studies/authors_crosscheck_lm.py (fwp's side,
the cases) and authors_crosscheck_lm_torch.py (theirs: their CUDA kernels replaced by per-step
loops, said there). fwp's side writes each case (inputs, its parameters
under the authors' names, the FAVOR+ projection) to a temporary directory; their side,
experiments/studies/authors_crosscheck_torch.py, imports their models unchanged (only their
in-forward projection draw is handed fwp's draw), runs forward and backward in float64 and writes
the results back. A row MATCHes when outputs and every shared parameter gradient agree to 1e-10
relative. Under fwp's defaults every row must MATCH; each named option that
departs from the authors (docs/departures.md) is its own row, with the difference it makes.
(Relative differences: the outputs' to their largest entry, each gradient's to the largest entry
of the whole gradient.)

The same comparison without torch, against their loops written out in jax.numpy, is the test
tests/fwp/test_authors_retrieval.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from absl import app, flags

from experiments import results

_AUTHORS_CODE = flags.DEFINE_string("authors_code", None,
                                    "ischlag/fast-weight-transformers' synthetic/ directory.")
_LMTOOL_CODE = flags.DEFINE_string("lmtool_code", None, "IDSIA/lmtool-fwp's src/ directory.")
_FORMAL_CODE = flags.DEFINE_string("formal_code", None, "A checkout of IDSIA/fwp-formal-lang.")
_AUTHORS_PYTHON = flags.DEFINE_string("authors_python", sys.executable,
                                      "A Python with torch, to run the authors' code.")
_NUM_KEYS = flags.DEFINE_integer("num_keys", 20, "S (setting 2: sequences of 2S).")
_BATCH = flags.DEFINE_integer("batch_size", 4, "Sequences per case.")
_OUT = flags.DEFINE_string("out", "results", "Directory for authors_crosscheck.md.")

MATCH = 1e-10
# fwp curve -> the authors' (attention_type, update_rule, arg)
CURVES = {
    "softmax": ("softmax", "softmax", 0), "linear-sum": ("linear", "sum", 0),
    "dpfp1-sum": ("dpfp", "sum", 1), "dpfp2-sum": ("dpfp", "sum", 2),
    "dpfp3-sum": ("dpfp", "sum", 3), "favor64-sum": ("favor", "sum", 64),
    "favor128-sum": ("favor", "sum", 128), "tanh-sum": ("tanh", "sum", 0),
    "linear-delta": ("linear", "ours", 0), "dpfp1-delta": ("dpfp", "ours", 1),
    "dpfp2-delta": ("dpfp", "ours", 2), "favor64-delta": ("favor", "ours", 64),
    "linear-fwm": ("linear", "fwm", 0), "dpfp1-fwm": ("dpfp", "fwm", 1),
    "tanh-fwm": ("tanh", "fwm", 0),
}
# (curve, config.model overrides, what the row is): fwp's forms, then its named options.
CASES = ([(curve, {}, "default") for curve in CURVES] +
         [(curve, {"form": form, "chunk_size": "7"}, f"form={form}")
          for curve in ("linear-sum", "dpfp2-delta") for form in ("recurrent", "parallel",
                                                                  "chunked")] +
         [("tanh-fwm", {"fwm_normalize_first": True}, "option fwm_normalize_first=True"),
          ("dpfp1-fwm", {"fwm_normalize_first": True}, "option fwm_normalize_first=True"),
          ("tanh-fwm", {"readout_eps": 1e-6}, "option readout_eps=1e-6 (flax's)"),
          ("dpfp1-delta", {"sum_query_eps": 0.0}, "option sum_query_eps=0"),
          ("favor64-sum", {"favor_scaling": "performer"}, "option favor_scaling=performer"),
          ("favor64-delta", {"favor_scaling": "performer"}, "option favor_scaling=performer"),
          ("favor64-sum", {"favor_stabilize": True}, "option favor_stabilize=True"),
          ("favor64-delta", {"favor_stabilize": True}, "option favor_stabilize=True"),
          ("linear-sum", {"qk_bias": False},
           "option qk_bias=False (theirs with b_k = b_q = 0)")])


def _fwp_case(curve, overrides, num_keys, batch_size):
  """(what their side needs, fwp's outputs and gradients) for one case, in float64."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from configs import associative_recall
  from experiments.tasks import associative_recall as task
  from experiments.tasks.associative_recall import data

  config = associative_recall.get_config(curve)
  config.num_keys = num_keys
  config.model.update(overrides)
  model = task.build_model(config, nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
  batch = data.train_batch(1, 0, batch_size=batch_size, num_keys=num_keys, setting=2)
  targets = jax.nn.one_hot(batch["targets"], num_keys, dtype=jnp.float64)

  def loss(params):
    y = nnx.merge(graphdef, params, rest)(batch["keys"], batch["values"], batch["queries"])
    return 0.5 * jnp.sum((y - targets) ** 2), y

  (value, y), grads = jax.value_and_grad(loss, has_aux=True)(params)
  theirs = lambda tree: {name: np.asarray(a, np.float64) for name, a in _authors_names(tree)}
  attention, rule, arg = CURVES[curve]
  case = dict(theirs(params), attention=attention, rule=rule, arg=arg, num_keys=num_keys,
              **{name: np.asarray(batch[name]) for name in ("keys", "values", "queries",
                                                            "targets")})
  d = case["W_k"].shape[1]
  case.setdefault("b_k", np.zeros(d))
  case.setdefault("b_q", np.zeros(d))
  projection = nnx.state(model).get("projection")
  if projection is not None:
    case["omega"] = np.asarray(projection[...], np.float64).T          # their [d, m]
  return case, dict(theirs(grads), y=np.asarray(y), loss=float(value))


def _authors_names(tree):
  """fwp's retrieval parameters under the authors' names (kernels [in, out], as x @ W)."""
  pick = {("embed", "embedding"): "E", ("k_proj", "kernel"): "W_k", ("k_proj", "bias"): "b_k",
          ("q_proj", "kernel"): "W_q", ("q_proj", "bias"): "b_q",
          ("beta_proj", "kernel"): "W_b", ("beta_proj", "bias"): "b_b"}
  for (module, field), name in pick.items():
    if module in tree and field in tree[module]:
      yield name, tree[module][field][...]


def _difference(ours, theirs):
  """(max abs, max relative) difference over y and the shared gradients: y's relative to y's
  largest entry, a gradient's relative to the largest entry of the whole gradient (a gradient
  that is zero in exact arithmetic, as b_k's under softmax, is rounding on both sides)."""
  import numpy as np
  shared = sorted(set(ours) & set(theirs) - {"loss", "torch"})
  grads = [name for name in shared if name not in ("y", "x")]
  for name in shared:
    if np.shape(ours[name]) != np.shape(theirs[name]):
      raise ValueError(f"{name}: fwp {np.shape(ours[name])} against theirs "
                       f"{np.shape(theirs[name])}")
  largest = lambda names: max([float(np.max(np.abs(theirs[n]))) for n in names] + [1e-300])
  scale = {name: largest([name]) for name in ("y", "x") if name in shared}
  scale.update({name: largest(grads) for name in grads})
  abs_, rel = 0.0, 0.0
  for name in shared:
    diff = float(np.max(np.abs(np.asarray(ours[name]) - np.asarray(theirs[name]))))
    abs_, rel = max(abs_, diff), max(rel, diff / scale[name])
  return abs_, rel


def _run_theirs(script, code, cases):
  """Writes each case, runs their side on the directory, returns {i: their outputs}."""
  import numpy as np
  with tempfile.TemporaryDirectory() as tmp:
    for i, case in cases.items():
      np.savez(os.path.join(tmp, f"{i:03d}.npz"), **case)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), script)
    subprocess.run([_AUTHORS_PYTHON.value, script, f"--code={code}", f"--cases={tmp}"],
                   check=True)
    return {i: dict(np.load(os.path.join(tmp, f"{i:03d}.out.npz"))) for i in cases}


def _both_sides(module, script, code):
  """({i: fwp's outputs}, {i: theirs}) of a module's CASES (its fwp_case(row) gives both the
  case their side reads and fwp's numbers)."""
  cases, ours = {}, {}
  for i, row in enumerate(module.CASES):
    cases[i], ours[i] = module.fwp_case(row)
  return ours, _run_theirs(script, code, cases)


def _retrieval_section(failures):
  s, b = _NUM_KEYS.value, _BATCH.value
  cases, ours = {}, {}
  for i, (curve, overrides, what) in enumerate(CASES):
    cases[i], ours[i] = _fwp_case(curve, overrides, s, b)
  theirs = _run_theirs("authors_crosscheck_torch.py", _AUTHORS_CODE.value, cases)
  torch_version = str(theirs[0]["torch"])
  lines = ["## The retrieval models (ischlag/fast-weight-transformers `synthetic/`)", "",
           f"S = {s}, setting 2, batch {b}, d = 64; torch {torch_version}: outputs and every "
           f"shared parameter gradient of 0.5·Σ(ŷ − onehot)², fwp against their code run "
           f"unchanged (their FAVOR+ projection draw handed fwp's).", "",
           "| fwp curve | their attention_type / update_rule | fwp config | loss (fwp) "
           "| max abs diff | max rel diff | |", "|---|---|---|---|---|---|---|"]
  for i, (curve, overrides, what) in enumerate(CASES):
    abs_, rel = _difference(ours[i], theirs[i])
    verdict = "MATCH" if rel <= MATCH else "differs"
    if (what == "default" or what.startswith("form=")) and verdict != "MATCH":
      failures.append(f"{curve} {what}")
    attention, rule, arg = CURVES[curve]
    their = f"{attention}{arg or ''} / {rule}"
    lines.append(f"| {curve} | {their} | {what} | {ours[i]['loss']:.6g} | {abs_:.1e} "
                 f"| {rel:.1e} | {verdict} |")
  return lines


def _lm_section(failures):
  from experiments.studies import authors_crosscheck_lm as lm_cases
  ours, theirs = _both_sides(lm_cases, "authors_crosscheck_lm_torch.py", _LMTOOL_CODE.value)
  sizes = lm_cases.SIZES
  lines = ["## The language-model layers (IDSIA/lmtool-fwp `src/model_main.py`)", "",
           f"fwp's configs/wikitext103.py:small-<name> at d_model {sizes['d_model']}, "
           f"{sizes['num_heads']} heads × {sizes['d_head']}, feed-forward {sizes['d_ff']}, "
           f"dropout 0, T = {lm_cases.TIME}, batch {lm_cases.BATCH}; torch "
           f"{theirs[0]['torch']}. A block: its output, the gradient of Σ g ⊙ block(x) with "
           f"respect to x and every parameter; the 2-layer LM (vocabulary "
           f"{lm_cases.VOCAB}): per-token losses and every parameter's gradient of their mean. "
           f"Their `DecoderLayer` / `PerformerDecoderLayer` / `MemTransformerLM` run unchanged "
           f"with every parameter loaded from fwp's (strictly); their CUDA kernels replaced by "
           f"per-step loops written from the kernels; fwp's β bias (theirs has none) is 0; "
           f"parameters drawn with flax's initialisers, then loaded into both. The projection "
           f"row: their draw_orthogonal_random_matrix(d_head, m) with its torch.randn calls "
           f"returning the Gaussians fwp's lmtool_projection_from is given.", "",
           "Which of their layers each fwp name is: " + "; ".join(
               f"`{name}` = attn_type {t} ({what})"
               for name, (t, what) in lm_cases.LM_NAMES.items()) + ".", "",
           "| fwp name | their attn_type, flags | fwp config | loss (fwp) | max abs diff "
           "| max rel diff | |", "|---|---|---|---|---|---|---|"]
  for i, row in enumerate(lm_cases.CASES):
    abs_, rel = _difference(ours[i], theirs[i])
    verdict = "MATCH" if rel <= MATCH else "differs"
    if row.must_match and verdict != "MATCH":
      failures.append(f"{row.name} {row.what}")
    flags = [f"--{flag}" for flag, on in row.flags.items() if on is True]
    their = f"{row.attn_type}" + (f" {' '.join(flags)}" if flags else "")
    loss = "—" if row.kind == "projection" else f"{ours[i]['loss']:.6g}"
    lines.append(f"| {row.name} | {their} | {row.what} | {loss} | {abs_:.1e} "
                 f"| {rel:.1e} | {verdict} |")
  return lines


def _formal_section(failures):
  from experiments.studies import authors_crosscheck_formal as formal
  ours, theirs = _both_sides(formal, "authors_crosscheck_formal_torch.py", _FORMAL_CODE.value)
  sizes = formal.SIZES
  lines = ["## The formal-language models (IDSIA/fwp-formal-lang `model.py`)", "",
           f"configs/formal_languages.py:dyck-1-<model> at d_model {sizes['d_model']}, "
           f"{sizes['num_heads']} heads, feed-forward {sizes['d_ff']}, {sizes['num_layers']} "
           f"layers (the e-LSTM: one, embedding {sizes['embed_size']}), dropout 0, batch "
           f"{formal.BATCH} × {formal.TIME} tokens: the log-probabilities and every "
           f"parameter's gradient of Σ r ⊙ log p. Their `SRWM` and `QuasiLSTMModel` run "
           f"unchanged with every parameter loaded from fwp's; their self_ref_v0 CUDA kernel "
           f"replaced by a per-step loop written from it (authors_crosscheck_formal_torch.py).",
           "", "| fwp name | their model_type | fwp config | loss (fwp) | max abs diff "
           "| max rel diff | |", "|---|---|---|---|---|---|---|"]
  for i, row in enumerate(formal.CASES):
    abs_, rel = _difference(ours[i], theirs[i])
    verdict = "MATCH" if rel <= MATCH else "differs"
    if verdict != "MATCH":
      failures.append(f"{row.model} {row.what}")
    lines.append(f"| {row.model} | {row.theirs} | {row.what} | {ours[i]['loss']:.6g} "
                 f"| {abs_:.1e} | {rel:.1e} | {verdict} |")
  return lines


def main(argv):
  del argv
  import jax
  jax.config.update("jax_enable_x64", True)
  if not (_AUTHORS_CODE.value or _LMTOOL_CODE.value or _FORMAL_CODE.value):
    raise app.UsageError("Give --authors_code (the retrieval rows), --lmtool_code (the LM "
                         "rows), --formal_code (the formal-language rows), or several.")
  if _FORMAL_CODE.value and not os.path.isfile(os.path.join(_FORMAL_CODE.value, "layers.py")):
    raise app.UsageError(f"--formal_code={_FORMAL_CODE.value!r} is not a checkout of "
                         f"fwp-formal-lang (no layers.py there).")
  if _AUTHORS_CODE.value and not os.path.isfile(os.path.join(_AUTHORS_CODE.value,
                                                              "linearAttention.py")):
    raise app.UsageError(f"--authors_code={_AUTHORS_CODE.value!r} is not the authors' "
                         f"synthetic/ directory (no linearAttention.py there).")
  if _LMTOOL_CODE.value and not os.path.isfile(os.path.join(_LMTOOL_CODE.value,
                                                             "model_main.py")):
    raise app.UsageError(f"--lmtool_code={_LMTOOL_CODE.value!r} is not lmtool-fwp's src/ "
                         f"directory (no model_main.py there).")
  probe = subprocess.run([_AUTHORS_PYTHON.value, "-c", "import torch"], capture_output=True)
  if probe.returncode:
    raise app.UsageError(f"--authors_python={_AUTHORS_PYTHON.value!r} cannot import torch; "
                         f"see experiments/studies/authors_synthetic.py for a CPU-only torch.")
  failures = []
  lines = ["# fwp against the authors' code (float64)", "",
           "Made by `python -m experiments.studies.authors_crosscheck` (its docstring has the "
           f"command) at fwp commit {results.commit()}. Relative differences: an output's (and x's gradient's) to its largest "
           "entry, the parameter gradients' to the whole gradient's largest entry; MATCH: "
           f"≤ {MATCH:g}. Rows named by a fwp option are fwp's other behaviours, each against "
           "the authors' code it departs from (docs/departures.md).", ""]
  if _AUTHORS_CODE.value:
    lines += _retrieval_section(failures) + [""]
  if _LMTOOL_CODE.value:
    lines += _lm_section(failures) + [""]
  if _FORMAL_CODE.value:
    lines += _formal_section(failures) + [""]
  results.write_markdown(_OUT.value, "authors_crosscheck", lines)
  if failures:
    raise SystemExit(f"fwp's defaults differ from the authors' code: {', '.join(failures)}")


if __name__ == "__main__":
  app.run(main)
