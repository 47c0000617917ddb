"""Formal languages and state tracking (experiments/tasks/formal_languages): one run per task and
model, trained until both evaluation bins are at 100 % (the authors' stopping rule) or its budget.

  python launch.py --config=configs/formal_languages.py:parity-linear-delta --workdir=runs/parity

The argument after ':' is `<task>-<model>`: task ∈ {parity, aa-star, abab-star, counter-2,
counter-3, shuffle-2, dyck-1, reset_dyck (Irie, Csordás, Schmidhuber, EMNLP 2023, from
satwik77/Transformer-Formal-Languages), mod-2, mod-3, mod-5, s3, s5 (state tracking)}; model ∈
{lstm, elstm (the e-LSTM: fwp-formal-lang's model 10), srwm (the self-referential weight
matrix, fwp.srwm: model 12), transformer, linear-sum (the Linear Transformer, unnormalised), linear-delta (DeltaNet),
linear-rdn (Recurrent Delta: fwp-formal-lang's model 7, `rec-update-tanh`, is the Recurrent Delta
Net), any -neg (β ∈ (0, 2)), gated or delta_product<N> name of configs.names' algorithmic policy}.

The training recipe is fwp-formal-lang's main.py and README: Adam β = (0.9, 0.995), ε = 1e-9, no
dropout, no positional encoding (--remove_pos_enc), no clipping, one evaluation per epoch on Bin0
(`valid`, the training lengths) and Bin1 (`valid2`, longer strings), the checkpoint best by the
mean of their sequence accuracies kept (the authors' criterion), a stop when that mean reaches
100 %, 300 epochs at most, and the model blocks of the recurrent FWPs' algorithmic code (pre-LN
fast weight layers, feed-forward blocks, no final LayerNorm, untied output; the Transformer
baseline is torch's post-LN encoder with a final LayerNorm and, as theirs here, no positions).
Their per-cell sizes (the paper's appendix) are not in their repository; this file's model is
small enough for a CPU (2 layers, d_model 64, 4 heads × 16, feed-forward 256; LSTM 1 × 64,
embedding 32), batch 32, learning rate 1e-3 (docs/departures.md).
"""

import ml_collections

from configs import algorithmic, common, names
from experiments.tasks.formal_languages import data

TASKS = data.TASKS


def base_config() -> ml_collections.ConfigDict:
  """Every key the formal-languages family reads: the loop's (configs.common) and its own."""
  c = common.loop_config("formal_languages")
  c.model_name = "linear-delta"  # the name after "<task>-" in --config
  c.problem = "parity"           # experiments.tasks.formal_languages.data.TASKS
  c.train_size = 10_000          # training strings (satwik77's -training_size)
  c.valid_size = 2_000           # Bin0 strings drawn (their -test_size; a bin keeps each once
  #                                where the language has one string per length)
  c.valid2_size = 2_000          # Bin1 strings drawn (the long bin)
  c.test_size = 2_000            # a fresh draw of Bin1, scored once by the selected checkpoint
  c.data_seed = 1                # the data sets' seed; config.seed is the run's
  c.train_lengths = ""           # LOW:HIGH of training and Bin0 strings (counter-n: of n); "":
  #                                2:50, satwik77's
  c.long_lengths = ""            # LOW:HIGH of Bin1 and test strings; "": 51:100 (dyck-1,
  #                                shuffle-2: 52:100), as their generate_data.py
  c.select_by = "mean"           # mean (of the two bins' sequence accuracies: the authors') |
  #                                long (Bin1 alone)
  c.stop_accuracy = 100.0        # stop when the selection accuracy reaches this (percent)
  c.max_length = 0               # pad every example to this many tokens; 0: each split's longest
  c.eval_batch_size = 250        # strings per evaluation batch
  c.cache_dir = ""               # generated splits (.npz); default $XDG_CACHE_HOME/fwp/formal_languages
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.beta2 = 0.995
  c.adam_eps = 1e-9
  c.batch_size = 32
  steps_per_epoch = c.train_size // c.batch_size
  c.max_steps = 300 * steps_per_epoch
  c.eval_every = steps_per_epoch
  c.checkpoint_every = steps_per_epoch   # every eval saved: the best one is exactly the best
  c.patience = 1_000_000                 # no early stopping but the target: as the authors
  # ... and no stop on the loss: a Bin0 loss of exactly 0.0 (float32 saturates) is not Bin1
  # solved (linear-delta-neg on parity stopped so at 100 % / 95 %).
  c.stop_loss = -1.0
  c.model = algorithmic.base_config().model
  c.model.num_layers = 2
  c.model.d_model = 64
  c.model.embed_size = 32
  c.model.num_heads = 4
  c.model.d_head = 16
  c.model.d_ff = 256
  c.model.dropout = 0.0                  # their README's --dropout 0.0
  c.model.form = "recurrent"
  return c


def parse(argument: str) -> tuple[str, str]:
  """(task, model) of `<task>-<model>`; task names may hold '-' (counter-2), so the longest
  task name that the argument starts with is taken."""
  for task in sorted(TASKS, key=len, reverse=True):
    if argument.startswith(task + "-") and len(argument) > len(task) + 1:
      return task, argument[len(task) + 1:]
  raise ValueError(f"Expected <task>-<model> (e.g. parity-linear-delta), got {argument!r}; "
                   f"tasks: {', '.join(TASKS)}.")


def apply_name(c: ml_collections.ConfigDict, argument: str) -> ml_collections.ConfigDict:
  c.problem, model = parse(argument)
  if model == "elstm":               # fwp-formal-lang's model 10, QuasiLSTMModel: one layer
    c = algorithmic.apply_model(c, "lstm")
    c.model_name, c.model.cell = "elstm", "elstm"
    c.model.num_layers, c.model.d_model = 1, 64
    return c
  if model == "srwm":                # model 12: the self-referential weight matrix (fwp.srwm)
    c = algorithmic.apply_model(c, "linear-delta")
    c.model_name = "srwm"
    c.model.feature_map, c.model.normalization, c.model.recurrence = "identity", "none", "srwm"
    return c
  c = algorithmic.apply_model(c, model)
  if c.model.architecture == "lstm":
    c.model.num_layers, c.model.d_model = 1, 64
  if model.endswith(names.NEG):
    # Grazzi et al.'s negative eigenvalues: β ∈ (0, 2) with keys of unit L2 norm, so that
    # I − β k kᵀ's eigenvalue 1 − β spans (−1, 1) (a sum-normalised key has ‖k‖² ≤ 1 and
    # reaches −1 only when one-hot). The grid's `-l2` rows are the same keys with β ∈ (0, 1).
    c.model.qk_norm, c.model.normalization = "l2", "none"
  if c.model.update_rule in ("softmax", "additive"):
    # fwp-formal-lang's main.py builds TrafoModel without use_pos_enc, whose default is False:
    # their Transformer has no positions (the algorithmic code's keeps its sinusoid).
    c.model.positional = "none"
  return c


def get_config(argument: str = "parity-linear-delta") -> ml_collections.ConfigDict:
  return apply_name(base_config(), argument)
