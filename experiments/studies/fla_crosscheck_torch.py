"""The torch side of experiments/studies/fla_crosscheck.py: runs fla-org/flash-linear-attention's
pure-PyTorch references (`naive.py` of delta_rule, gated_delta_rule, gated_delta_product, kda) on
the cases fwp's side wrote, in float64, and writes their outputs back.

  <python with torch and einops> fla_crosscheck_torch.py --code=<checkout> --cases=<dir>

Imports only numpy, torch and einops (not jax, not fla's package, whose __init__ needs triton):
each naive.py is loaded from its file, its float32 casts turned into float64 ones (`.float()`,
`torch.float`, `torch.float32` -> float64; the only change, made to the source text, so the
references compute in float64 as fwp's proofs do).
"""

import argparse
import glob
import importlib.util
import os
import re

import numpy as np
import torch

FILES = {"delta": "fla/ops/delta_rule/naive.py", "gated_delta": "fla/ops/gated_delta_rule/naive.py",
         "delta_product": "fla/ops/gated_delta_product/naive.py", "kda": "fla/ops/kda/naive.py"}


def load(code: str, which: str):
  path = os.path.join(code, FILES[which])
  source = open(path, encoding="utf-8").read()
  source = re.sub(r"torch\.float(32)?\b", "torch.float64", source)
  source = source.replace(".float()", ".double()")
  spec = importlib.util.spec_from_loader(f"fla_naive_{which}", loader=None)
  module = importlib.util.module_from_spec(spec)
  exec(compile(source, path, "exec"), module.__dict__)
  return module


def run(modules, case):
  """(o, final state) of the case's reference function, in FLA's layouts."""
  t = {k: torch.from_numpy(v) for k, v in case.items() if k not in ("fn",)}
  fn = str(case["fn"])
  h0 = t.get("h0")
  if fn == "delta_rule_recurrence":          # [B, H, T, K] layout; q scaled by K^-0.5 inside
    return modules["delta"].delta_rule_recurrence(t["q"], t["k"], t["v"], t["beta"],
                                                  initial_state=h0, output_final_state=True)
  if fn == "delta_rule_chunkwise":
    return modules["delta"].delta_rule_chunkwise(t["q"], t["k"], t["v"], t["beta"],
                                                 chunk_size=int(case["chunk_size"]))
  if fn == "naive_recurrent_gated_delta_rule":
    return modules["gated_delta"].naive_recurrent_gated_delta_rule(
        t["q"], t["k"], t["v"], t["beta"], t["g"], scale=1.0, initial_state=h0,
        output_final_state=True)
  if fn == "naive_chunk_gated_delta_rule":
    return modules["gated_delta"].naive_chunk_gated_delta_rule(
        t["q"], t["k"], t["v"], t["g"], t["beta"], chunk_size=int(case["chunk_size"]),
        scale=1.0, initial_state=h0, output_final_state=True)
  if fn == "naive_recurrent_gated_delta_product":
    return modules["delta_product"].naive_recurrent_gated_delta_product(
        t["q"], t["k"], t["v"], t.get("g"), t["beta"], scale=1.0, cu_seqlens=None,
        initial_state=h0, output_final_state=True, num_householder=int(case["writes"]))
  if fn == "naive_recurrent_kda":
    return modules["kda"].naive_recurrent_kda(t["q"], t["k"], t["v"], t["g"], t["beta"],
                                              scale=1.0, initial_state=h0,
                                              output_final_state=True)
  if fn == "naive_chunk_kda":
    return modules["kda"].naive_chunk_kda(t["q"], t["k"], t["v"], t["g"], t["beta"], scale=1.0,
                                          initial_state=h0, output_final_state=True,
                                          chunk_size=int(case["chunk_size"]))
  raise ValueError(f"Unknown reference {fn!r}.")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--code", required=True)
  parser.add_argument("--cases", required=True)
  args = parser.parse_args()
  modules = {which: load(args.code, which) for which in FILES}
  for path in sorted(glob.glob(os.path.join(args.cases, "*.in.npz"))):
    case = dict(np.load(path))
    o, h = run(modules, case)
    np.savez(path.replace(".in.npz", ".out.npz"), o=o.double().numpy(),
             h=h.double().numpy())


if __name__ == "__main__":
  main()
