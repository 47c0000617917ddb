"""The lineage's ends on the retrieval task (results/lineage/, docs/lineage.md): the 1991 FWP and
additive attention in setting 1, and the recurrent FWPs (Delta RNN, RDN, Delta LSTM) beside the
Delta Net they build on in setting 2; seed 1, the budget grid's 3,000 steps.

  python -m experiments.grid --grid=configs/grids/lineage.py
  python -m experiments.grid --grid=configs/grids/lineage.py --only=setting2   # setting 2 only
  python -m experiments.grid --grid=configs/grids/lineage.py:authors

The first S of setting 2 runs for every curve before the rest. The report keeps the committed
rows of results/lineage/associative_recall.csv that these runs do not redo, so a partial rerun
adds to the table instead of replacing it. before (the default: the model of the committed
results) or authors, as in configs/grids/retrieval.py; authors runs go to runs/lineage-authors
and results/authors/lineage/.
"""

from configs.grids import Grid, Launch, args

RECURRENT = ("linear-delta_rnn dpfp1-delta_rnn linear-rdn dpfp1-rdn linear-delta_lstm "
             "dpfp1-delta_lstm").split()
SETTING2 = ["linear-delta", "dpfp1-delta"] + RECURRENT
S1, S2 = "num_keys=20,60,100,200,300,400,600", "num_keys=20,40"


def get_grid(arg=None):
  authors = args(arg, {"variant": ("before", "authors")}, {"variant": "before"})["variant"] == \
      "authors"
  suffix, tag = ("", "-authors") if authors else (":before", "")
  out = "results/authors/lineage" if authors else "results/lineage"

  def launch(setting, curve, sweep):
    return Launch(f"configs/associative_recall.py:{curve}{suffix}", f"setting{setting}/{curve}",
                  (f"--config.setting={setting}", "--config.max_steps=3000"), sweep=sweep,
                  seeds=(1,))

  launches = ([launch(2, c, S2.split(",")[0]) for c in SETTING2]
              + [launch(1, c, S1) for c in ("fwp91-sum", "additive")]
              + [launch(2, c, S2) for c in SETTING2])
  return Grid(name=f"lineage{tag}", runs=f"runs/lineage{tag}", launches=tuple(launches), out=out,
              records=f"results/runs/lineage{tag}", previous=f"{out}/associative_recall.csv")
