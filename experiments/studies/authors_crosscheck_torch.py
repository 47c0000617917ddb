"""The authors' side of `python -m experiments.studies.authors_crosscheck`: runs their retrieval
models (ischlag/fast-weight-transformers `synthetic/linearAttention.py`,
`synthetic/softmaxAttention.py`), imported unchanged, in float64 on the inputs and parameters that
fwp's side wrote, and writes their outputs, loss and parameter gradients back.

Not part of fwp and not imported by it; it needs a Python with torch (not a project requirement;
experiments/studies/authors_synthetic.py says how to get a CPU-only one). One thing is replaced:
their FAVOR+ forward draws its projection inside `forward` with `orthogonal_random_matrix_`;
here that function returns the projection fwp drew (transposed to their [d, m]), so both sides
use the same random features. Their code is otherwise called as it is.

  /tmp/torchenv/bin/python experiments/studies/authors_crosscheck_torch.py \
      --code=/tmp/fwt/synthetic --cases=DIR        # DIR/<case>.npz in, DIR/<case>.out.npz out
"""

import argparse
import glob
import os
import sys


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--code", required=True, help="the authors' synthetic/ directory")
  parser.add_argument("--cases", required=True, help="the directory of <case>.npz files")
  args = parser.parse_args()
  if not os.path.isfile(os.path.join(args.code, "linearAttention.py")):
    sys.exit(f"--code={args.code!r} is not the authors' synthetic/ directory (no "
             f"linearAttention.py there).")
  sys.path.insert(0, args.code)
  import numpy as np
  import torch                                             # the user's torch, not a requirement
  import linearAttention                                   # the authors' modules
  from softmaxAttention import SoftmaxAttentionModel
  torch.set_default_dtype(torch.float64)
  for path in sorted(glob.glob(os.path.join(args.cases, "*.npz"))):
    if path.endswith(".out.npz"):
      continue
    case = dict(np.load(path))
    attention, rule = str(case["attention"]), str(case["rule"])
    s, e = int(case["num_keys"]), case["E"].shape[1]
    sizes = dict(embedding_size=e, hidden_size=case["W_k"].shape[1], n_values=s, n_keys=s)
    torch.manual_seed(0)
    if attention == "softmax":
      model = SoftmaxAttentionModel(**sizes)
    else:
      model = linearAttention.PrefixSumLinearAttentionModel(
          **sizes, attention_type=attention, update_rule=rule, arg=int(case["arg"]))
    model = model.double()
    if attention == "favor":   # the one replacement: fwp's projection instead of a fresh draw
      omega = torch.from_numpy(case["omega"])
      linearAttention.orthogonal_random_matrix_ = lambda rows, columns, device: omega
    t = lambda name: torch.from_numpy(case[name])
    with torch.no_grad():      # fwp's kernels are [in, out]; nn.Linear's weight is [out, in]
      model.embeddingK.weight[:s] = t("E")       # their table has 2S rows; keys use the first S
      model.W_k.weight.copy_(t("W_k").T)
      model.W_k.bias.copy_(t("b_k"))
      model.W_q.weight.copy_(t("W_q").T)
      model.W_q.bias.copy_(t("b_q"))
      if hasattr(model, "W_b") and "W_b" in case:
        model.W_b.weight.copy_(t("W_b").T)
        model.W_b.bias.copy_(t("b_b"))
    keys, values, queries = (torch.from_numpy(case[n]).long() for n in ("keys", "values",
                                                                           "queries"))
    x = torch.stack([keys, values + s], dim=1)               # their [B, 2, T], values offset
    outputs = [model(x, queries[:, i:i + 1]) for i in range(queries.shape[1])]
    y = torch.stack(outputs, dim=1)                           # [B, Q, S]
    targets = torch.nn.functional.one_hot(torch.from_numpy(case["targets"]).long(), s).double()
    loss = 0.5 * ((y - targets) ** 2).sum()
    loss.backward()
    grad = lambda p: (np.zeros(1) if p.grad is None else p.grad.numpy())
    out = dict(y=y.detach().numpy(), loss=loss.item(), E=grad(model.embeddingK.weight)[:s],
               W_k=grad(model.W_k.weight).T, b_k=grad(model.W_k.bias),
               W_q=grad(model.W_q.weight).T, b_q=grad(model.W_q.bias))
    if hasattr(model, "W_b") and rule != "sum":
      out.update(W_b=grad(model.W_b.weight).T, b_b=grad(model.W_b.bias))
    np.savez(path[:-len(".npz")] + ".out.npz", torch=torch.__version__, **out)


if __name__ == "__main__":
  main()
