"""The fields every run reads, whatever its task: declared once, extended by each config file."""

import ml_collections

from configs import names


def loop_config(task: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = task                  # experiments.tasks.TASKS
  c.seed = 1                     # parameters, data and dropout are functions of it
  c.batch_size = 32              # sequences per step (the global batch over all devices)
  c.optimizer = "adam"           # adam | adamw (experiments.optim)
  c.learning_rate = 1e-3         # the optimizer's (peak) learning rate
  c.lr_schedule = "constant"     # constant | cosine (to 0 at max_steps) | rsqrt (lr·√(warmup/step))
  c.beta1 = 0.9                  # Adam's first-moment decay
  c.beta2 = 0.999                # Adam's second-moment decay
  c.adam_eps = 1e-8              # Adam's ε (optax's and PyTorch's default)
  c.weight_decay = 0.0           # adamw's decoupled weight decay
  c.warmup_steps = 0             # linear warm-up from 0
  c.grad_clip = 0.0              # global-norm clipping; 0 = none
  c.max_steps = 100_000          # training steps at most (a cosine schedule ends here)
  c.eval_every = 100             # steps between evaluations (a line in metrics.jsonl)
  c.stop_loss = 0.0              # stop when the eval loss is at or below this
  c.patience = 10                # stop after more than `patience` evals without a new best
  c.checkpoint_every = 1000      # steps between checkpoints (also at every stop)
  c.keep_checkpoints = 2         # latest checkpoints kept (the best one is kept besides)
  c.mesh_shape = (-1,)           # data-parallel devices (batch sharded, parameters replicated)
  c.tensorboard = True           # also write TensorBoard event files to WORKDIR/tensorboard/
  c.host_memory = "keep"         # keep | system: XLA:CPU's large temporaries kept between steps (experiments/hostmem.py)
  c.steps_per_call = 1           # train steps per compiled call (a scan; associative_recall only): dispatch-bound small steps
  c.profile_steps = ""           # "START:STOP": trace those steps into WORKDIR/profile/
  return c


# ---------------------------------------------------------------------------------------------
# Language models: the fields of experiments.tasks.language_model, and the paper's model names.

def lm_config() -> ml_collections.ConfigDict:
  c = loop_config("language_model")
  c.model_name = "linear-delta"  # the name after ":" in --config (sets the model fields)
  c.corpus = "pydoc"             # pydoc | wikitext103
  c.level = "byte"               # pydoc: byte | char; wikitext103: word
  c.data_dir = ""                # wikitext103: the directory with wiki.{train,valid,test}.tokens
  c.cache_dir = ""               # wikitext103 token cache (default: data_dir/fwp-cache, else
  #                                $XDG_CACHE_HOME/fwp or ~/.cache/fwp)
  c.context = 128                # training and evaluation context (tgt_len)
  c.carry_state = False          # fast weights carried from segment to segment of each stream,
  #                                in training and evaluation: no context window (the paper's
  #                                Table 4; needs model.positional=none)
  c.eval_batch_size = 16         # windows per evaluation batch
  c.sliding_stride = 1           # final sliding-window evaluation stride (1 = the authors'; 0 off)
  c.learning_rate = 2.5e-4
  c.lr_schedule = "cosine"
  c.warmup_steps = 2000
  c.grad_clip = 0.25
  c.patience = 1_000_000         # no early stopping: train for max_steps, as the authors
  c.model = ml_collections.ConfigDict()
  c.model.num_layers = 4                 # Transformer blocks
  c.model.d_model = 128                  # residual stream width
  c.model.num_heads = 4                  # attention heads (fast weight memories) per layer
  c.model.d_head = 32                    # key/value size per head
  c.model.d_ff = 512                     # feed-forward hidden size
  c.model.dropout = 0.1                  # dropout rate (residual, feed-forward, embeddings)
  c.model.pre_norm = False               # post-LN, as the authors
  c.model.pre_norm_residual = "input"    # pre-LN attention residual onto: input | normed (theirs)
  c.model.layer_norm_eps = 1e-6          # LayerNorm eps (flax's; the authors': torch's 1e-5)
  c.model.positional = "sinusoidal"      # sinusoidal | none | relative (Transformer-XL's)
  c.model.mem_len = 0                    # Transformer-XL: previous hidden states per layer
  c.model.shared_distance_dropout = False  # Transformer-XL: one dropout mask on the distances for every layer (theirs) or one per layer
  c.model.eval_clamp_len = -1            # Transformer-XL: the clamp in evaluation only (the authors': 384); -1: clamp_len's
  c.model.clamp_len = 0                  # Transformer-XL: distances above it share its embedding (the authors' eval: 384; 0: none)
  c.model.adaptive_cutoffs = ()          # the authors' adaptive softmax: (20000, 40000, 200000)
  c.model.dtype = "float32"              # matmul dtype: float32 | bfloat16 (GPU/TPU)
  c.model.feature_map = "elu_plus_one"   # identity | elu_plus_one | tanh | dpfp | favor_plus
  c.model.nu = 2                         # the authors' dpfp_n_roll default
  c.model.num_features = 16              # the authors' performer_proj_dim default
  c.model.update_rule = "delta"          # sum | delta | fwm | softmax | additive
  # The authors' LM layers (IDSIA/lmtool-fwp): the delta rule sum-normalises φ(q), φ(k) (their
  # --skip_attn_normalization variant: under their default flags it also divides by z·φ(q),
  # docs/departures.md); the sum rule divides by the attention normaliser z·φ(q).
  c.model.normalization = "sum"          # none | attention | sum | sum_attention (both)
  c.model.attention_eps = 1e-6           # attention normaliser: z·φ(q) + eps (theirs: 1e-5)
  c.model.sum_scale = "output"           # sum rule's 1/√d_head: output | scores.
  #                                        output: s·y / (z·φq + eps), their attn_type 34/35 and
  #                                        every delta layer; scores: inside the normalised
  #                                        scores, where it cancels but for the eps (their
  #                                        attn_type 4/5/6, the only DPFP sum layer they have)
  c.model.final_dropout = False          # dropout on the last hidden state (theirs: yes)
  c.model.init = "flax"                  # flax | authors (N(0, 0.02) kernels, LN scale N(1, 0.02))
  c.model.form = "auto"                  # auto | recurrent | parallel | chunked
  c.model.chunk_size = "64"              # an integer or "auto" (a string, so a flag can say auto)
  c.model.redraw_projection = True       # FAVOR+: a fresh projection every training step
  c.model.eval_projection = "init"       # FAVOR+ in evaluation: init | last_draw.
  #                                        init: the draw made at initialisation; last_draw:
  #                                        the last training step's, as the authors' layers
  #                                        keep it
  c.model.recurrence = "none"            # none | delta_rnn | rdn | delta_lstm (fwp.rfwp)
  # FAVOR+ as lmtool-fwp's `prime`: an estimate of exp(q·k) (performer: x·d^(-1/4) first),
  # kernel_eps 1e-4 on every feature, no query stabiliser.
  c.model.favor_scaling = "none"         # none (the authors') | performer (x·d^(-1/4) first)
  c.model.favor_eps = 1e-4               # FAVOR+ offset on every feature (lmtool's kernel_eps)
  c.model.favor_stabilize = False        # FAVOR+ query features divided by their largest
  c.model.favor_projection = "orthogonal"  # FAVOR+ draw: orthogonal (N(0, I) rows) | lmtool
  c.model.sum_query_eps = 0.0            # sum normalisation: φ(q) / (Σφ(q) + eps)
  # Under dtype=bfloat16, what the fast weights are summed in: float32 (default) | input (pure
  # bfloat16; larger errors on long sequences, see results/precision.md)
  c.model.accumulate = "float32"         # under bfloat16, fast weights sum in: float32 | input
  add_layer_options(c.model)
  return c


def add_layer_options(m: ml_collections.ConfigDict) -> None:
  """The modern rules' and FLA's layer fields (fwp.layers.FastWeightConfig), their defaults
  the paper's layer; a model name sets them (configs.names)."""
  m.gate = "head"                  # gated rules' forget gate: head | channel (KDA) | none
  #                                  (delta_product only)
  m.beta_max = 1.0                 # β = beta_max·σ(W_β x); 2: negative eigenvalues (-neg)
  m.num_writes = 1                 # delta_product: delta writes per token (N)
  m.short_conv = 0                 # width of a SiLU depthwise causal conv on q, k, v; 0: none
  m.qk_norm = "none"               # none | l2 (φ(q), φ(k) L2-normalised, q·d^-1/2; needs
  #                                  normalization=none)
  m.output_norm = "none"           # none | rmsnorm (per head, over d_head)
  m.output_gate = False            # read-out × SiLU(W_g x)


def apply_authors_lm_details(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The authors' LM layers (IDSIA/lmtool-fwp) in the details where fwp's CPU configs keep
  fwp's own values (docs/departures.md, the LM table): configs/wikitext103.py takes them all,
  configs/language_model.py with `:authors`. Call after the model fields are set."""
  c.model.pre_norm_residual = "normed"   # under --pre_lnorm: residual onto LN(x), no final LN
  c.model.layer_norm_eps = 1e-5          # torch's LayerNorm eps
  c.model.attention_eps = 1e-5           # their layers' normaliser eps
  # Their layer for each name (docs/departures.md): DPFP with the sum rule exists only as
  # attn_type 6, whose 1/√d_head sits inside the normalised scores.
  if c.model.feature_map == "dpfp" and c.model.update_rule == "sum":
    c.model.sum_scale = "scores"
  c.model.favor_projection = "lmtool"    # their draw_orthogonal_random_matrix(d_head, m)
  c.model.eval_projection = "last_draw"  # their proj_matrix: the last training draw
  c.model.final_dropout = True           # their self.drop(core_out) after the last layer
  c.model.init = "authors"               # their weights_init: N(0, 0.02), LayerNorm N(1, 0.02)
  return c


def _txl_fields(model: str) -> dict:
  """`txl` (relative positions, no memory) or `txl-mem<N>` (a memory of N hidden states per
  layer, carried across segments in training and evaluation, as Transformer-XL trains)."""
  mem = model[len("txl-mem"):] if model.startswith("txl-mem") else None
  if model != "txl" and not (mem and mem.isdigit() and int(mem) >= 1):
    raise ValueError(f"Unknown Transformer-XL name {model!r}: txl or txl-mem<N>, N >= 1.")
  fields = {"update_rule": "softmax", "normalization": "none", "positional": "relative",
            "mem_len": int(mem) if mem else 0}
  return dict(fields, carry_state=bool(mem))


# Suffixes of an LM name for the rows of the paper's Tables 3 and 4 (e.g. linear-delta-nopos,
# linear-delta-attn-nopos, linear-delta-carry), applied in this order after the model's fields.
LM_OPTIONS = {
    "attn": "the delta rule's sum-normalised φ also divided by the attention normaliser "
            "(normalization=sum_attention; Table 3's 'attention normalisation: yes')",
    "nopos": "no positional encoding (model.positional=none, the authors' --no_pos)",
    "carry": "fast weights carried across segments in training and evaluation, no context "
             "window (carry_state=True; implies nopos; Table 4)",
}


def lm_model_names_help() -> str:
  return (names.describe(names.LM) +
          " (e.g. linear-delta, dpfp2-sum, favor16-delta, linear-delta_rnn), then any of "
          + ", ".join(f"-{o}" for o in LM_OPTIONS) + " (e.g. linear-delta-carry); or "
          "Transformer-XL: txl (relative positions, no memory), txl-mem<N> (a memory of N "
          "hidden states per layer, carried)")


def apply_lm_model(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Sets the attention fields for a model name of the paper's LM tables (configs.names, the
  LM policy), then those of its LM_OPTIONS suffixes."""
  parts = name.split("-")
  options = []
  while parts and parts[-1] in LM_OPTIONS:
    options.insert(0, parts.pop())
  model = "-".join(parts)
  try:
    fields = _txl_fields(model) if parts[0] == "txl" else names.model_fields(model, names.LM)
  except ValueError:
    raise ValueError(f"Unknown model {name!r}; valid choices: {lm_model_names_help()}.") from None
  if len(set(options)) < len(options):
    raise ValueError(f"Model {name!r} repeats an option; each of "
                     f"{', '.join(LM_OPTIONS)} at most once.")
  c.model_name = name
  c.carry_state = fields.pop("carry_state", c.carry_state)
  c.model.update(fields)
  for option in options:
    if option == "attn":
      if c.model.normalization != "sum":
        raise ValueError(f"Model {name!r}: -attn adds the attention normaliser to the delta "
                         f"rule's sum normalisation; {model!r} has normalization "
                         f"{c.model.normalization!r} (the sum rule is attention-normalised "
                         f"already).")
      c.model.normalization = "sum_attention"
    elif option == "nopos":
      c.model.positional = "none"
    elif option == "carry":
      if c.model.positional == "relative":
        raise ValueError(f"Model {name!r}: Transformer-XL carries its memory already "
                         f"(txl-mem<N>); -carry is for fast weight models.")
      if c.model.update_rule in ("softmax", "additive"):
        raise ValueError(f"Model {name!r}: -carry carries a fast weight memory across "
                         f"segments; {model!r} has none (its key/value cache grows with the "
                         f"text).")
      c.carry_state = True
      c.model.positional = "none"
  return c


def field_meanings(task: str = "") -> dict[str, str]:
  """{field path: meaning}, read from the comments beside the fields in the base configs (this
  file, configs/associative_recall.py, configs/algorithmic.py, configs/translation.py and
  configs/formal_languages.py;
  `task`'s own file first, so that a field two families declare has its family's meaning), so
  that `launch.py
  --show_config` documents every field from the one place each is declared. A comment line that
  starts with '#' and a run of spaces continues the comment of the field above it."""
  import os
  import re
  here = os.path.dirname(os.path.abspath(__file__))
  meanings, last = {}, None
  files = ["common.py", "associative_recall.py", "algorithmic.py", "translation.py",
           "formal_languages.py"]
  own = {"associative_recall": "associative_recall.py", "algorithmic": "algorithmic.py",
         "translation": "translation.py", "formal_languages": "formal_languages.py"}
  if task in own:
    files.remove(own[task])
    files.insert(0, own[task])
  for name in files:
    with open(os.path.join(here, name), encoding="utf-8") as f:
      for line in f:
        # `m.` is add_layer_options' config.model.
        field = re.match(r"\s*(c|m)\.([\w.]+)\s*=[^#]*#\s*(.*)$", line)
        more = re.match(r"\s*#\s{8,}(.*)$", line)
        path = field and ("model." if field.group(1) == "m" else "") + field.group(2)
        if field and path not in meanings:
          last = path
          meanings[last] = field.group(3).strip()
        elif more and last:
          meanings[last] += " " + more.group(1).strip()
        else:
          last = None
  return meanings
