"""Which of fwp's former departures made tanh-FWM solve S = 20? Under the authors' retrieval
model it does not (results/authors/, docs/associative_retrieval.md); under fwp's earlier model
(the `:before` variant) it did. Each run here is the authors' model with ONE field set to fwp's
earlier value, on the knee protocol (setting 2, S = 20, 20,000-step budget, the authors' stopping
rule), seed 1:

  python -m experiments.grid --grid=configs/grids/tanh_fwm_ablation.py   # runs/ablation-tanh-fwm,
                                      # then the table in results/authors/tanh_fwm_ablation.md
"""

from configs.grids import Grid, Launch, args

CHANGES = ("model.readout_eps=1e-6", "model.readout_affine=True", "model.fwm_normalize_first=True",
           "model.qk_bias=False", "model.beta_init=flax")


def get_grid(arg=None):
  args(arg, {}, {})
  return Grid(
      name="tanh_fwm_ablation", runs="runs/ablation-tanh-fwm", out="results/authors",
      records="results/runs/ablation-tanh-fwm", report="points", parallel=1,
      title="tanh-FWM, S = 20: the authors' model with one field at fwp's earlier value",
      notes=("Setting 2, 20,000-step budget, stop at eval loss <= 0.001 or after 10 evals "
             "without a new best. The authors' model itself: results/authors/"
             "associative_recall.md; fwp's earlier model (all fields at once) solved S = 20 in "
             "11,700-15,200 steps (results/associative_recall.md)."),
      launches=tuple(Launch("configs/associative_recall.py:tanh-fwm", change.split("=")[0],
                            ("--config.setting=2", "--config.num_keys=20",
                             "--config.max_steps=20000"), sweep=change, seeds=(1,))
                     for change in CHANGES))
