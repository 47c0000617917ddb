"""Language modelling on a corpus every machine has (CPython's pydoc topics, bytes), CPU-sized.

  python launch.py --config=configs/language_model.py:linear-delta --workdir=runs/lm
  python -m experiments.generate --workdir=runs/lm --prompt="The while statement"

The argument after ':' names the model as in the paper's LM tables: `transformer` (softmax
attention), or <phi>-<rule> with phi ∈ {linear, dpfp<ν>, favor<m>, tanh} and rule ∈ {sum, delta,
fwm} or a recurrent FWP (delta_rnn, rdn, delta_lstm); as the authors' LM layers, the delta rule
sum-normalises φ(q) and φ(k), the sum rule divides by z·φ(q). Size: 4 layers,
d_model 128, 4 heads × 32, FFN 512, context 128 bytes, batch 32, 2,000 steps of Adam 1e-3 (200
warm-up steps, cosine to 0, clipping 0.25) — about 20-40 minutes on a 2-core CPU. Expected: valid
bits per byte falls from 8 to about 2 within the budget (results/language_model.md).

`:<model>:authors` (e.g. `configs/language_model.py:linear-delta:authors`) runs the same model
with every detail of the authors' LM layers that these CPU configs otherwise keep as fwp's
(torch's LayerNorm eps, their normaliser eps 1e-5, dropout on the last hidden state, their
N(0, 0.02) init, attn_type 6's scaling for DPFP sum, their FAVOR+ draw; configs.common.
apply_authors_lm_details, docs/departures.md): `python -m experiments.grid --grid=configs/grids/lm.py:authors`.
"""

from configs import common


VARIANTS = ("fwp", "authors")


def get_config(model: str = "linear-delta"):
  model, _, variant = model.partition(":")
  if variant and variant not in VARIANTS:
    raise ValueError(f"Unknown variant {variant!r} in {model}:{variant}; valid choices: "
                     f"{', '.join(VARIANTS)} (default fwp).")
  c = common.lm_config()
  c.corpus, c.level = "pydoc", "byte"
  c.context = 128
  c.batch_size = 32
  c.learning_rate = 1e-3
  c.warmup_steps = 200
  c.max_steps = 2000
  c.eval_every = 250
  c.checkpoint_every = 250
  c.sliding_stride = 16          # stride 1 is the authors'; 16 keeps the final eval to a minute
  c = common.apply_lm_model(c, model)
  if variant == "authors":
    common.apply_authors_lm_details(c)
  return c
