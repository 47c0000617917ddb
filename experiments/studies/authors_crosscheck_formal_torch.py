"""The authors' side of `python -m experiments.studies.authors_crosscheck_formal`: runs
IDSIA/fwp-formal-lang's SRWM and e-LSTM models (model.py `SRWM`, `QuasiLSTMModel`, with layers.py's
`SRWMlayer`, `QuasiLSTMlayer`, `TransformerFFlayers`), imported unchanged, in float64 on the
tokens and parameters fwp's side wrote, and writes their log-probabilities and gradients back.

Not part of fwp and not imported by it; it needs a Python with torch (not a project requirement;
experiments/studies/authors_synthetic.py says how to get a CPU-only one). What is replaced, and
only that: their CUDA extensions, JIT-compiled at import. `self_ref_v0` (self_ref_v0.cu) becomes
a per-step loop written from the kernel (their `__main__` test loop, without its input softmax:
the kernel reads x as it is), differentiated by torch's autograd instead of their backward kernel;
the other three (fast_weight, rec_update_fwm_tanh, fast_transformers) are stubs that refuse to
run: no model checked here uses them.

  /tmp/torchenv/bin/python experiments/studies/authors_crosscheck_formal_torch.py \
      --code=/path/to/fwp-formal-lang --cases=DIR     # DIR/<case>.npz in, DIR/<case>.out.npz out
"""

import argparse
import glob
import os
import sys
import types


def _self_ref_loop(torch):
  def self_ref_v0(x, W_y, W_q, W_k, w_b):
    """x [N, H, L, E]; W_y, W_q, W_k [N, H, E, E], w_b [N, H, E, 4] (x @ W): per step the
    output with the weights before the write, then q, k = softmax(x W_q), softmax(x W_k),
    β = σ(x w_b) and every block P += kᵀ ⊗ β_P (q P − k P)."""
    outs = []
    for t in range(x.shape[2]):
      xt = x[:, :, t]
      outs.append(torch.einsum("nhe,nhef->nhf", xt, W_y))
      q = torch.softmax(torch.einsum("nhe,nhef->nhf", xt, W_q), -1)
      k = torch.softmax(torch.einsum("nhe,nhef->nhf", xt, W_k), -1)
      beta = torch.sigmoid(torch.einsum("nhe,nhef->nhf", xt, w_b))
      blocks = []
      for i, w in enumerate((W_y, W_q, W_k, w_b)):
        new = torch.einsum("nhe,nhef->nhf", q, w) - torch.einsum("nhe,nhef->nhf", k, w)
        blocks.append(w + torch.einsum("nhe,nhf->nhef", k, beta[..., i:i + 1] * new))
      W_y, W_q, W_k, w_b = blocks
    return torch.stack(outs, dim=2)
  return self_ref_v0


def _refuse(name):
  def run(*args, **kwargs):
    raise RuntimeError(f"{name} is a CUDA kernel this check does not replace.")
  return run


def _stub_kernels(torch):
  for module, names in (("fast_weight", ("delta_net_fn",)),
                        ("rec_update_fwm_tanh", ("rec_delta_fn",)),
                        ("fast_transformers", ("fast_weight_sum",)),
                        ("self_ref_v0", ("self_ref_v0",))):
    stub = types.ModuleType(module)
    for name in names:
      setattr(stub, name, _self_ref_loop(torch) if name == "self_ref_v0" else _refuse(name))
    sys.modules[module] = stub


def _model(torch, model_lib, case):
  kind = str(case["kind"])
  vocab, out = int(case["in_vocab"]), int(case["out_vocab"])
  if kind == "srwm":
    heads, d = int(case["heads"]), int(case["d_model"])
    return model_lib.SRWM(in_vocab_size=vocab, out_vocab_size=out, hidden_size=d,
                          num_layers=int(case["layers"]), num_head=heads, dim_head=d // heads,
                          dim_ff=int(case["d_ff"]), dropout=0.0)
  return model_lib.QuasiLSTMModel(emb_dim=int(case["emb"]), hidden_size=int(case["d_model"]),
                                  in_vocab_size=vocab, out_vocab_size=out, dropout=0.0)


def run(torch, model_lib, path):
  import numpy as np
  case = dict(np.load(path))
  model = _model(torch, model_lib, case).double()
  params = dict(model.named_parameters())
  with torch.no_grad():
    for name, p in params.items():
      p.copy_(torch.from_numpy(case[f"p:{name}"]))
  tokens = torch.from_numpy(case["tokens"]).long()
  log_probs = torch.log_softmax(model(tokens), -1)
  loss = (log_probs * torch.from_numpy(case["r"])).sum()
  loss.backward()
  out = {"y": log_probs.detach().numpy(), "loss": np.asarray(float(loss))}
  out.update({name: p.grad.numpy() for name, p in params.items()})
  np.savez(path.replace(".npz", ".out.npz"), **out)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--code", required=True, help="a checkout of IDSIA/fwp-formal-lang")
  parser.add_argument("--cases", required=True)
  args = parser.parse_args()
  import torch
  torch.set_default_dtype(torch.float64)
  _stub_kernels(torch)
  sys.path.insert(0, args.code)
  import model as model_lib
  for path in sorted(glob.glob(os.path.join(args.cases, "*.npz"))):
    if not path.endswith(".out.npz"):
      run(torch, model_lib, path)


if __name__ == "__main__":
  main()
