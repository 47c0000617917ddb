"""The CPU grid behind results/formal_languages.* (docs/formal_languages.md): configs/
formal_languages.py at a CPU budget of 5 epochs (1,560 steps of 32 strings; the authors allow
300 epochs, and a run stops earlier when both bins reach 100 %), 3 seeds, then the report.

  python -m experiments.grid --grid=configs/grids/formal_languages.py
  python -m experiments.grid --grid=configs/grids/formal_languages.py:languages --parallel=2
  python -m experiments.grid --grid=configs/grids/formal_languages.py:tracking --only=s3

`languages`: the EMNLP 2023 table's eight languages × LSTM, Transformer, Linear Transformer,
DeltaNet, Recurrent Delta (linear-rdn), e-LSTM and SRWM. `tracking`: negative eigenvalues on
parity and counting (parity, mod-2, mod-3: linear-delta-neg, β ∈ (0, 2) with unit-norm keys,
against linear-delta-l2, the same keys with β ∈ (0, 1); linear-delta and the LSTM beside them on
mod-m) and DeltaProduct on the S3 / S5 word problems (delta_product N = 1, 2, 3, each with and
without negative eigenvalues, and the LSTM).
"""

from configs.grids import Grid, Launch, args

LANGUAGES = ("parity", "aa-star", "abab-star", "counter-2", "counter-3", "shuffle-2", "dyck-1",
             "reset_dyck")
PAPER_MODELS = ("lstm", "transformer", "linear-sum", "linear-delta", "linear-rdn", "elstm",
                "srwm")
# linear-delta-l2: the keys of -neg (unit L2 norm, no sum normalisation) with β ∈ (0, 1), so
# that -neg against it changes β's range alone.
L2 = "linear-delta-l2"
NEG = (L2, "linear-delta-neg")
# DeltaProduct with N = 2, 3 writes a token, and each (N = 1 too) with negative eigenvalues: the
# combination Siems et al. report on S3 / S5.
PRODUCTS = ("linear-delta_product2", "linear-delta_product3", "linear-delta-neg",
            "linear-delta_product2-neg", "linear-delta_product3-neg")
TRACKING = (("parity", NEG), ("mod-2", ("lstm", "linear-delta") + NEG),
            ("mod-3", ("lstm", "linear-delta") + NEG),
            ("s3", ("lstm", "linear-delta") + PRODUCTS),
            ("s5", ("lstm", "linear-delta") + PRODUCTS))
EPOCHS = 5
SEEDS = (1, 2, 3)


def points(part: str) -> list[tuple[str, str]]:
  out = []
  if part in ("all", "languages"):
    out += [(t, m) for t in LANGUAGES for m in PAPER_MODELS]
  if part in ("all", "tracking"):
    out += [(t, m) for t, models in TRACKING for m in models]
  return out


def get_grid(arg=None):
  part = args(arg, {"part": ("all", "languages", "tracking")}, {"part": "all"})["part"]
  flags = (f"--config.max_steps={EPOCHS * (10_000 // 32)}",)
  return Grid(name="formal_languages", runs="runs/formal_languages", out="results",
              records="results/runs/formal_languages",
              # seed-major: every cell's first seed before any cell's second
              launches=tuple(_launch(t, m, seed, flags) for seed in SEEDS
                             for t, m in points(part)))


def _launch(task, model, seed, flags):
  if model == L2:
    return Launch(f"configs/formal_languages.py:{task}-linear-delta", f"{task}-{model}",
                  flags + ("--config.model_name=linear-delta-l2", "--config.model.qk_norm=l2",
                           "--config.model.normalization=none"), seeds=(seed,), seed_dirs=True)
  return Launch(f"configs/formal_languages.py:{task}-{model}", f"{task}-{model}", flags,
                seeds=(seed,), seed_dirs=True)
