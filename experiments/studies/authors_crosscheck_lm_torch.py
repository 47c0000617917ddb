"""The authors' side of `python -m experiments.studies.authors_crosscheck --lmtool_code=...`: runs
their language-model layers and model (IDSIA/lmtool-fwp `src/model_main.py`: `DecoderLayer`,
`PerformerDecoderLayer`, `MemTransformerLM`), imported unchanged, in float64 on the inputs and
parameters that fwp's side wrote, and writes their outputs and gradients back.

Not part of fwp and not imported by it; it needs a Python with torch (not a project requirement;
experiments/studies/authors_synthetic.py says how to get a CPU-only one). What is replaced, and
only that: their CUDA extensions, JIT-compiled kernels loaded at import. Four become per-step
loops written from the kernels' sources, differentiated by torch's autograd instead of their
hand-written backward kernels:
  utils.fast_fast_weight.fast_weight_delta (fast_weight_cuda.cu): per step v_old = Wᵀk,
      W += k (β(v − v_old))ᵀ, out = Wᵀq with the updated W;
  utils.fast_transformers.fast_weight_sum (causal_product_cuda.cu): out_t = Σ_{s≤t} (q_t·k_s) v_s;
  utils.fast_weight_rnn_v2.fast_rnn_v2 (the Delta RNN) and utils.fast_lstm_v4.fast_lstm_v4 (the
      Delta LSTM): `_rnn_v2_loop`, `_lstm_v4_loop`, with the kernels' softmax denominator
      Σexp + 1e-6, or 0 where a case asks for their Python test loops' exact softmax.
The other recurrent kernels (fast_weight_rnn, fast_lstm v1-v3, and rec_update_fwm_tanh: the
RDN, whose q and k go through a softmax where fwp's go through the configured φ, a departure)
are stubbed with functions that refuse to run: no row uses them. Their FAVOR+ layers keep the
projection as a plain attribute (`proj_matrix`); it is set to fwp's draw and `redraw=False`.
On a CPU-only torch, `torch.version.cuda` (read at import by their adaptive softmax, used by no
line run here) is set to "11.0".

  /tmp/torchenv/bin/python experiments/studies/authors_crosscheck_lm_torch.py \
      --code=/path/to/lmtool-fwp/src --cases=DIR     # DIR/<case>.npz in, DIR/<case>.out.npz out
"""

import argparse
import glob
import os
import sys
import types


def _delta_loop(torch):
  def fast_weight_delta(q, k, v, beta, w):
    """q, k [N, H, L, E], v [N, H, L, M], beta [N, H, L, 1], w [N, H, E, M] (the initial fast
    weights; the kernel updates it in place, which only their carry-over mode reads)."""
    outs = []
    for t in range(q.shape[2]):
      v_old = torch.einsum("nhe,nhem->nhm", k[:, :, t], w)
      insert = beta[:, :, t] * (v[:, :, t] - v_old)
      w = w + torch.einsum("nhe,nhm->nhem", k[:, :, t], insert)
      outs.append(torch.einsum("nhe,nhem->nhm", q[:, :, t], w))
    return torch.stack(outs, dim=2)
  return fast_weight_delta


def _sum_loop(torch):
  def fast_weight_sum(q, k, v, w):
    outs = []
    for t in range(q.shape[2]):
      w = w + torch.einsum("nhe,nhm->nhem", k[:, :, t], v[:, :, t])
      outs.append(torch.einsum("nhe,nhem->nhm", q[:, :, t], w))
    return torch.stack(outs, dim=2)
  return fast_weight_sum


KERNEL = {"softmax_eps": 1e-6}     # fast_rnn_cuda.cu's `esp`; a case may set 0 (their test loop)


def _rnn_v2_loop(torch):
  def fast_rnn_v2(z, k, v, r, beta, h0):
    """fast_weight_rnn_v2/fast_rnn_cuda.cu per step: v_old = Rᵀk; R += k (β(v − v_old))ᵀ;
    p = exp(s − max s) / (Σ exp(s − max s) + esp) of the last output s (h0 first);
    y = Rᵀp + z (the updated R); s = y. z, k, v [N, H, L, M], r [N, H, M, M], beta
    [N, H, L, 1], h0 [N, H, 1, M]."""
    s, outs = h0[:, :, 0], []
    for t in range(z.shape[2]):
      v_old = torch.einsum("nhe,nhem->nhm", k[:, :, t], r)
      r = r + torch.einsum("nhe,nhm->nhem", k[:, :, t], beta[:, :, t] * (v[:, :, t] - v_old))
      e = torch.exp(s - s.max(dim=-1, keepdim=True).values)
      p = e / (e.sum(dim=-1, keepdim=True) + KERNEL["softmax_eps"])
      s = torch.einsum("nhe,nhem->nhm", p, r) + z[:, :, t]
      outs.append(s)
    return torch.stack(outs, dim=2)
  return fast_rnn_v2


def _lstm_v4_loop(torch):
  def fast_lstm_v4(zi, ki, vi, bi, ri, zu, ku, vu, bu, ru, zo, ko, vo, bo, ro, h0, c0):
    """fast_lstm_v4/fast_lstm_v4_cuda.cu per step: p = the kernel's softmax of the last output
    s (as fast_rnn_v2); per gate g: v_old = R_gᵀk_g, R_g += k_g (β_g(v_g − v_old))ᵀ,
    a_g = R_gᵀp + z_g (the updated R_g); i = σ(a_i), u = a_u, o = σ(a_o);
    c = i u + (1 − i) c; y = o c; s = y. Returns (y, c) over time."""
    s, c, rs, ys, cs = h0[:, :, 0], c0[:, :, 0], [ri, ru, ro], [], []
    gates = ((zi, ki, vi, bi), (zu, ku, vu, bu), (zo, ko, vo, bo))
    for t in range(zi.shape[2]):
      e = torch.exp(s - s.max(dim=-1, keepdim=True).values)
      p = e / (e.sum(dim=-1, keepdim=True) + KERNEL["softmax_eps"])
      a = []
      for g, (z, k, v, beta) in enumerate(gates):
        v_old = torch.einsum("nhe,nhem->nhm", k[:, :, t], rs[g])
        rs[g] = rs[g] + torch.einsum("nhe,nhm->nhem", k[:, :, t],
                                     beta[:, :, t] * (v[:, :, t] - v_old))
        a.append(torch.einsum("nhe,nhem->nhm", p, rs[g]) + z[:, :, t])
      i, u, o = torch.sigmoid(a[0]), a[1], torch.sigmoid(a[2])
      c = i * u + (1.0 - i) * c
      s = o * c
      ys.append(s)
      cs.append(c)
    return torch.stack(ys, dim=2), torch.stack(cs, dim=2)
  return fast_lstm_v4


def _refuse(name):
  def kernel(*args, **kwargs):
    raise NotImplementedError(f"{name}: a CUDA kernel of the authors' that this cross-check "
                              f"does not replace")
  return kernel


def _install_kernels(torch):
  """Their `utils.<extension>` modules, which load CUDA code at import, as plain modules."""
  replaced = {"fast_fast_weight": {"fast_weight_delta": _delta_loop(torch)},
              "fast_transformers": {"fast_weight_sum": _sum_loop(torch)},
              "fast_weight_rnn_v2": {"fast_rnn_v2": _rnn_v2_loop(torch)},
              "fast_lstm_v4": {"fast_lstm_v4": _lstm_v4_loop(torch)}}
  refused = {"fast_weight_rnn": "fast_rnn",
             "fast_lstm": "fast_lstm", "fast_lstm_v2": "fast_lstm_v2",
             "fast_lstm_v3": "fast_lstm_v3",
             "rec_update_fwm_tanh": "rec_update_fwm_tanh"}
  for name, function in refused.items():
    replaced[name] = {function: _refuse(function)}
  for name, functions in replaced.items():
    module = types.ModuleType(f"utils.{name}")
    module.__dict__.update(functions)
    sys.modules[f"utils.{name}"] = module


def _load(model, params, torch):
  """Every parameter of `model` from `params` (their state_dict names), shapes checked."""
  named = dict(model.named_parameters())
  missing = sorted(set(named) - set(params))
  extra = sorted(set(params) - set(model.state_dict()))
  if missing or extra:
    raise SystemExit(f"parameters not given: {missing}; given but not theirs: {extra}")
  with torch.no_grad():
    for name, value in params.items():
      target = model.state_dict()[name]
      if tuple(target.shape) != value.shape:
        raise SystemExit(f"{name}: theirs {tuple(target.shape)}, given {value.shape}")
      target.copy_(torch.from_numpy(value))


def _projection(case, torch):
  """Their draw_orthogonal_random_matrix(d_head, proj_dim), as their LM layers call it, with
  torch.randn returning the Gaussians fwp's side drew (in the order the function asks)."""
  from utils import performer_helper
  draws = iter([torch.from_numpy(case[name]) for name in sorted(case)
                if name.startswith("randn:")])
  randn = torch.randn
  torch.randn = lambda *shape, **kwargs: next(draws)
  try:
    matrix = performer_helper.draw_orthogonal_random_matrix(
        int(case["d_head"]), int(case["proj_dim"]), device="cpu")
  finally:
    torch.randn = randn
  return {"y": matrix.numpy(), "loss": 0.0}


def _run_case(case, torch, model_main):
  kind, attn_type = str(case["kind"]), int(case["attn_type"])
  if kind == "projection":
    return _projection(case, torch)
  KERNEL["softmax_eps"] = float(case["kernel_softmax_eps"])
  params = {name[2:]: case[name] for name in case if name.startswith("p:")}
  sizes = dict(n_head=int(case["n_head"]), d_model=int(case["d_model"]),
               d_head=int(case["d_head"]))
  flags = dict(dropatt=0.0, pre_lnorm=bool(case["pre_lnorm"]),
               skip_attn_normalization=bool(case["skip_attn_normalization"]))
  if kind == "block":
    layer_kwargs = dict(d_inner=int(case["d_inner"]), dropout=0.0, attn_type=attn_type, **flags)
    if attn_type in (5, 25, 35, 45):
      model = model_main.PerformerDecoderLayer(**sizes, **layer_kwargs,
                                               proj_dim=int(case["proj_dim"]), device="cpu")
    else:
      extra = {}
      if attn_type in (6, 16, 26, 46):
        extra["n_roll"] = int(case["n_roll"])
      if attn_type not in (2, 4, 6):
        extra.update(layer_id=0, num_layer=1)
      else:
        del layer_kwargs["skip_attn_normalization"]
      model = model_main.DecoderLayer(**sizes, **layer_kwargs, **extra)
  else:
    model = model_main.MemTransformerLM(
        int(case["vocab_size"]), int(case["n_layer"]), **sizes, d_inner=int(case["d_inner"]),
        dropout=0.0, tie_weight=True, d_embed=int(case["d_model"]), div_val=1,
        tgt_len=int(case["tokens"].shape[0]), ext_len=0, mem_len=0, cutoffs=[],
        attn_type=attn_type, proj_dim=int(case["proj_dim"]), n_roll=int(case["n_roll"]),
        no_pos=bool(case["no_pos"]), device="cpu", **flags)
  model = model.double()
  _load(model, params, torch)
  if "proj_matrix" in case:
    projection = torch.from_numpy(case["proj_matrix"])
    for module in model.modules():
      if hasattr(module, "proj_matrix"):
        module.proj_matrix = projection
  model.eval()                   # dropout is 0 anyway; eval keeps every path deterministic
  if kind == "block":
    x = torch.from_numpy(case["x"]).requires_grad_(True)          # [T, B, D]
    t = x.shape[0]
    mask = torch.triu(torch.ones(t, t), diagonal=1).bool()[:, :, None]
    if attn_type in (5, 25, 35, 45):
      y = model(x, dec_attn_mask=mask, redraw=False)
    else:
      y = model(x, dec_attn_mask=mask)
    loss = (y * torch.from_numpy(case["g"])).sum()
    loss.backward()
    out = {"y": y.detach().numpy(), "x": x.grad.numpy()}
  else:
    tokens = torch.from_numpy(case["tokens"]).long()              # [T, B]
    targets = torch.from_numpy(case["targets"]).long()
    nll = model(tokens, targets)[0]
    loss = nll.mean()
    loss.backward()
    out = {"y": nll.detach().numpy()}
  for name, p in model.named_parameters():
    out["p:" + name] = p.grad.numpy() if p.grad is not None else 0 * p.detach().numpy()
  out["loss"] = loss.item()
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--code", required=True, help="lmtool-fwp's src/ directory")
  parser.add_argument("--cases", required=True, help="the directory of <case>.npz files")
  args = parser.parse_args()
  if not os.path.isfile(os.path.join(args.code, "model_main.py")):
    sys.exit(f"--code={args.code!r} is not lmtool-fwp's src/ directory (no model_main.py there).")
  sys.path.insert(0, args.code)
  import numpy as np
  import torch                                             # the user's torch, not a requirement
  torch.set_default_dtype(torch.float64)
  _install_kernels(torch)
  if torch.version.cuda is None:   # a CPU torch: their adaptive softmax reads the CUDA version
    torch.version.cuda = "11.0"    # at import (and uses it in no line this cross-check runs)
  import contextlib
  import io
  with contextlib.redirect_stdout(io.StringIO()):          # their layers print on construction
    import model_main                                      # the authors' module, unchanged
  for path in sorted(glob.glob(os.path.join(args.cases, "*.npz"))):
    if path.endswith(".out.npz"):
      continue
    case = dict(np.load(path))
    with contextlib.redirect_stdout(io.StringIO()):
      out = _run_case(case, torch, model_main)
    np.savez(path[:-len(".npz")] + ".out.npz", torch=torch.__version__, **out)


if __name__ == "__main__":
  main()
