"""The LM config files: the CPU config's `:authors` variant takes the same authors' layer details
as configs/wikitext103.py, and nothing else changes."""

import pytest

from configs import common, language_model, wikitext103

pytestmark = pytest.mark.fast   # the config tables: no compile


@pytest.mark.parametrize("model", ["linear-delta", "dpfp2-sum", "favor16-delta", "transformer"])
def test_authors_variant_sets_the_wikitext103_details(model):
  fwp, authors = language_model.get_config(model), language_model.get_config(f"{model}:authors")
  paper = wikitext103.get_config(f"small-{model}")
  changed = {k for k in fwp.model.keys() if fwp.model[k] != authors.model[k]}
  assert changed, "the variant changes nothing"
  # Every field the variant changes is the paper config's value, and only model fields change.
  for k in changed:
    assert authors.model[k] == paper.model[k], k
  assert {k for k in fwp.keys() if k != "model" and fwp[k] != authors[k]} == set()
  assert authors.model.layer_norm_eps == 1e-5 and authors.model.init == "authors"
  assert (authors.model.sum_scale == "scores") == (model == "dpfp2-sum")


def test_unknown_variant_names_the_choices():
  with pytest.raises(ValueError, match="'paper'.*fwp, authors"):
    language_model.get_config("linear-delta:paper")


def test_authors_details_leave_the_model_name():
  c = common.apply_authors_lm_details(language_model.get_config("linear-sum"))
  assert c.model_name == "linear-sum" and c.model.update_rule == "sum"


# The paper's Tables 3 and 4 (medium Delta Net; sum normalisation in every row) as names.
TABLE_ROWS = {
    # name: (positional, normalization, carry_state)
    "medium-linear-delta-attn": ("sinusoidal", "sum_attention", False),
    "medium-linear-delta-attn-nopos": ("none", "sum_attention", False),
    "medium-linear-delta": ("sinusoidal", "sum", False),
    "medium-linear-delta-nopos": ("none", "sum", False),
    "medium-linear-delta-carry": ("none", "sum", True),
    "medium-linear-sum-carry": ("none", "attention", True),
}


@pytest.mark.parametrize("name", TABLE_ROWS)
def test_table_3_and_4_rows_are_names(name, tmp_path):
  from experiments import train
  from tests.helpers import write_wikitext
  c = wikitext103.get_config(name)
  assert (c.model.positional, c.model.normalization, c.carry_state) == TABLE_ROWS[name]
  assert (c.model.d_model, c.model.num_heads, c.model.d_head) == (256, 8, 32)
  assert c.model_name == name.partition("-")[2]
  c.data_dir = write_wikitext(tmp_path)
  train.validate(c)         # every field, as launch.py checks it at parsing


@pytest.mark.parametrize("name,message", [
    ("linear-sum-attn", "attention-normalised already"),
    ("transformer-carry", "'transformer' has none"),
    ("linear-delta-nopos-nopos", "repeats an option"),
    ("linear-hebb-carry", "then any of -attn, -nopos, -carry"),
])
def test_bad_name_options_name_the_problem(name, message):
  with pytest.raises(ValueError, match=message):
    language_model.get_config(name)
