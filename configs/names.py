"""Model names, parsed once for every family: `<phi>-<rule>`, the 1991 FWP and the attention
baselines, and what each name sets in `config.model`.

A name is `<phi>-<rule>` with phi ∈ linear (ELU+1), tanh, dpfp<ν>, favor<m> and rule ∈ sum,
delta, fwm or a recurrent FWP on the delta rule (delta_rnn, rdn, delta_lstm); or `fwp91-sum`
(φ = identity, no normalisation); or a baseline: softmax attention (its name is the family's)
and `additive`. The rule fixes the normalisation as the paper does (sum → attention
normalisation, delta → sum normalisation, fwm → none), fwm runs recurrent only.

Where the families differ, their Policy says so, each difference named:
  retrieval  the paper's curves only: phi ∈ linear, dpfp1-3, favor64/128/512, tanh; tanh only
             with sum (attention-normalised, as the paper's Figure) and fwm, since tanh
             features are not positive and cannot be sum-normalised; softmax is `softmax`
  lm         any dpfp<ν>, favor<m>; tanh with every rule, unnormalised (its features may be
             negative, so no normaliser is safe); softmax is `transformer`
  algorithmic  the lm's names, but the sum rule unnormalised: the authors' Linear Transformer
             on the algorithmic tasks (recurrent-fwp `LinearAttentionlayer`) has no normaliser
tests/tasks/test_names.py lists every accepted retrieval name and a sample of the LM's with the
fields each sets, so that a change of meaning is a visible change of that test.
"""

from __future__ import annotations

import dataclasses

RULES = ("sum", "delta", "fwm")
RECURRENT = ("delta_rnn", "rdn", "delta_lstm")    # recurrent FWPs (Irie et al. 2021), on delta
NORMALIZATION = {"sum": "attention", "delta": "sum", "fwm": "none"}


@dataclasses.dataclass(frozen=True)
class Policy:
  softmax: str                           # the softmax baseline's name
  phis: tuple[str, ...] | None           # the φ names accepted; None: any of the patterns
  tanh_rules: tuple[str, ...]            # the rules tanh features may be used with
  tanh_normalization: str | None         # tanh's normaliser (None: the rule's own)
  sum_normalization: str = "attention"   # the sum rule's normaliser


RETRIEVAL = Policy(softmax="softmax",
                   phis=("linear", "dpfp1", "dpfp2", "dpfp3", "favor64", "favor128", "favor512",
                         "tanh"),
                   tanh_rules=("sum", "fwm"), tanh_normalization=None)
LM = Policy(softmax="transformer", phis=None, tanh_rules=RULES + RECURRENT,
            tanh_normalization="none")
ALGORITHMIC = Policy(softmax="transformer", phis=None, tanh_rules=RULES + RECURRENT,
                     tanh_normalization="none", sum_normalization="none")


def _phi_fields(phi: str) -> dict | None:
  """The feature-map fields of a φ name, or None if it is not one."""
  if phi == "linear":
    return {"feature_map": "elu_plus_one"}
  if phi == "tanh":
    return {"feature_map": "tanh"}
  if phi.startswith("dpfp") and phi[4:].isdigit() and int(phi[4:]) >= 1:
    return {"feature_map": "dpfp", "nu": int(phi[4:])}
  if phi.startswith("favor") and phi[5:].isdigit() and int(phi[5:]) >= 1:
    return {"feature_map": "favor_plus", "num_features": int(phi[5:])}
  return None


def describe(policy: Policy) -> str:
  """The accepted names, for an error message or a help line."""
  phis = ", ".join(policy.phis) if policy.phis else "linear, tanh, dpfp<nu>, favor<m>"
  tanh = ("" if policy.tanh_rules == RULES + RECURRENT else
          f" (tanh: {' or '.join(policy.tanh_rules)} only; tanh features are not positive, so "
          f"they cannot be sum-normalised)")
  return (f"{policy.softmax}, additive (Bahdanau attention), fwp91-sum (the 1991 fast weight "
          f"programmer: φ = identity, no normalisation), or <phi>-<rule> with phi in {phis} and "
          f"rule in {', '.join(RULES + RECURRENT)}{tanh}")


def model_fields(name: str, policy: Policy) -> dict:
  """{config.model field: value} for a model name under `policy`; ValueError naming the valid
  choices otherwise."""
  if name == policy.softmax:
    return {"update_rule": "softmax", "normalization": "none"}
  if name == "additive":
    return {"update_rule": "additive", "normalization": "none"}
  if name == "fwp91-sum":
    return {"feature_map": "identity", "update_rule": "sum", "normalization": "none"}
  phi, _, rule = name.partition("-")
  fields = _phi_fields(phi) if policy.phis is None or phi in policy.phis else None
  if fields is None or rule not in RULES + RECURRENT or (
      phi == "tanh" and rule not in policy.tanh_rules):
    raise ValueError(f"Unknown model {name!r}; valid choices: {describe(policy)}.")
  if rule in RECURRENT:
    rule, fields["recurrence"] = "delta", rule
  fields["update_rule"] = rule
  own = dict(NORMALIZATION, sum=policy.sum_normalization)
  fields["normalization"] = (policy.tanh_normalization if phi == "tanh" and
                             policy.tanh_normalization else own[rule])
  if rule == "fwm":
    fields["form"] = "recurrent"
  return fields


def names(policy: Policy) -> tuple[str, ...]:
  """Every accepted name of a policy with a closed list of φ."""
  if policy.phis is None:
    raise ValueError("This policy accepts any dpfp<nu> and favor<m>: its names are not a list.")
  return (policy.softmax, "additive", "fwp91-sum") + tuple(
      f"{phi}-{rule}" for phi in policy.phis for rule in RULES + RECURRENT
      if phi != "tanh" or rule in policy.tanh_rules)
