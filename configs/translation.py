"""Translation on a corpus this machine has: Debian's English→German message catalogs (issue 25;
the paper's Table 1 at a size a 2-core CPU trains).

  python launch.py --config=configs/translation.py:dpfp2 --workdir=runs/mt
  python -m experiments.translate --workdir=runs/mt --beam=4 < input.en

The argument after ':' is a Table 1 model name: standard (softmax attention everywhere), linear
(ELU+1), performer<m> (FAVOR+ with m random features), dpfp<ν>, or any fwp φ name (favor<m>,
tanh); every attention role (encoder self, decoder self, cross) then uses that φ with the sum
rule and attention normalisation, as the authors' φ replaced fairseq's one attention class. A
`-delta` suffix (e.g. linear-delta) puts the delta rule, sum-normalised, in the decoder's
self-attention (ours; the paper has no such row).

The corpus (experiments/tasks/translation/catalogs.py): the installed catalogs plus
libreoffice-l10n-de and gcc-12-locales fetched with `apt-get download` (no install), about
32k / 1.0k / 1.0k sentence pairs (train / valid / test), extracted into ~/.cache/fwp/translation
on first use. CPU model: 2 + 2 layers, d_model 128, 4 heads × 32, feed-forward 512, dropout 0.1,
a 4,000-piece joint BPE, batches of ~2,048 tokens, 3,000 steps (8 epochs), BLEU of 300 valid
pairs every 500 steps; fairseq's recipe otherwise (Adam β = (0.9, 0.98), learning rate 1e-3
with 500 warm-up steps then its inverse square root, label smoothing 0.1, beam 4, length
penalty 0.6).
configs/wmt14.py is the paper's big setting.
"""

import ml_collections

from configs import common, names

# Table 1's φ names (the paper's) -> fwp's.
_PAPER_PHI = {"linear": "linear", "performer": "favor", "dpfp": "dpfp"}
OPTIONS = ("delta",)


def base_config() -> ml_collections.ConfigDict:
  """Every key the translation family reads: the loop's (configs.common) and its own."""
  c = common.loop_config("translation")
  c.model_name = "linear"          # the name after ":" in --config (sets the model fields)
  c.corpus = "catalogs"            # catalogs (Debian's .mo files) | wmt14 (files in data_dir)
  c.catalog_packages = "libreoffice-l10n-de,gcc-12-locales"  # apt packages whose German
  #                                  catalogs join the installed ones ("" : installed only)
  c.data_dir = ""                  # wmt14: <prefix>.<lang> parallel text files
  c.cache_dir = ""                 # where the catalog corpus and the BPE/token cache go
  #                                  (default ~/.cache/fwp/translation; wmt14: data_dir/fwp-cache)
  c.source_lang = "en"             # the source files' suffix
  c.target_lang = "de"             # the target files' suffix
  c.train_prefix = "train"         # training files: <train_prefix>.<lang>
  c.valid_prefix = "valid"         # valid files (BLEU selection): <valid_prefix>.<lang>
  c.test_prefix = "test"           # test files (final numbers): <test_prefix>.<lang>
  c.vocab_size = 8000              # joint SentencePiece BPE pieces (pad, unk, EOS included)
  c.max_length = 64                # training pairs with a longer side (tokens + EOS) are left out
  c.bucket_width = 16              # pair lengths are rounded up to a multiple of this
  c.max_tokens = 4096              # padded tokens per training batch (0: batch_size rows)
  c.eval_max_tokens = 8192         # padded tokens per evaluation batch (0: batch_size rows)
  c.label_smoothing = 0.1          # fairseq's label-smoothed cross-entropy ε
  c.beam = 4                       # beam size of the BLEU evaluation and translate
  c.length_penalty = 0.6           # hypothesis score Σ log p / length^length_penalty
  c.max_len_a = 1.0                # decode at most max_len_a · source tokens + max_len_b
  c.max_len_b = 50                 # (fairseq's names)
  c.bleu_sentences = 0             # valid pairs whose BLEU each eval computes (0: all)
  c.final_sentences = 0            # valid and test pairs the final BLEU/chrF translate (0: all)
  c.optimizer = "adam"
  c.beta2 = 0.98
  c.learning_rate = 5e-4
  c.lr_schedule = "rsqrt"
  c.warmup_steps = 4000
  c.patience = 1_000_000           # no early stopping: train for max_steps, as fairseq
  c.model = ml_collections.ConfigDict()
  c.model.encoder_layers = 6       # encoder blocks
  c.model.decoder_layers = 6       # decoder blocks
  c.model.d_model = 512            # residual stream width
  c.model.num_heads = 8            # attention heads per role and layer
  c.model.d_head = 64              # key/value size per head
  c.model.d_ff = 2048              # feed-forward hidden size
  c.model.dropout = 0.1            # dropout rate (residual, feed-forward, embeddings)
  c.model.layer_norm_eps = 1e-5    # LayerNorm eps (torch's, as fairseq)
  c.model.encoder_rule = "sum"     # encoder self-attention: softmax | sum | delta
  c.model.decoder_rule = "sum"     # decoder self-attention: softmax | sum | delta
  c.model.cross_rule = "sum"       # cross-attention: softmax | sum | delta
  c.model.sum_normalization = "attention"  # the sum rule's normaliser: none | attention | sum |
  #                                  sum_attention
  c.model.delta_normalization = "sum"      # the delta rule's (sum: φ sum-normalised, as the LM)
  c.model.feature_map = "elu_plus_one"     # identity | elu_plus_one | tanh | dpfp | favor_plus
  c.model.nu = 2                   # DPFP's ν
  c.model.num_features = 64        # FAVOR+'s m random features
  c.model.form = "auto"            # auto | recurrent | parallel | chunked (causal roles)
  c.model.chunk_size = "64"        # an integer or "auto"
  c.model.attention_eps = 1e-6     # attention normaliser: z·φ(q) + eps
  return c


def model_names_help() -> str:
  return ("standard, linear, performer<m>, dpfp<nu>, or an fwp φ name (favor<m>, tanh), each "
          "optionally with -delta (the delta rule in the decoder's self-attention)")


def apply_name(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The attention fields of a Table 1 model name (see the module doc)."""
  base, _, option = name.partition("-")
  if option and option not in OPTIONS:
    raise ValueError(f"Unknown model {name!r}; valid choices: {model_names_help()}.")
  c.model_name = name
  if base == "standard":
    if option:
      raise ValueError(f"Model {name!r}: -delta replaces the decoder's fast weight rule; "
                       f"'standard' has softmax attention everywhere.")
    c.model.encoder_rule = c.model.decoder_rule = c.model.cross_rule = "softmax"
    return c
  phi = base
  for paper, ours in _PAPER_PHI.items():
    if base.startswith(paper) and (base[len(paper):].isdigit() or paper == base == "linear"):
      phi = ours + base[len(paper):]
  try:
    fields = names.model_fields(f"{phi}-sum", names.LM)
  except ValueError:
    raise ValueError(f"Unknown model {name!r}; valid choices: {model_names_help()}.") from None
  for field in ("feature_map", "nu", "num_features"):
    if field in fields:
      c.model[field] = fields[field]
  c.model.encoder_rule = c.model.decoder_rule = c.model.cross_rule = "sum"
  if phi == "tanh":                    # tanh features may be negative: no normaliser
    c.model.sum_normalization = "none"
  if option == "delta":
    c.model.decoder_rule = "delta"
  return c


def get_config(argument: str = "linear"):
  c = base_config()
  # Measured here (2-core CPU, one thread per run, another run beside it): linear 0.65 s a
  # step, performer128 0.90 s; 373 steps an epoch.
  c.vocab_size = 4000
  c.max_tokens = 2048
  c.max_steps = 3000
  c.eval_every = 500
  c.checkpoint_every = 500
  c.bleu_sentences = 300
  c.max_len_a = 1.2              # catalog messages: the German side is ~1.1× the English
  c.max_len_b = 10
  c.learning_rate = 1e-3
  c.warmup_steps = 500
  c.model.encoder_layers = 2
  c.model.decoder_layers = 2
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.d_head = 32
  c.model.d_ff = 512
  c.model.dropout = 0.1
  return apply_name(c, argument)
