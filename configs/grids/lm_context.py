"""Language models without a context window on the CPU corpus (issue 26; the paper's Tables 3-4
at the LM grid's size: configs/language_model.py, pydoc bytes, 2,000 steps, one seed): the Delta
Net and the Linear Transformer trained on windows (-nopos) and with their fast weights carried
(-carry), the Delta Net with and without the attention normaliser (-attn), and Transformer-XL
with no memory and with memories of 8, 64, 128 and 384 hidden states per layer (the paper's
counting, 4 · layers · mem · d_model floats, gives the Delta Net's 16,384 at mem 8, then 8×,
16×, 48× it). Each run's summary has plain, sliding-window and carried perplexities.

  python -m experiments.grid --grid=configs/grids/lm_context.py    # runs/lm_context, results/context/
  python -m experiments.grid --grid=configs/grids/lm_context.py --only=linear-delta-carry,txl-mem8
"""

from configs.grids import args
from configs.grids.lm import lm_grid

MODELS = ("linear-delta-nopos linear-delta-carry linear-sum-nopos linear-sum-carry "
          "linear-delta-attn-nopos linear-delta-attn-carry txl txl-mem8 txl-mem64 txl-mem128 "
          "txl-mem384").split()


def get_grid(arg=None):
  args(arg, {}, {})
  return lm_grid("lm_context", MODELS, "results/context")
