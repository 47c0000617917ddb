"""The CPU translation grid behind results/translation.* (issue 25; the paper's Table 1 at the
size of configs/translation.py, Debian's message catalogs): each model, seed 1, then the report.

  python -m experiments.grid --grid=configs/grids/translation.py
  python -m experiments.grid --grid=configs/grids/translation.py --only=standard,dpfp2 --seeds=1,2,3
"""

from configs.grids import args
from configs.grids.lm import lm_grid

MODELS = ("standard", "linear", "dpfp2", "performer32", "performer128", "linear-delta")


def get_grid(arg=None):
  args(arg, {}, {})
  return lm_grid("translation", MODELS, "results", config="configs/translation.py")
