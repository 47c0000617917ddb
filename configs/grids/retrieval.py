"""The associative-retrieval grids behind results/ (docs/associative_retrieval.md).

  python -m experiments.grid --grid=configs/grids/retrieval.py             # the budget grid
  python -m experiments.grid --grid=configs/grids/retrieval.py:knee        # issue 16's knees
  python -m experiments.grid --grid=configs/grids/retrieval.py:forget      # the forget gate
  python -m experiments.grid --grid=configs/grids/retrieval.py:full        # the paper's grid
  python -m experiments.grid --grid=configs/grids/retrieval.py:knee,authors

budget: the grid that made results/ (2-core CPU, ~7 h of run time summed over runs): 3,000
steps per run unless noted, seed 1 everywhere, seeds 2 and 3 where runs are cheap and the claims
turn. knee: a dense grid around each capacity knee, S every 20 (softmax 60), 3 seeds, the
authors' stopping rule (eval loss <= 0.001, or 10 evals without a new best) within 20,000 steps,
into runs/knee; its rows replace the budget grid's for the same (curve, S, seed). forget: does a
forget gate help the sum rule where keys repeat? Setting 2, the sum and delta rules with and
without a gate and the sum rule sum-normalised as the gated ones are (the control, labelled
linear-sum-sumnorm), S = 20, 40, 80, 3 seeds, into results/forget/. full: the paper's grid, S =
20..600 / 20..200 step 20, 3 seeds, up to 100k steps (days on a CPU).

before (the default): the model that made the committed results/ (fwp's choices before it took
the authors' defaults; configs/associative_recall.py BEFORE, docs/departures.md). authors:
fwp's defaults, the authors' model, into <runs>-authors, its records in results/runs/
<name>-authors/ and its report (every authors-model run, budget and knee) in results/authors/.
"""

from configs.grids import Grid, Launch, args

S1_CHEAP = "softmax linear-sum dpfp1-sum dpfp2-sum dpfp3-sum favor64-sum favor128-sum".split()
S1_CURVES = S1_CHEAP + ["favor512-sum"]
S2_CURVES = ("dpfp1-sum linear-delta dpfp1-delta dpfp2-delta favor64-delta favor128-delta "
             "dpfp1-fwm tanh-fwm").split()


def get_grid(arg=None):
  picked = args(arg, {"grid": ("budget", "knee", "forget", "full"),
                      "variant": ("before", "authors")},
                {"grid": "budget", "variant": "before"})
  grid, authors = picked["grid"], picked["variant"] == "authors"
  suffix, tag = ("", "-authors") if authors else (":before", "")
  out = "results/authors" if authors else "results"

  def curves(setting, names, sweep, seeds, steps, *flags, workdir=None):
    return [Launch(f"configs/associative_recall.py:{name}{suffix}",
                   workdir or f"setting{setting}/{name}",
                   (f"--config.setting={setting}", f"--config.max_steps={steps}") + flags,
                   sweep=sweep, seeds=seeds)
            for name in names]

  previous, roots = None, ()
  if grid == "full":
    name = "reproduce"
    launches = (curves(1, S1_CURVES, "num_keys=20:600:20", (1, 2, 3), 100000)
                + curves(2, S2_CURVES, "num_keys=20:200:20", (1, 2, 3), 100000))
  elif grid == "knee":
    name, k, seeds = "knee", 20000, (1, 2, 3)
    # The setting-1 knees first (the knee table), cheapest first; the FWM curves last
    # (recurrent only, and slow to learn at any S).
    launches = (curves(1, ["linear-sum"], "num_keys=20:120:20", seeds, k)
                + curves(1, ["dpfp1-sum"], "num_keys=80:220:20", seeds, k)
                + curves(1, ["dpfp2-sum"], "num_keys=200:340:20", seeds, k)
                + curves(1, ["dpfp3-sum"], "num_keys=280:440:20", seeds, k)
                + curves(2, ["linear-delta"], "num_keys=40:120:20", seeds, k)
                + curves(1, ["softmax"], "num_keys=300:600:60", seeds, k)
                + curves(2, ["dpfp1-delta", "dpfp2-delta"], "num_keys=20:200:20", seeds, k)
                + curves(2, ["dpfp1-fwm", "tanh-fwm"], "num_keys=20,40", seeds, k))
    previous = None if authors else f"{out}/associative_recall.csv"
  elif grid == "forget":
    name, k, s, seeds = "forget", 20000, "num_keys=20,40,80", (1, 2, 3)
    out = f"{out}/forget"
    launches = (curves(2, ["linear-gated_sum", "linear-sum"], s, seeds, k)
                + curves(2, ["linear-sum"], s, seeds, k, "--config.model.normalization=sum",
                         "--config.curve=linear-sum-sumnorm",
                         workdir="setting2/linear-sum-sumnorm")
                + curves(2, ["linear-gated_delta", "linear-delta"], s, seeds, k))
  else:
    name = "reproduce"
    launches = (curves(1, S1_CURVES, "num_keys=20,60,100,200,300", (1,), 3000)
                + curves(1, S1_CHEAP, "num_keys=400,600", (1,), 3000)
                + curves(1, ["favor512-sum"], "num_keys=400,600", (1,), 1000)  # ~1 s/step, S=600
                + curves(2, S2_CURVES[:6], "num_keys=20,40,80,120,200", (1,), 3000)
                + curves(2, ["dpfp1-fwm", "tanh-fwm"], "num_keys=20,40", (1,), 3000)
                + curves(2, ["dpfp1-fwm"], "num_keys=80", (1,), 3000)
                + curves(2, ["dpfp1-fwm"], "num_keys=120,200", (1,), 1000)  # 0.7 steps/s
                + curves(2, ["tanh-fwm"], "num_keys=80,120,200", (1,), 1000)  # ~0.5 steps/s
                # Seeds 2 and 3.
                + curves(1, S1_CHEAP, "num_keys=20,60,100,200", (2, 3), 3000)
                + curves(1, ["softmax", "linear-sum", "dpfp1-sum", "dpfp2-sum"], "num_keys=300",
                         (2, 3), 3000)
                + curves(2, ["dpfp1-sum", "linear-delta", "dpfp1-delta", "dpfp2-delta"],
                         "num_keys=20,40,80,120,200", (2, 3), 3000)
                + curves(2, ["favor64-delta", "favor128-delta"], "num_keys=200", (2, 3), 3000))
  if authors and grid in ("budget", "knee"):
    # results/authors/ holds every authors-model run: the budget grid's and the knee grid's.
    roots = ("runs/reproduce-authors", "runs/knee-authors")
  return Grid(name=name + tag, runs=f"runs/{name}{tag}", launches=tuple(launches), out=out,
              records=f"results/runs/{name}{tag}", previous=previous, report_roots=roots)
