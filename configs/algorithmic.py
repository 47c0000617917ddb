"""The recurrent FWPs' algorithmic tasks (Irie et al. 2021, IDSIA/recurrent-fwp `algorithmic/`),
at the authors' settings: one run per problem and model.

  python launch.py --config=configs/algorithmic.py:code5-linear-delta_rnn --workdir=runs/code5

The argument after ':' is `<problem>-<model>`: problem ∈ {code3, code5 (code execution with 3 or
5 variables, 100 statements), listops10, listops15 (sequential ListOps of that depth)}; model ∈
{lstm, transformer, linear-sum (the Linear Transformer: ELU+1, unnormalised, as the authors'
layer), linear-delta (Delta Net), linear-delta_rnn (Delta RNN), linear-rdn (Recurrent Delta
Net), linear-delta_lstm (fwp's Delta LSTM)} or any other LM-style name (configs.names, the
algorithmic policy). The authors' settings (algorithmic/README.md, main.py): 4 layers, hidden
256, 16 heads × 16, feed-forward 1024, dropout 0.1, no positional encoding (the Transformer
baseline keeps its sinusoid: their TrafoModel is built without the flag), pre-LN fast weight
blocks with no final LayerNorm, untied output layer; LSTM: embedding 128, 4 × 256; batch 64,
Adam 3e-4 with β = (0.9, 0.995), ε = 1e-9, 200 epochs (one eval per epoch), the best epoch by
valid accuracy (code execution: sequence-level, every position right) tested at the end.
Reported (from a summary of the paper): code5 — LSTM ≈ 93%, Delta RNN ≈ 85%, Delta Net ≈ 61%,
Linear Transformer fails; listops15 — RDN ≈ 79%, LSTM ≈ 24%. A GPU job (~31k steps).
"""

import ml_collections

from configs import common, names
from experiments.tasks.algorithmic import data

PROBLEMS = data.PROBLEMS


def base_config() -> ml_collections.ConfigDict:
  """Every key the algorithmic family reads: the loop's (configs.common) and its own."""
  c = common.loop_config("algorithmic")
  c.model_name = "linear-delta"  # the name after "<problem>-" in --config
  c.problem = "code5"            # code3 | code5 | listops10 | listops15
  c.code_length = 100            # statements per program (code execution)
  c.train_size = 10_000          # examples per split, as the authors
  c.valid_size = 1_000           # valid examples (selection)
  c.test_size = 1_000            # test examples (the selected checkpoint's final numbers)
  c.data_seed = 42               # the data sets' seed (the authors' 42); config.seed is the run's
  c.max_length = 0               # pad every example to this many tokens; 0: each split's longest
  c.select_by = "sequence"       # code execution's selection accuracy: sequence | print
  c.eval_batch_size = 64         # examples per evaluation batch
  c.cache_dir = ""               # generated splits (.npz); default $XDG_CACHE_HOME/fwp/algorithmic
  c.batch_size = 64
  c.optimizer = "adam"
  c.learning_rate = 3e-4
  c.beta2 = 0.995
  c.adam_eps = 1e-9
  steps_per_epoch = c.train_size // c.batch_size
  c.max_steps = 200 * steps_per_epoch
  c.eval_every = steps_per_epoch
  c.checkpoint_every = steps_per_epoch   # every eval saved: the best one is exactly the best
  c.patience = 1_000_000                 # no early stopping: 200 epochs, as the authors
  c.model = ml_collections.ConfigDict()
  c.model.architecture = "transformer"   # transformer (attention or fast weights) | lstm
  c.model.num_layers = 4
  c.model.d_model = 256                  # residual width (the LSTM's hidden size)
  c.model.embed_size = 128               # the LSTM's embedding size
  c.model.cell = "lstm"                  # architecture lstm: lstm | elstm (the e-LSTM, one layer)
  c.model.layer_norm_eps = 1e-5          # torch's nn.LayerNorm default, as the authors' layers
  c.model.num_heads = 16
  c.model.d_head = 16
  c.model.d_ff = 1024
  c.model.dropout = 0.1
  c.model.pre_norm = True                # the authors' fast weight blocks: x + f(LN x)
  c.model.final_norm = False             # ... and no LayerNorm after the last block
  c.model.positional = "none"            # --remove_pos_enc
  c.model.embedding = "plain"            # N(0, 1), no √d_model (PyTorch's nn.Embedding)
  c.model.embedding_dropout = False      # no dropout on the embeddings (the LSTM drops them)
  c.model.fast_weight_scale = False      # no 1/√d_head on the fast weight output
  c.model.dtype = "float32"
  c.model.feature_map = "elu_plus_one"
  c.model.nu = 1
  c.model.num_features = 16
  c.model.update_rule = "delta"
  c.model.normalization = "sum"
  c.model.form = "auto"
  c.model.chunk_size = "64"
  c.model.redraw_projection = True
  c.model.recurrence = "none"
  c.model.accumulate = "float32"
  # FAVOR+ is not in the authors' algorithmic code: fwp's defaults (feature_maps.favor_plus).
  c.model.favor_scaling = "none"         # FAVOR+ estimates exp(q·k); performer: x·d^(-1/4) first
  c.model.favor_eps = 0.0                # FAVOR+ offset on every feature
  c.model.favor_stabilize = False        # FAVOR+ query features divided by their largest
  c.model.sum_query_eps = 0.0            # φ(q) / (Σφ(q) + eps): 0, as their Delta Net layers
  common.add_layer_options(c.model)
  return c


def apply_name(c: ml_collections.ConfigDict, argument: str) -> ml_collections.ConfigDict:
  """`<problem>-<model>`: sets the problem and the model's fields."""
  problem, _, model = argument.partition("-")
  if not model:
    raise ValueError(f"Expected <problem>-<model> (e.g. code5-linear-delta; problems "
                     f"{', '.join(PROBLEMS)}), got {argument!r}.")
  data.parse(problem)
  c.problem = problem
  return apply_model(c, model)


def apply_model(c: ml_collections.ConfigDict, model: str) -> ml_collections.ConfigDict:
  """The model's fields for a name (lstm, or an LM-style name under the algorithmic policy)."""
  c.model_name = model
  if model == "lstm":
    c.model.architecture = "lstm"
    c.model.update_rule, c.model.normalization = "softmax", "none"
    return c
  try:
    c.model.update(names.model_fields(model, names.ALGORITHMIC))
  except ValueError as error:
    raise ValueError(str(error).replace("valid choices: ", "valid choices: lstm, ")) from None
  if c.model.update_rule in ("softmax", "additive"):
    # The authors' Transformer baseline: torch's post-LN TransformerEncoder (final LayerNorm,
    # sinusoidal positions).
    c.model.pre_norm, c.model.final_norm, c.model.positional = False, True, "sinusoidal"
  return c


def get_config(argument: str = "code5-linear-delta") -> ml_collections.ConfigDict:
  return apply_name(base_config(), argument)
