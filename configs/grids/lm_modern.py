"""The modern fast weight rules on the LM grid's protocol (issue 44; results/modern/,
docs/language_modelling.md): the gated sum and gated delta rules, KDA (a per-key-channel gate),
DeltaProduct with 2 writes per token and FLA's GatedDeltaNet layer beside the Delta Net and the
Transformer, configs/language_model.py, seed 1.

  python -m experiments.grid --grid=configs/grids/lm_modern.py
  python -m experiments.grid --grid=configs/grids/lm_modern.py --only=kda,fla
"""

from configs.grids import args
from configs.grids.lm import lm_grid

MODELS = ("linear-gated_delta", "linear-delta", "linear-gated_sum", "transformer", "linear-kda",
          "linear-delta_product2", "fla-gated_delta")


def get_grid(arg=None):
  args(arg, {}, {})
  return lm_grid("lm_modern", MODELS, "results/modern")
