"""Every model name each family accepts, and what it sets: one parser (configs.names), one policy
per family. A change of meaning is a change of these tables; the differences between the
families (the softmax baseline's name, the φ sizes, tanh's rules and normaliser) are named in
configs/names.py's docstring and visible here side by side."""

import pytest

from configs import associative_recall, common, names

pytestmark = pytest.mark.fast   # the model-name tables: no compile

SHORT = {"feature_map": "fm", "nu": "nu", "num_features": "m", "update_rule": "rule",
         "normalization": "norm", "recurrence": "rec", "form": "form", "gate": "gate",
         "num_writes": "N", "beta_max": "beta_max", "short_conv": "conv", "qk_norm": "qk",
         "output_norm": "onorm", "output_gate": "ogate"}


def row(fields: dict) -> str:
  order = list(SHORT)
  return " ".join(f"{SHORT[k]}={v}" for k, v in sorted(fields.items(),
                                                      key=lambda kv: order.index(kv[0])))


RETRIEVAL = {
    "softmax": "rule=softmax norm=none",
    "additive": "rule=additive norm=none",
    "fwp91-sum": "fm=identity rule=sum norm=none",
    "linear-sum": "fm=elu_plus_one rule=sum norm=attention",
    "linear-delta": "fm=elu_plus_one rule=delta norm=sum",
    "linear-fwm": "fm=elu_plus_one rule=fwm norm=none form=recurrent",
    "linear-delta_rnn": "fm=elu_plus_one rule=delta norm=sum rec=delta_rnn",
    "linear-rdn": "fm=elu_plus_one rule=delta norm=sum rec=rdn",
    "linear-delta_lstm": "fm=elu_plus_one rule=delta norm=sum rec=delta_lstm",
    "linear-gated_sum": "fm=elu_plus_one rule=gated_sum norm=sum gate=head",
    "linear-gated_delta": "fm=elu_plus_one rule=gated_delta norm=sum gate=head",
    "dpfp1-sum": "fm=dpfp nu=1 rule=sum norm=attention",
    "dpfp1-delta": "fm=dpfp nu=1 rule=delta norm=sum",
    "dpfp1-fwm": "fm=dpfp nu=1 rule=fwm norm=none form=recurrent",
    "dpfp1-delta_rnn": "fm=dpfp nu=1 rule=delta norm=sum rec=delta_rnn",
    "dpfp1-rdn": "fm=dpfp nu=1 rule=delta norm=sum rec=rdn",
    "dpfp1-delta_lstm": "fm=dpfp nu=1 rule=delta norm=sum rec=delta_lstm",
    "dpfp1-gated_sum": "fm=dpfp nu=1 rule=gated_sum norm=sum gate=head",
    "dpfp1-gated_delta": "fm=dpfp nu=1 rule=gated_delta norm=sum gate=head",
    "dpfp2-sum": "fm=dpfp nu=2 rule=sum norm=attention",
    "dpfp2-delta": "fm=dpfp nu=2 rule=delta norm=sum",
    "dpfp2-fwm": "fm=dpfp nu=2 rule=fwm norm=none form=recurrent",
    "dpfp2-delta_rnn": "fm=dpfp nu=2 rule=delta norm=sum rec=delta_rnn",
    "dpfp2-rdn": "fm=dpfp nu=2 rule=delta norm=sum rec=rdn",
    "dpfp2-delta_lstm": "fm=dpfp nu=2 rule=delta norm=sum rec=delta_lstm",
    "dpfp2-gated_sum": "fm=dpfp nu=2 rule=gated_sum norm=sum gate=head",
    "dpfp2-gated_delta": "fm=dpfp nu=2 rule=gated_delta norm=sum gate=head",
    "dpfp3-sum": "fm=dpfp nu=3 rule=sum norm=attention",
    "dpfp3-delta": "fm=dpfp nu=3 rule=delta norm=sum",
    "dpfp3-fwm": "fm=dpfp nu=3 rule=fwm norm=none form=recurrent",
    "dpfp3-delta_rnn": "fm=dpfp nu=3 rule=delta norm=sum rec=delta_rnn",
    "dpfp3-rdn": "fm=dpfp nu=3 rule=delta norm=sum rec=rdn",
    "dpfp3-delta_lstm": "fm=dpfp nu=3 rule=delta norm=sum rec=delta_lstm",
    "dpfp3-gated_sum": "fm=dpfp nu=3 rule=gated_sum norm=sum gate=head",
    "dpfp3-gated_delta": "fm=dpfp nu=3 rule=gated_delta norm=sum gate=head",
    "favor64-sum": "fm=favor_plus m=64 rule=sum norm=attention",
    "favor64-delta": "fm=favor_plus m=64 rule=delta norm=sum",
    "favor64-fwm": "fm=favor_plus m=64 rule=fwm norm=none form=recurrent",
    "favor64-delta_rnn": "fm=favor_plus m=64 rule=delta norm=sum rec=delta_rnn",
    "favor64-rdn": "fm=favor_plus m=64 rule=delta norm=sum rec=rdn",
    "favor64-delta_lstm": "fm=favor_plus m=64 rule=delta norm=sum rec=delta_lstm",
    "favor64-gated_sum": "fm=favor_plus m=64 rule=gated_sum norm=sum gate=head",
    "favor64-gated_delta": "fm=favor_plus m=64 rule=gated_delta norm=sum gate=head",
    "favor128-sum": "fm=favor_plus m=128 rule=sum norm=attention",
    "favor128-delta": "fm=favor_plus m=128 rule=delta norm=sum",
    "favor128-fwm": "fm=favor_plus m=128 rule=fwm norm=none form=recurrent",
    "favor128-delta_rnn": "fm=favor_plus m=128 rule=delta norm=sum rec=delta_rnn",
    "favor128-rdn": "fm=favor_plus m=128 rule=delta norm=sum rec=rdn",
    "favor128-delta_lstm": "fm=favor_plus m=128 rule=delta norm=sum rec=delta_lstm",
    "favor128-gated_sum": "fm=favor_plus m=128 rule=gated_sum norm=sum gate=head",
    "favor128-gated_delta": "fm=favor_plus m=128 rule=gated_delta norm=sum gate=head",
    "favor512-sum": "fm=favor_plus m=512 rule=sum norm=attention",
    "favor512-delta": "fm=favor_plus m=512 rule=delta norm=sum",
    "favor512-fwm": "fm=favor_plus m=512 rule=fwm norm=none form=recurrent",
    "favor512-delta_rnn": "fm=favor_plus m=512 rule=delta norm=sum rec=delta_rnn",
    "favor512-rdn": "fm=favor_plus m=512 rule=delta norm=sum rec=rdn",
    "favor512-delta_lstm": "fm=favor_plus m=512 rule=delta norm=sum rec=delta_lstm",
    "favor512-gated_sum": "fm=favor_plus m=512 rule=gated_sum norm=sum gate=head",
    "favor512-gated_delta": "fm=favor_plus m=512 rule=gated_delta norm=sum gate=head",
    "tanh-sum": "fm=tanh rule=sum norm=attention",
    "tanh-fwm": "fm=tanh rule=fwm norm=none form=recurrent",
}
LM_SAMPLE = {
    "transformer": "rule=softmax norm=none",
    "additive": "rule=additive norm=none",
    "fwp91-sum": "fm=identity rule=sum norm=none",
    "linear-sum": "fm=elu_plus_one rule=sum norm=attention",
    "linear-delta": "fm=elu_plus_one rule=delta norm=sum",
    "linear-fwm": "fm=elu_plus_one rule=fwm norm=none form=recurrent",
    "linear-delta_lstm": "fm=elu_plus_one rule=delta norm=sum rec=delta_lstm",
    "tanh-sum": "fm=tanh rule=sum norm=none",
    "tanh-delta": "fm=tanh rule=delta norm=none",
    "tanh-fwm": "fm=tanh rule=fwm norm=none form=recurrent",
    "dpfp2-sum": "fm=dpfp nu=2 rule=sum norm=attention",
    "dpfp7-delta": "fm=dpfp nu=7 rule=delta norm=sum",
    "favor16-delta": "fm=favor_plus m=16 rule=delta norm=sum",
    "favor3-sum": "fm=favor_plus m=3 rule=sum norm=attention",
    "dpfp1-rdn": "fm=dpfp nu=1 rule=delta norm=sum rec=rdn",
    # The modern rules (issue 44) and FLA's layer.
    "linear-gated_sum": "fm=elu_plus_one rule=gated_sum norm=sum gate=head",
    "linear-gated_delta": "fm=elu_plus_one rule=gated_delta norm=sum gate=head",
    "linear-gated_delta-neg": "fm=elu_plus_one rule=gated_delta norm=sum gate=head beta_max=2.0",
    "linear-kda": "fm=elu_plus_one rule=gated_delta norm=sum gate=channel",
    "linear-delta-neg": "fm=elu_plus_one rule=delta norm=sum beta_max=2.0",
    "dpfp2-delta_product3": "fm=dpfp nu=2 rule=delta_product norm=sum gate=none N=3",
    "linear-delta_product2-neg": ("fm=elu_plus_one rule=delta_product norm=sum gate=none N=2 "
                                  "beta_max=2.0"),
    "tanh-kda": "fm=tanh rule=gated_delta norm=none gate=channel",
    "fla-gated_delta": ("fm=identity rule=gated_delta norm=none gate=head conv=4 qk=l2 "
                        "onorm=rmsnorm ogate=True"),
    "fla-delta": "fm=identity rule=delta norm=none conv=4 qk=l2 onorm=rmsnorm ogate=False",
    "fla-delta_product2-neg": ("fm=identity rule=delta_product norm=none gate=none N=2 "
                               "beta_max=2.0 conv=4 qk=l2 onorm=rmsnorm ogate=True"),
}


def test_every_retrieval_name_and_what_it_sets():
  assert names.names(names.RETRIEVAL) == tuple(RETRIEVAL) == associative_recall.CURVES
  for name, expected in RETRIEVAL.items():
    assert row(names.model_fields(name, names.RETRIEVAL)) == expected, name


@pytest.mark.parametrize("name", sorted(LM_SAMPLE))
def test_lm_names_and_what_they_set(name):
  assert row(names.model_fields(name, names.LM)) == LM_SAMPLE[name]


def test_algorithmic_names_are_the_lms_but_an_unnormalised_sum_rule():
  """The algorithmic policy differs from the LM's in one place: the Linear Transformer of the
  authors' algorithmic code has no normaliser."""
  for name, expected in LM_SAMPLE.items():
    if "rule=sum" in expected:
      expected = expected.replace("norm=attention", "norm=none")
    assert row(names.model_fields(name, names.ALGORITHMIC)) == expected, name


def test_the_config_files_apply_what_the_parser_resolves():
  for name in ("dpfp2-sum", "tanh-fwm", "linear-rdn"):
    config = associative_recall.get_config(name)
    fields = names.model_fields(name, names.RETRIEVAL)
    assert {k: config.model[k] for k in fields} == fields
  assert associative_recall.get_config("dpfp2-sum").setting == 1
  assert associative_recall.get_config("dpfp2-delta").setting == 2
  config = common.apply_lm_model(common.lm_config(), "favor16-delta")
  assert (config.model.num_features, config.model.normalization) == (16, "sum")


@pytest.mark.parametrize("policy, name", [
    (names.RETRIEVAL, "transformer"), (names.RETRIEVAL, "tanh-delta"),
    (names.RETRIEVAL, "favor16-sum"), (names.RETRIEVAL, "dpfp4-sum"),
    (names.LM, "softmax"), (names.LM, "dpfp0-sum"), (names.LM, "linear"),
    (names.LM, "linear-foo"), (names.LM, "favor-sum"), (names.LM, "linear-sum-neg"),
    (names.LM, "linear-delta_rnn-neg"), (names.LM, "linear-delta_product0"),
    (names.LM, "fla-sum"), (names.LM, "fla-fwm"), (names.LM, "fla-rdn"),
    (names.RETRIEVAL, "linear-kda"), (names.RETRIEVAL, "fla-delta"),
    (names.RETRIEVAL, "linear-delta-neg"), (names.RETRIEVAL, "tanh-gated_sum")])
def test_names_outside_a_policy_are_refused_with_the_choices(policy, name):
  with pytest.raises(ValueError, match=f"Unknown model '{name}'; valid choices: "
                                       f"{policy.softmax}, additive"):
    names.model_fields(name, policy)
