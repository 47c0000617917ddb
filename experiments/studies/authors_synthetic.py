"""Times the authors' PyTorch training step (ischlag/fast-weight-transformers, `synthetic/`) so that
`python -m experiments.studies.bench --authors_code=PATH` can put it beside fwp's step in the same run.

Not part of fwp and not imported by it: `experiments.studies.bench` runs this file in a subprocess with
the Python that has torch (`--authors_python`, default the current one). torch is not a project
requirement; for a CPU-only torch:

  python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install numpy torch \
      --index-url https://download.pytorch.org/whl/cpu   # numpy from PyPI if the index lacks it
  git clone https://github.com/ischlag/fast-weight-transformers /tmp/fwt

  python experiments/studies/authors_synthetic.py --code=/tmp/fwt/synthetic --case=dpfp:1:ours:100:1

A case is attention:arg:update_rule:S:replace, with the authors' names (attention linear, tanh,
favor, dpfp or softmax; update_rule sum, fwm or ours = the delta rule; replace 1 = setting 2,
sequences of 2S). The timed region is exactly their `train()`'s (main.py): forward, loss,
backward and the Adam step, on a batch drawn before the timer starts; the median of --repeats
steps (more when they would take under --min_seconds) after --warmup steps is printed as one
JSON line.
"""

import argparse
import json
import os
import statistics
import sys
import time


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--code", required=True, help="the authors' synthetic/ directory")
  parser.add_argument("--case", required=True, action="append",
                      help="attention:arg:update_rule:S:replace (repeatable)")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--min_seconds", type=float, default=1.0,
                      help="more timed steps when --repeats would take less than this")
  parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
  args = parser.parse_args()
  if not os.path.isfile(os.path.join(args.code, "linearAttention.py")):
    sys.exit(f"--code={args.code!r} is not the authors' synthetic/ directory (no "
             f"linearAttention.py there).")
  sys.path.insert(0, args.code)
  import numpy as np
  import torch                                             # the user's torch, not a requirement
  if not hasattr(np, "int"):       # their data code uses np.int, removed in NumPy 1.24
    np.int = int
  from associativeRetrievalDataset import DataLoader       # the authors' modules
  from linearAttention import PrefixSumLinearAttentionModel
  from softmaxAttention import SoftmaxAttentionModel
  if args.threads:
    torch.set_num_threads(args.threads)
  for case in args.case:
    attention, arg, rule, num_keys, replace = case.split(":")
    num_keys, replace = int(num_keys), bool(int(replace))
    torch.manual_seed(1)
    data = DataLoader(seq_len=2 * num_keys if replace else num_keys, n_values=num_keys,
                      n_keys=num_keys, replace=replace)
    sizes = dict(embedding_size=int(2 * num_keys * 1.1), hidden_size=64, n_values=num_keys,
                 n_keys=num_keys)
    if attention == "softmax":
      model = SoftmaxAttentionModel(**sizes)
    else:
      model = PrefixSumLinearAttentionModel(**sizes, attention_type=attention, update_rule=rule,
                                            arg=int(arg))
    batch_size, lr = args.batch_size, 1e-3
    if rule == "fwm" and attention == "tanh":                # as their run()
      batch_size, lr = 128, 1e-4
    optimizer = torch.optim.Adam(params=model.parameters(), lr=lr)

    def train_step():          # the region their train() times
      x, q, y = data.get_batch(batch_size, "cpu")
      start = time.perf_counter()
      y_hat = model(x, q)
      with torch.no_grad():
        target = model.embeddingV(y - model.n_values).squeeze(1)
      loss = (0.5 * (target - y_hat).pow(2)).sum(dim=-1).mean()
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
      return time.perf_counter() - start

    for _ in range(args.warmup):
      once = train_step()
    repeats = max(args.repeats, min(1000, int(args.min_seconds / max(once, 1e-6))))
    times = [train_step() for _ in range(repeats)]
    print(json.dumps(dict(case=case, batch=batch_size, ms=1e3 * statistics.median(times),
                          torch=torch.__version__, threads=torch.get_num_threads())), flush=True)


if __name__ == "__main__":
  main()
