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
"""

import ml_collections

from configs import common

PHIS = ("linear", "dpfp1", "dpfp2", "dpfp3", "favor64", "favor128", "favor512", "tanh")
RULES = ("sum", "delta", "fwm")
RECURRENT = ("delta_rnn", "rdn", "delta_lstm")   # recurrent FWPs (Irie et al. 2021), on delta
CURVES = ("softmax", "additive", "fwp91-sum") + tuple(
    f"{phi}-{rule}" for phi in PHIS for rule in RULES + RECURRENT
    if not (phi == "tanh" and rule != "fwm" and rule != "sum"))


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
  return c


def apply_curve(c: ml_collections.ConfigDict, curve: str) -> ml_collections.ConfigDict:
  if curve not in CURVES:
    raise ValueError(f"Unknown curve {curve!r}; valid choices: softmax, additive, fwp91-sum or "
                     f"<phi>-<rule> with phi in {', '.join(PHIS)} and rule in "
                     f"{', '.join(RULES + RECURRENT)} (tanh: sum or fwm only; tanh features are "
                     f"not positive, so they cannot be sum-normalised).")
  c.curve = curve
  if curve in ("softmax", "additive"):
    c.model.update_rule = curve
    c.model.normalization = "none"
    return c
  if curve == "fwp91-sum":
    c.model.feature_map, c.model.update_rule, c.model.normalization = "identity", "sum", "none"
    return c
  phi, rule = curve.split("-")
  if phi == "linear":
    c.model.feature_map = "elu_plus_one"
  elif phi == "tanh":
    c.model.feature_map = "tanh"
  elif phi.startswith("dpfp"):
    c.model.feature_map, c.model.nu = "dpfp", int(phi[4:])
  else:
    c.model.feature_map, c.model.num_features = "favor_plus", int(phi[5:])
  if rule in RECURRENT:
    rule, c.model.recurrence = "delta", rule
  c.model.update_rule = rule
  c.model.normalization = {"sum": "attention", "delta": "sum", "fwm": "none"}[rule]
  if rule == "fwm":
    c.model.form = "recurrent"
  c.setting = 1 if rule == "sum" else 2
  if curve == "tanh-fwm":
    c.learning_rate, c.batch_size = 1e-4, 128
  return c


def get_config(curve: str = "linear-sum") -> ml_collections.ConfigDict:
  return apply_curve(base_config(), curve)
