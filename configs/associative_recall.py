"""Associative retrieval (Schlag, Irie, Schmidhuber 2021, Section 6.1), one paper curve per run.

  python launch.py --config=configs/associative_recall.py:dpfp2-sum --config.num_keys=100 \
      --workdir=runs/dpfp2-sum-S100

The argument after ':' names a paper curve: `softmax`, `additive` (Bahdanau et al. 2014's
attention, wᵀ tanh(W_q q + W_k k)), `fwp91-sum` (the fast weight programmer of
1991 = the unnormalised linear Transformer: φ = identity, no normalisation), or `<phi>-<rule>` with
phi ∈ {linear, dpfp1, dpfp2, dpfp3, favor64, favor128, favor512, tanh} and rule ∈ {sum, delta, fwm}
or a recurrent FWP built on the delta rule (Irie et al. 2021): delta_rnn, rdn, delta_lstm.
The rule fixes the normalisation as the paper does: sum → attention normalisation; delta → sum
normalisation; fwm → none, with a layer-normalised read-out. Sum-rule curves default to setting 1
(capacity), delta and FWM to setting 2. tanh-fwm uses learning rate 1e-4 and batch 128, as the
authors did. Expected (the paper): dpfp2-sum reaches ~0 loss up to S ≈ 240 in setting 1.

The model is the authors' (synthetic/linearAttention.py) by default, each of fwp's other choices
a field below (docs/departures.md); `:<curve>:before` selects the model fwp had before it took the
authors' defaults, which made the committed results/associative_recall.*.
"""

import ml_collections

from configs import common, names

PHIS = names.RETRIEVAL.phis
RULES, RECURRENT = names.RULES, names.RECURRENT
CURVES = names.names(names.RETRIEVAL)


def base_config() -> ml_collections.ConfigDict:
  """Every key the retrieval experiments read: the loop's (configs.common) and its own."""
  c = common.loop_config("associative_recall")
  c.curve = "linear-sum"         # the paper curve, the name after ":" in --config
  c.setting = 1                  # 1: S keys without replacement; 2: 2S with replacement
  c.num_keys = 20                # S
  c.eval_sequences = 20          # sequences in the fixed evaluation set
  c.eval_max_queries = 200       # queries scored per evaluation sequence at most
  c.eval_full_length = False     # departure from the authors: evaluate setting 2 on length 2S
  c.stop_loss = 0.001
  c.model = ml_collections.ConfigDict()
  c.model.d = 64                         # key, value and embedding size
  c.model.feature_map = "elu_plus_one"   # identity | elu_plus_one | tanh | dpfp | favor_plus
  c.model.nu = 1
  c.model.num_features = 64
  c.model.update_rule = "sum"            # sum | delta | fwm | softmax | additive
  c.model.normalization = "attention"    # none | attention | sum
  c.model.form = "auto"                  # auto | recurrent | parallel | chunked
  c.model.chunk_size = "64"              # an integer or "auto" (a string, so a flag can say auto)
  c.model.redraw_projection = True       # FAVOR+: a fresh projection every forward pass
  c.model.recurrence = "none"            # none | delta_rnn | rdn | delta_lstm (fwp.rfwp)
  c.model.gate = "head"                  # gated_sum, gated_delta: head (one α per memory) | channel
  # The authors' model (synthetic/linearAttention.py), each difference fwp offers an option:
  c.model.qk_bias = True                 # W_k, W_q have biases (nn.Linear); False: fwp before
  c.model.favor_scaling = "none"         # FAVOR+ estimates exp(q·k); performer: x·d^(-1/4) first
  c.model.favor_eps = 0.0                # FAVOR+ offset on every feature (lmtool's kernel_eps)
  c.model.favor_stabilize = False        # FAVOR+ query features divided by their largest
  c.model.sum_query_eps = 1e-6           # delta: φ(q) / (Σφ(q) + eps), as their query
  c.model.fwm_normalize_first = False    # fwm: the first write is not normalised, as theirs
  c.model.readout_affine = False         # fwm read-out LayerNorm with a trainable scale, bias
  c.model.readout_eps = 1e-5             # fwm read-out LayerNorm eps (PyTorch's)
  c.model.beta_init = "torch"            # W_β: torch U(±1/√fan_in) | flax (lecun, zero bias)
  return c


# The model fwp computed before it took the authors' defaults (2026-12-02), which made the
# committed results/associative_recall.*: `configs/associative_recall.py:<curve>:before`.
# (experiments.tasks.associative_recall.ADDED_FIELDS holds the same values: a test pins it.)
BEFORE = {"qk_bias": False, "favor_scaling": "performer", "favor_eps": 0.0,
          "favor_stabilize": True, "sum_query_eps": 0.0, "fwm_normalize_first": True,
          "readout_affine": True, "readout_eps": 1e-6, "beta_init": "flax"}
VARIANTS = ("authors", "before")


def apply_curve(c: ml_collections.ConfigDict, curve: str) -> ml_collections.ConfigDict:
  """Sets the model fields of a paper curve (configs.names, the retrieval policy), then its
  setting (sum rule: 1, the others: 2) and the authors' tanh-FWM learning rate and batch."""
  try:
    fields = names.model_fields(curve, names.RETRIEVAL)
  except ValueError as error:
    raise ValueError(str(error).replace("Unknown model", "Unknown curve")) from None
  c.curve = curve
  c.model.update(fields)
  if curve not in (names.RETRIEVAL.softmax, "additive", "fwp91-sum"):
    c.setting = 1 if fields["update_rule"] == "sum" else 2
  if curve == "tanh-fwm":
    c.learning_rate, c.batch_size = 1e-4, 128
  return c


def get_config(argument: str = "linear-sum") -> ml_collections.ConfigDict:
  """`<curve>` (the authors' model) or `<curve>:before` (the model of fwp's committed results,
  BEFORE; docs/departures.md)."""
  curve, _, variant = argument.partition(":")
  if variant and variant not in VARIANTS:
    raise ValueError(f"Unknown model variant {variant!r} in {argument!r}; valid choices: "
                     f"{', '.join(VARIANTS)} (as <curve>:<variant>; none: authors).")
  c = apply_curve(base_config(), curve)
  if variant == "before":
    c.model.update(BEFORE)
  return c
