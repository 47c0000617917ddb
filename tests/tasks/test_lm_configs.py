"""The LM config files: the CPU config's `:authors` variant takes the same authors' layer details
as configs/wikitext103.py, and nothing else changes."""

import pytest

from configs import common, language_model, wikitext103


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
