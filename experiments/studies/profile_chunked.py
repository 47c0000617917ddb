"""Profile of the chunked delta rule: where its time goes, and the rate its products can reach.

  python -m experiments.studies.profile_chunked --out=results/profile_chunked.json \
      --markdown=results/profile_chunked.md

The chunked form is a `lax.scan` over T/C chunks; each chunk does a handful of small batched
products ([B·H] batches of C×64 by 64×64, C×64 by 64×C, C×C by C×64) and a unit lower-triangular
inverse. This times, at the benchmark's shape (batch 4, heads 4, d_key = d_value = 64, T = 4096):

- the whole form, forward and forward + backward (as `experiments.studies.bench`);
- each product of the chunk alone, run over the T/C chunks two ways: inside a `lax.scan` (one
  chunk per iteration, as the form runs it) and batched over all chunks in one call (the best any
  restructuring could do for the products that do not depend on the state);
- the machine's large-matmul rate (2048³), measured in the same run.

Each row reports ms for the T/C chunks and GFLOP/s counting the product's own FLOPs. The rates of
the chunk-shaped products bound what the chunked form can reach on this machine.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
from absl import app, flags

from experiments import results
from experiments.studies import timing
from fwp import ops

_T = flags.DEFINE_integer("length", 4096, "Sequence length T.")
_CHUNKS = flags.DEFINE_list("chunk_sizes", ["32", "64"], "Chunk sizes C.")
_SHAPE = flags.DEFINE_list("shape", ["4", "4", "64", "64"], "batch, heads, d_key, d_value.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per case (median reported).")
_OUT = flags.DEFINE_string("out", None, "Write the rows as JSON here.")
_MARKDOWN = flags.DEFINE_string("markdown", None, "Write the table as Markdown here.")


def _inverse_flops(c: int) -> int:
  """FLOPs of ops.unit_lower_inverse on one C×C matrix: per doubling round, m = C/2s pairs of
  two s×s products."""
  flops, s = 0, 1
  while s < c:
    flops += (c // (2 * s)) * 2 * 2 * s ** 3
    s *= 2
  return flops


def products(g: int, c: int, dk: int, dv: int):
  """The chunk's products as (name, flops per chunk, fn(carry, x) -> (carry, y), x shapes).

  x holds one chunk's operands; fn's carry is the state W [g, dv, dk] (passed through unchanged
  unless the product is the state update)."""
  return [
      ("K W0ᵀ, Q W0ᵀ (C×K · K×V)", 2 * g * c * dk * dv,
       lambda w, x: (w, jnp.einsum("gck,gvk->gcv", x[0], w)), [(g, c, dk)]),
      ("W += Uᵀ K (V×C · C×K)", 2 * g * c * dk * dv,
       lambda w, x: (w + jnp.einsum("gcv,gck->gvk", x[1], x[0]), None), [(g, c, dk), (g, c, dv)]),
      ("K Kᵀ, Q Kᵀ (C×K · K×C)", 2 * g * c * c * dk,
       lambda w, x: (w, jnp.einsum("gck,gsk->gcs", x[0], x[1])), [(g, c, dk), (g, c, dk)]),
      ("A⁻¹ R, S U (C×C · C×V)", 2 * g * c * c * dv,
       lambda w, x: (w, jnp.einsum("gcs,gsv->gcv", x[0], x[1])), [(g, c, c), (g, c, dv)]),
      ("(I + L)⁻¹ (C×C, log2 C rounds)", g * _inverse_flops(c),
       lambda w, x: (w, ops.unit_lower_inverse(jnp.eye(c) + jnp.tril(x[0], -1))), [(g, c, c)]),
  ]


def time_product(fn, x_shapes, w_shape, num_chunks, repeats):
  """ms of num_chunks applications: (inside a scan, batched over the chunks in one call)."""
  keys = jax.random.split(jax.random.key(0), len(x_shapes) + 1)
  w = 0.1 * jax.random.normal(keys[0], w_shape, jnp.float32)
  xs = [0.1 * jax.random.normal(key, (num_chunks,) + s, jnp.float32)
        for key, s in zip(keys[1:], x_shapes)]
  scanned = jax.jit(lambda w, xs: jax.lax.scan(fn, w, xs))
  batched = jax.jit(jax.vmap(fn, in_axes=(None, 0)))
  return (1e3 * timing.median_seconds(scanned, w, xs, repeats=repeats),
          1e3 * timing.median_seconds(batched, w, xs, repeats=repeats))


def markdown(machine, rows, shape, t) -> str:
  b, h, dk, dv = shape
  lines = [timing.machine_line(machine), "",
           f"Chunked delta rule, batch {b}, heads {h}, d_key {dk}, d_value {dv}, T = {t}. Each "
           f"product row times that product alone over all T/C chunks: in a `lax.scan` (as the "
           f"form runs it) and batched over the chunks in one call.", "",
           "| C | what | ms (scan) | GFLOP/s (scan) | % matmul | ms (batched) | GFLOP/s "
           "(batched) | % matmul |", "|---|---|---|---|---|---|---|---|"]
  peak = machine["matmul_gflops"]
  for r in rows:
    if r["kind"] == "form":
      lines.append(f"| {r['chunk_size']} | **whole form, {r['what']}** | {r['ms']:.1f} | "
                   f"{r['gflops']:.1f} | {100 * r['gflops'] / peak:.1f}% | | | |")
    else:
      lines.append(f"| {r['chunk_size']} | {r['what']} | {r['scan_ms']:.1f} | "
                   f"{r['scan_gflops']:.1f} | {100 * r['scan_gflops'] / peak:.1f}% | "
                   f"{r['batched_ms']:.1f} | {r['batched_gflops']:.1f} | "
                   f"{100 * r['batched_gflops'] / peak:.1f}% |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  b, h, dk, dv = shape = [int(x) for x in _SHAPE.value]
  t, repeats = _T.value, _REPEATS.value
  machine = timing.machine(repeats=repeats)
  peak = machine["matmul_gflops"]
  print(f"machine: {machine}")
  rows = []
  for c in (int(x) for x in _CHUNKS.value):
    first = len(rows)
    whole = timing.time_op("delta", "chunked", t, c, shape, repeats, peak)
    rows.append(dict(kind="form", chunk_size=c, what="forward", ms=whole["fwd_ms"],
                     gflops=whole["fwd_gflops"]))
    rows.append(dict(kind="form", chunk_size=c, what="forward + backward",
                     ms=whole["fwd_bwd_ms"], gflops=whole["fwd_bwd_gflops"]))
    num_chunks = t // c
    for name, flops, fn, x_shapes in products(b * h, c, dk, dv):
      scan_ms, batched_ms = time_product(fn, x_shapes, (b * h, dv, dk), num_chunks, repeats)
      total = flops * num_chunks
      rows.append(dict(kind="product", chunk_size=c, what=name, flops=total,
                       scan_ms=scan_ms, scan_gflops=total / scan_ms / 1e6, batched_ms=batched_ms,
                       batched_gflops=total / batched_ms / 1e6))
    for r in rows[first:]:
      print(r, flush=True)
  table = markdown(machine, rows, shape, t)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(dict(machine=machine, shape=shape, length=t, rows=rows), f, indent=2)
  if _MARKDOWN.value:
    results.write_text(_MARKDOWN.value, table)
  print(table)


if __name__ == "__main__":
  app.run(main)
