r"""fwp's delta, gated delta, DeltaProduct and KDA-style rules against fla-org/flash-linear-attention's
pure-PyTorch references, in float64: each reference (recurrent and chunked, where FLA has both) on
the same inputs as each of fwp's forms, outputs and final states compared.

  git clone https://github.com/fla-org/flash-linear-attention /tmp/fla
  python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0+cpu einops numpy
  python -m experiments.studies.fla_crosscheck --fla_code=/tmp/fla \
      --fla_python=/tmp/torchenv/bin/python          # writes results/fla_crosscheck.md

torch is not a project requirement: --fla_python is any Python with torch and einops (the main
one, if it has them). fwp's side writes each case (numpy arrays in FLA's layouts) to a temporary
directory; experiments/studies/fla_crosscheck_torch.py loads FLA's naive.py files (their float32
casts made float64, nothing else changed), runs them and writes the outputs back.

Conventions mapped (the only differences between the two): FLA's state is h = Wᵀ [B, H, K, V]
(fwp's W is [B, H, V, K]); FLA scales queries (`scale`, default K^-½; given 1 here, and the delta
rule's references, which always scale by K^-½, get q·√K); FLA's delta-rule references take
[B, H, T, ·], the others [B, T, H, ·]; FLA's DeltaProduct interleaves the N writes of a token
along time ([B, T·N, H, ·]), fwp gives them an axis ([B, T, H, N, ·]); KDA is fwp's gated delta
rule with one gate per key channel. A row MATCHes at a relative difference (to the largest
entry) ≤ 1e-10.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from absl import app, flags

from experiments import results

_FLA_CODE = flags.DEFINE_string("fla_code", None,
                                "A checkout of fla-org/flash-linear-attention (its root).")
_FLA_PYTHON = flags.DEFINE_string("fla_python", sys.executable,
                                  "A Python with torch and einops, to run FLA's references.")
_OUT = flags.DEFINE_string("out", "results", "Directory for fla_crosscheck.md.")
_FLA_REVISION = flags.DEFINE_string("fla_revision", None, "The FLA commit to name in the table "
                                    "(default: the checkout's HEAD).")

MATCH = 1e-10
B, T, H, K, V = 2, 24, 2, 8, 6
FORMS = [("recurrent", 64), ("parallel", 64), ("chunked", 8), ("chunked", 5)]
NAIVE = "fla/ops/gated_delta_rule/naive.py"


def _inputs(seed, *, gate, writes=None, with_h0=True):
  """fwp-layout float64 inputs: unit-norm keys, β in (0, 2), log-decays in (−1, 0)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  n = () if writes is None else (writes,)
  q = rng.normal(size=(B, T, H, K))
  k = rng.normal(size=(B, T, H) + n + (K,))
  k /= np.linalg.norm(k, axis=-1, keepdims=True)
  v = rng.normal(size=(B, T, H) + n + (V,))
  beta = 2.0 / (1.0 + np.exp(-rng.normal(size=(B, T, H) + n)))
  g = {"head": (B, T, H), "channel": (B, T, H, K), None: None}[gate]
  g = None if g is None else rng.uniform(-1.0, 0.0, size=g)
  w0 = 0.3 * rng.normal(size=(B, H, V, K)) if with_h0 else None
  return q, k, v, beta, g, w0


def _cases():
  """(row name, FLA function, fwp rule, fwp inputs, FLA inputs): FLA's layouts and names."""
  import numpy as np
  to_bhtk = lambda x: np.ascontiguousarray(np.moveaxis(x, 2, 1))     # [B, T, H, ·] -> [B, H, T, ·]
  h0 = lambda w0: {} if w0 is None else {"h0": np.ascontiguousarray(np.swapaxes(w0, -1, -2))}
  rows = []
  # The delta rule: FLA's recurrence (with an initial state) and its chunkwise form (none).
  q, k, v, beta, _, w0 = _inputs(0, gate=None)
  for fn, w, extra in (("delta_rule_recurrence", w0, {}),
                       ("delta_rule_chunkwise", None, {"chunk_size": np.asarray(8)})):
    theirs = dict(q=to_bhtk(q * np.sqrt(K)), k=to_bhtk(k), v=to_bhtk(v), beta=to_bhtk(beta),
                  **h0(w), **extra)
    rows.append((f"delta ({fn})", fn, "delta", (q, k, v, beta, None, w), theirs))
  # Gated delta (one gate per head) and KDA (one per key channel): recurrent and chunked.
  for gate, name, prefix in (("head", "gated_delta", "naive_{}_gated_delta_rule"),
                             ("channel", "KDA: gated_delta, per-channel gates", "naive_{}_kda")):
    q, k, v, beta, g, w0 = _inputs(1 if gate == "head" else 2, gate=gate)
    for kind in ("recurrent", "chunk"):
      theirs = dict(q=q, k=k, v=v, beta=beta, g=g, **h0(w0))
      if kind == "chunk":
        theirs["chunk_size"] = np.asarray(8)
      rows.append((f"{name} ({prefix.format(kind)})", prefix.format(kind), "gated_delta",
                   (q, k, v, beta, g, w0), theirs))
  # DeltaProduct, N = 2 and 3, gated per head and not.
  for writes, gate in ((2, "head"), (3, None)):
    q, k, v, beta, g, w0 = _inputs(3 + writes, gate=gate, writes=writes)
    interleave = lambda x: x.transpose(0, 1, 3, 2, *range(4, x.ndim)).reshape(
        (B, T * writes, H) + x.shape[4:])
    theirs = dict(q=q, k=interleave(k), v=interleave(v), beta=interleave(beta),
                  writes=np.asarray(writes), **h0(w0), **({} if g is None else {"g": g}))
    rows.append((f"delta_product N={writes}, {'gated per head' if gate else 'ungated'} "
                 f"(naive_recurrent_gated_delta_product)", "naive_recurrent_gated_delta_product",
                 "delta_product", (q, k, v, beta, g, w0), theirs))
  return rows


def _fwp(rule, inputs, form, chunk):
  import jax.numpy as jnp
  from fwp import ops
  q, k, v, beta, g, w0 = (None if x is None else jnp.asarray(x) for x in inputs)
  if rule == "delta":
    return ops.delta_rule(q, k, v, beta, form=form, chunk_size=chunk, initial_state=w0)
  if rule == "gated_delta":
    return ops.gated_delta_rule(q, k, v, beta, g, form=form, chunk_size=chunk, initial_state=w0)
  return ops.delta_product_rule(q, k, v, beta, log_decay=g, form=form, chunk_size=chunk,
                                initial_state=w0)


def _relative(ours, theirs):
  import numpy as np
  return float(np.max(np.abs(np.asarray(ours) - theirs)) / max(np.max(np.abs(theirs)), 1e-300))


def main(argv):
  del argv
  import jax
  import numpy as np
  jax.config.update("jax_enable_x64", True)
  if not _FLA_CODE.value or not os.path.isfile(os.path.join(_FLA_CODE.value, NAIVE)):
    raise app.UsageError(f"--fla_code={_FLA_CODE.value!r} is not a checkout of "
                         f"fla-org/flash-linear-attention (no {NAIVE} there).")
  probe = subprocess.run([_FLA_PYTHON.value, "-c", "import torch, einops"], capture_output=True)
  if probe.returncode:
    raise app.UsageError(f"--fla_python={_FLA_PYTHON.value!r} cannot import torch and einops; "
                         f"the module docstring says how to get them.")
  rows = _cases()
  with tempfile.TemporaryDirectory() as tmp:
    for i, (*_, theirs) in enumerate(rows):
      np.savez(os.path.join(tmp, f"{i:03d}.in.npz"), fn=np.asarray(rows[i][1]), **theirs)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fla_crosscheck_torch.py")
    subprocess.run([_FLA_PYTHON.value, script, f"--code={_FLA_CODE.value}", f"--cases={tmp}"],
                   check=True)
    outs = [dict(np.load(os.path.join(tmp, f"{i:03d}.out.npz"))) for i in range(len(rows))]
  fla_commit = _FLA_REVISION.value or results.commit(_FLA_CODE.value)
  lines = ["# fwp against flash-linear-attention's naive references (float64)", "",
           f"Made by `python -m experiments.studies.fla_crosscheck --fla_code=<checkout> "
           f"--fla_python=<a Python with torch>` (the module docstring has the whole recipe) "
           f"at fwp commit {results.commit()}, against fla-org/flash-linear-attention "
           f"{fla_commit} (its naive.py files, float32 casts made float64). Inputs: B = {B}, "
           f"T = {T}, H = {H}, K = {K}, V = {V}, unit-norm keys, β in (0, 2), log-decays in "
           f"(−1, 0), an initial state where FLA's function takes one. Relative difference: "
           f"max |fwp − FLA| / max |FLA|, outputs y and final state W (FLA's h transposed); "
           f"MATCH ≤ {MATCH:g}.", "",
           "| rule (FLA function) | fwp form | y | W_T | |", "|---|---|---|---|---|"]
  failures = []
  for (name, fn, rule, inputs, _), out in zip(rows, outs):
    theirs_y = out["o"] if rule != "delta" else np.moveaxis(out["o"], 1, 2)
    theirs_w = np.swapaxes(out["h"], -1, -2)
    for form, chunk in FORMS:
      y, w = _fwp(rule, inputs, form, chunk)
      dy, dw = _relative(y, theirs_y), _relative(w, theirs_w)
      verdict = "MATCH" if max(dy, dw) <= MATCH else "DIFFER"
      if verdict == "DIFFER":
        failures.append(f"{name} {form}")
      label = form if form != "chunked" else f"chunked {chunk}"
      lines.append(f"| {name} | {label} | {dy:.1e} | {dw:.1e} | {verdict} |")
  results.write_markdown(_OUT.value, "fla_crosscheck", lines)
  if failures:
    raise SystemExit(f"fwp differs from FLA's references: {', '.join(failures)}")


if __name__ == "__main__":
  app.run(main)
