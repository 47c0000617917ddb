"""Model names, parsed once for every family: `<phi>-<rule>`, the 1991 FWP and the attention
baselines, and what each name sets in `config.model`.

A name is `<phi>-<rule>` with phi ∈ linear (ELU+1), tanh, dpfp<ν>, favor<m> and rule ∈ sum,
delta, fwm or a recurrent FWP on the delta rule (delta_rnn, rdn, delta_lstm); or `fwp91-sum`
(φ = identity, no normalisation); or a baseline: softmax attention (its name is the family's)
and `additive`. The rule fixes the normalisation as the paper does (sum → attention
normalisation, delta → sum normalisation, fwm → none), fwm runs recurrent only.

The modern rules (fwp.ops, docs/rules.md), where a policy takes them: gated_sum (a forget gate
per head: RetNet / Mamba-2), gated_delta (Gated DeltaNet), kda (the gated delta rule with a
gate per key channel: Kimi Linear) and delta_product<N> (N delta writes per token, ungated;
model.gate=head adds one), each sum-normalised as the delta rule (an attention normaliser would
need the same decay); `-neg` after a rule with β sets beta_max = 2 (β ∈ (0, 2): negative
eigenvalues), e.g. linear-gated_delta-neg. phi `fla` (not for retrieval) is FLA's layer around
the rule: φ = identity after a width-4 SiLU short convolution on q, k, v, L2-normalised q and k
and no normaliser, a per-head RMSNorm of the read-out, and (all but delta: FLA's DeltaNet has
none) an output gate; fla-gated_delta is FLA's GatedDeltaNet layer.

Where the families differ, their Policy says so, each difference named:
  retrieval  the paper's curves, and gated_sum, gated_delta (one gate per memory): phi ∈ linear,
             dpfp1-3, favor64/128/512, tanh; tanh only
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
# The modern rules' names and their fields; delta_product<N> is a pattern (N >= 1).
GATED = {"gated_sum": {"update_rule": "gated_sum", "gate": "head"},
         "gated_delta": {"update_rule": "gated_delta", "gate": "head"},
         "kda": {"update_rule": "gated_delta", "gate": "channel"}}
PRODUCT = "delta_product"
NEG = "-neg"
# phi "fla": FLA's layer options (fwp.layers.FastWeightConfig), around any of FLA_RULES.
FLA = {"feature_map": "identity", "short_conv": 4, "qk_norm": "l2", "output_norm": "rmsnorm",
       "normalization": "none"}
FLA_RULES = ("delta",) + tuple(GATED)            # and delta_product<N>


@dataclasses.dataclass(frozen=True)
class Policy:
  softmax: str                           # the softmax baseline's name
  phis: tuple[str, ...] | None           # the φ names accepted; None: any of the patterns
  tanh_rules: tuple[str, ...]            # the rules tanh features may be used with
  tanh_normalization: str | None         # tanh's normaliser (None: the rule's own)
  sum_normalization: str = "attention"   # the sum rule's normaliser
  gated: tuple[str, ...] = ()            # the modern rules taken (GATED's names, PRODUCT)
  fla: bool = False                      # phi `fla` (FLA's layer options)
  neg: bool = False                      # the -neg suffix (β ∈ (0, 2))


RETRIEVAL = Policy(softmax="softmax",
                   phis=("linear", "dpfp1", "dpfp2", "dpfp3", "favor64", "favor128", "favor512",
                         "tanh"),
                   tanh_rules=("sum", "fwm"), tanh_normalization=None,
                   gated=("gated_sum", "gated_delta"))
MODERN = tuple(GATED) + (PRODUCT,)
LM = Policy(softmax="transformer", phis=None, tanh_rules=RULES + RECURRENT + MODERN,
            tanh_normalization="none", gated=MODERN, fla=True, neg=True)
ALGORITHMIC = Policy(softmax="transformer", phis=None, tanh_rules=RULES + RECURRENT + MODERN,
                     tanh_normalization="none", sum_normalization="none", gated=MODERN,
                     fla=True, neg=True)


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


def _rules(policy: Policy) -> tuple[str, ...]:
  """The rule names of a policy (delta_product as its pattern, delta_product<N>)."""
  return RULES + RECURRENT + tuple(f"{r}<N>" if r == PRODUCT else r for r in policy.gated)


def describe(policy: Policy) -> str:
  """The accepted names, for an error message or a help line."""
  phis = ", ".join(policy.phis) if policy.phis else "linear, tanh, dpfp<nu>, favor<m>"
  if policy.fla:
    phis += f", fla (FLA's layer, with {', '.join(FLA_RULES)}, {PRODUCT}<N>)"
  tanh = ("" if set(_rules(policy)) <= set(policy.tanh_rules) | {f"{PRODUCT}<N>"} else
          f" (tanh: {' or '.join(policy.tanh_rules)} only; tanh features are not positive, so "
          f"they cannot be sum-normalised)")
  neg = (f"; {NEG} after a rule with β for β ∈ (0, 2), e.g. linear-gated_delta{NEG}"
         if policy.neg else "")
  return (f"{policy.softmax}, additive (Bahdanau attention), fwp91-sum (the 1991 fast weight "
          f"programmer: φ = identity, no normalisation), or <phi>-<rule> with phi in {phis} and "
          f"rule in {', '.join(_rules(policy))}{tanh}{neg}")


def _rule_fields(rule: str, policy: Policy) -> dict | None:
  """The fields of a rule name (None: not one of `policy`'s), the rule's own normaliser
  included."""
  if rule in RULES:
    return {"update_rule": rule, "normalization": dict(NORMALIZATION,
                                                       sum=policy.sum_normalization)[rule]}
  if rule in RECURRENT:
    return {"update_rule": "delta", "recurrence": rule, "normalization": "sum"}
  if rule in GATED and rule in policy.gated:
    return dict(GATED[rule], normalization="sum")
  writes = rule[len(PRODUCT):]
  if rule.startswith(PRODUCT) and PRODUCT in policy.gated and writes.isdigit() and (
      int(writes) >= 1):
    return {"update_rule": PRODUCT, "num_writes": int(writes), "gate": "none",
            "normalization": "sum"}
  return None


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
  neg = policy.neg and rule.endswith(NEG)
  rule = rule[:-len(NEG)] if neg else rule
  if phi == "fla" and policy.fla:
    fields = dict(FLA)
  else:
    fields = _phi_fields(phi) if policy.phis is None or phi in policy.phis else None
  own = _rule_fields(rule, policy)
  family = PRODUCT if own and own["update_rule"] == PRODUCT else rule
  if fields is None or own is None or (phi == "tanh" and family not in policy.tanh_rules) or (
      phi == "fla" and family not in FLA_RULES + (PRODUCT,)) or (
      neg and own["update_rule"] not in ("delta", "gated_delta", PRODUCT)) or (
      neg and own.get("recurrence")):
    raise ValueError(f"Unknown model {name!r}; valid choices: {describe(policy)}.")
  if phi == "fla":
    own = dict(own, normalization="none", output_gate=rule != "delta")
  elif phi == "tanh" and policy.tanh_normalization:
    own["normalization"] = policy.tanh_normalization
  fields.update(own)
  if neg:
    fields["beta_max"] = 2.0
  if rule == "fwm":
    fields["form"] = "recurrent"
  return fields


def names(policy: Policy) -> tuple[str, ...]:
  """Every accepted name of a policy with a closed list of φ."""
  if policy.phis is None:
    raise ValueError("This policy accepts any dpfp<nu> and favor<m>: its names are not a list.")
  rules = RULES + RECURRENT + tuple(r for r in policy.gated if r != PRODUCT)
  return (policy.softmax, "additive", "fwp91-sum") + tuple(
      f"{phi}-{rule}" for phi in policy.phis for rule in rules
      if phi != "tanh" or rule in policy.tanh_rules)
