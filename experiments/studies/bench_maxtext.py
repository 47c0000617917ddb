r"""fwp's chunked gated delta rule against the pure-JAX chunked gated delta rule of
AI-Hypercomputer/maxtext (Qwen3-Next's linear layers), and against fwp's own ungated chunked delta
rule: forward, and forward + backward, in one process on one machine.

  git clone https://github.com/AI-Hypercomputer/maxtext /tmp/maxtext
  python -m experiments.studies.bench_maxtext --maxtext_code=/tmp/maxtext   # results/bench_rules.md

MaxText is not a requirement and is not imported (its module imports the whole framework):
`jax_chunk_gated_delta_rule` (and, where the file has it, the older
`naive_jax_chunk_gated_delta_rule`) is read from its file — src/maxtext/models/qwen3.py, or
src/MaxText/layers/qwen3.py in older checkouts — with `ast` and run unchanged in a namespace
with jax, jnp, lax and MaxText's l2norm (x·rsqrt(Σx² + eps)).

Called with its own conventions: q, k, v [B, T, H, D], g (log-decay) and β [B, T, H]; it scales q
by K^-½ itself (fwp's rules take q as given: fwp gets q·K^-½); its state is h = Wᵀ [B, H, K, V],
returned only when an initial state is given (zeros here); `compute_dtype` (bfloat16 by default
in newer versions) is given float32, as fwp runs on CPU. Before any timing, every function's
outputs and final state are checked against fwp's chunked form at each shape (relative difference
to the largest entry; float32); the study stops if one differs by more than 1e-4.
"""

from __future__ import annotations

import ast
import functools
import os
import textwrap

from absl import app, flags

from experiments import results

_MAXTEXT = flags.DEFINE_string("maxtext_code", None, "A checkout of AI-Hypercomputer/maxtext.")
_OUT = flags.DEFINE_string("out", "results", "Directory for bench_rules.md.")
_LENGTHS = flags.DEFINE_list("lengths", ["512", "2048"], "Sequence lengths T.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per cell (median).")
_REVISION = flags.DEFINE_string("maxtext_revision", None, "The MaxText commit to name in the "
                                "table (default: the checkout's HEAD).")

FILES = ("src/maxtext/models/qwen3.py", "src/MaxText/layers/qwen3.py")
FUNCTIONS = ("jax_chunk_gated_delta_rule", "naive_jax_chunk_gated_delta_rule")
B, H, K, V, CHUNK = 2, 4, 64, 64, 64
AGREE = 1e-4


def source_file(root: str) -> str:
  """The checkout's qwen3.py; ValueError naming the paths looked at."""
  for name in FILES:
    path = os.path.join(root, name)
    if os.path.isfile(path):
      return path
  raise ValueError(f"--maxtext_code={root!r} is not a checkout of AI-Hypercomputer/maxtext: "
                   f"none of {', '.join(FILES)} is there.")


def load_functions(path: str) -> dict:
  """{name: function} for each of FUNCTIONS the file defines (at least the first), compiled
  from the file's own source text."""
  import jax
  import jax.numpy as jnp
  from jax import lax

  with open(path, encoding="utf-8") as f:
    text = f.read()
  tree = ast.parse(text)
  found = {node.name: ast.get_source_segment(text, node) for node in tree.body
           if isinstance(node, ast.FunctionDef) and node.name in FUNCTIONS}
  if FUNCTIONS[0] not in found:
    raise ValueError(f"{path} defines no {FUNCTIONS[0]}; is this a MaxText checkout with "
                     f"Qwen3-Next?")

  def l2norm(x, dim=-1, eps=1e-6):
    return x * lax.rsqrt((x * x).sum(axis=dim, keepdims=True) + jnp.array(eps, dtype=x.dtype))

  namespace = {"jax": jax, "jnp": jnp, "lax": lax, "Array": jax.Array, "l2norm": l2norm,
               "functools": functools}
  functions = {}
  for name, code in found.items():
    exec(compile(textwrap.dedent(code), path, "exec"), namespace)   # MaxText's code, unchanged
    functions[name] = namespace[name]
  return functions


def _inputs(t: int, seed: int = 0):
  import jax
  import jax.numpy as jnp
  keys = jax.random.split(jax.random.key(seed), 5)
  q = jax.random.normal(keys[0], (B, t, H, K))
  k = jax.random.normal(keys[1], (B, t, H, K))
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  v = jax.random.normal(keys[2], (B, t, H, V))
  beta = jax.nn.sigmoid(jax.random.normal(keys[3], (B, t, H)))
  g = -jax.nn.softplus(jax.random.normal(keys[4], (B, t, H)))           # log α ∈ (−∞, 0)
  return q, k, v, beta, g


def _candidates(maxtext: dict) -> dict:
  """{row name: f(q, k, v, beta, g) -> (y [B, T, H, V], W [B, H, V, K])} in fwp's layout."""
  import jax.numpy as jnp
  from fwp import ops

  scale = K ** -0.5
  rows = {
      "fwp gated_delta (chunked)": lambda q, k, v, beta, g: ops.gated_delta_rule(
          q * scale, k, v, beta, g, form="chunked", chunk_size=CHUNK),
      "fwp delta, ungated (chunked)": lambda q, k, v, beta, g: ops.delta_rule(
          q * scale, k, v, beta, form="chunked", chunk_size=CHUNK),
  }
  for name, fn in maxtext.items():
    def run(q, k, v, beta, g, fn=fn, name=name):
      h0 = jnp.zeros((B, H, K, V), q.dtype)
      kwargs = {"compute_dtype": jnp.float32} if name == FUNCTIONS[0] and (
          "compute_dtype" in fn.__code__.co_varnames) else {}
      y, h = fn(q, k, v, g, beta, chunk_size=CHUNK, initial_state=h0, **kwargs)
      return y, jnp.swapaxes(h, -1, -2)
    rows[f"MaxText {name}"] = run
  return rows


def _relative(a, b) -> float:
  import numpy as np
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main(argv):
  del argv
  if not _MAXTEXT.value:
    raise app.UsageError("--maxtext_code (a checkout of AI-Hypercomputer/maxtext) is required.")
  path = source_file(_MAXTEXT.value)
  maxtext = load_functions(path)
  import jax
  import jax.numpy as jnp
  from experiments.studies import timing

  revision = _REVISION.value or results.commit(_MAXTEXT.value)
  rows = _candidates(maxtext)
  machine = timing.machine()
  lines = [f"# Chunked gated delta rule: fwp against MaxText's pure-JAX version",
           "",
           results.made_by("experiments.studies.bench_maxtext") + f" MaxText {revision[:12]}, "
           f"{os.path.relpath(path, _MAXTEXT.value)}.",
           timing.machine_line(machine),
           f"B = {B}, H = {H}, K = V = {K}, chunks of {CHUNK}, float32; median of "
           f"{_REPEATS.value} jitted calls after a warm-up; forward + backward is the gradient "
           f"of Σ y·c w.r.t. q, k, v, β and the log-decay. Ratios are the row's time over fwp's "
           f"gated delta in the same run (above 1: slower than fwp).",
           ""]
  table = ["| T | implementation | max rel. diff. to fwp (y, W) | forward ms | ratio | "
           "fwd + bwd ms | ratio |", "|---|---|---|---|---|---|---|"]
  for t in (int(x) for x in _LENGTHS.value):
    args = _inputs(t)
    reference = jax.jit(rows["fwp gated_delta (chunked)"])(*args)
    cot = jax.random.normal(jax.random.key(9), reference[0].shape)
    times = {}
    for name, fn in rows.items():
      out = jax.jit(fn)(*args)
      if "ungated" in name:
        diff = "— (another rule)"
      else:
        d = max(_relative(out[0], reference[0]), _relative(out[1], reference[1]))
        if d > AGREE:
          raise SystemExit(f"{name} differs from fwp's chunked gated delta rule at T = {t}: "
                           f"{d:.2e} > {AGREE}; no timing.")
        diff = f"{d:.1e}"
      forward = jax.jit(lambda *a, fn=fn: fn(*a)[0])
      loss = lambda a, fn=fn: jnp.sum(fn(*a)[0] * cot)
      backward = jax.jit(jax.grad(loss))
      times[name] = (diff, timing.median_seconds(forward, *args, repeats=_REPEATS.value),
                     timing.median_seconds(backward, args, repeats=_REPEATS.value))
    base = times["fwp gated_delta (chunked)"]
    for name, (diff, fwd, both) in times.items():
      table.append(f"| {t} | {name} | {diff} | {1e3 * fwd:.1f} | {fwd / base[1]:.2f} | "
                   f"{1e3 * both:.1f} | {both / base[2]:.2f} |")
  results.write_markdown(_OUT.value, "bench_rules", lines + table)


if __name__ == "__main__":
  app.run(main)
