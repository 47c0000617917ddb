"""The CPU language-modelling grid behind results/language_model.* (docs/language_modelling.md):
the paper's five models and two recurrent FWPs (RDN, Delta LSTM) on configs/language_model.py
(pydoc bytes, 2,000 steps), seed 1, then the report.

  python -m experiments.grid --grid=configs/grids/lm.py
  python -m experiments.grid --grid=configs/grids/lm.py --only=dpfp2 --seeds=1,2,3
  python -m experiments.grid --grid=configs/grids/lm.py:authors   # the authors' layer details
                            # (eps, init, final dropout, DPFP sum scaling): configs/
                            # language_model.py:<model>:authors, into runs/lm_grid-authors,
                            # report in results/authors
"""

from configs.grids import Grid, Launch, args

MODELS = ("transformer", "linear-sum", "linear-delta", "dpfp2-sum", "dpfp2-delta", "linear-rdn",
          "linear-delta_lstm")


def lm_grid(name, models, out, suffix="", seeds=(1,), runs=None, config="configs/language_model.py"):
  """One launch per model, one run per seed in <runs>/<model>/seed=<s>."""
  runs = runs or f"runs/{name}"
  return Grid(name=name, runs=runs, out=out, records=f"results/runs/{name}",
              launches=tuple(Launch(f"{config}:{model}{suffix}", model, seeds=seeds,
                                    seed_dirs=True) for model in models))


def get_grid(arg=None):
  authors = args(arg, {"variant": ("fwp", "authors")}, {"variant": "fwp"})["variant"] == "authors"
  if authors:
    return lm_grid("lm_grid-authors", MODELS, "results/authors", suffix=":authors")
  return lm_grid("lm_grid", MODELS, "results")
