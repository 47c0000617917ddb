"""The CPU grid behind results/algorithmic.* (docs/algorithmic.md): each model on each problem
with configs/algorithmic_cpu.py, seed 1, then the report.

  python -m experiments.grid --grid=configs/grids/algorithmic.py
  python -m experiments.grid --grid=configs/grids/algorithmic.py --only=code5-lstm --seeds=1,2,3
"""

from configs.grids import Grid, Launch, args

PROBLEMS = ("code5", "listops6")
MODELS = ("linear-sum", "linear-delta", "linear-delta_rnn", "linear-rdn", "lstm", "transformer",
          "linear-delta_lstm")


def get_grid(arg=None):
  args(arg, {}, {})
  return Grid(name="algorithmic", runs="runs/algorithmic", out="results",
              records="results/runs/algorithmic",
              launches=tuple(Launch(f"configs/algorithmic_cpu.py:{p}-{m}", f"{p}-{m}", seeds=(1,),
                                    seed_dirs=True) for p in PROBLEMS for m in MODELS))
