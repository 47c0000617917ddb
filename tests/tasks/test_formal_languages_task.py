"""The formal-languages family behind the one loop: it trains, selects by the mean of the two
bins (the authors' criterion), stops at the target accuracy, resumes bitwise, reports without
writing into runs, and bad configs fail before anything is made or compiled."""

import os

import numpy as np
import pytest

from configs import formal_languages
from experiments import report, sweep, tasks, train
from tests.helpers import read_metrics


def tiny(name="dyck-1-linear-delta", cache="", **changes):
  c = formal_languages.get_config(name)
  c.train_size, c.valid_size, c.valid2_size, c.test_size = 96, 24, 24, 24
  c.batch_size, c.eval_batch_size = 8, 16
  c.max_steps, c.eval_every, c.checkpoint_every = 12, 3, 3
  c.learning_rate = 3e-3
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_head = 1, 16, 2, 8
  c.model.d_ff, c.model.embed_size = 32, 8
  c.cache_dir, c.tensorboard = cache, False
  for key, value in changes.items():
    sweep.set_field(c, key, value)
  return c


@pytest.mark.slow
def test_a_run_trains_selects_by_both_bins_resumes_bitwise_and_is_reported(tmp_path):
  cache = str(tmp_path / "cache")
  whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
  summary = train.train(tiny(cache=cache), whole)
  metrics = read_metrics(whole)
  means = [m["valid_mean_accuracy"] for m in metrics]
  for m in metrics:
    assert m["valid_mean_accuracy"] == pytest.approx(
        (m["valid_accuracy"] + m["valid_long_accuracy"]) / 2)
  best = metrics[int(np.argmax(means))]
  assert summary["final_from_step"] == best["step"]
  assert summary["valid_long_accuracy"] == pytest.approx(best["valid_long_accuracy"], abs=1e-9)
  assert summary["task"] == "formal_languages" and summary["problem"] == "dyck-1"
  for key in ("test_long_accuracy", "test_long_loss", "valid_position_accuracy"):
    assert key in summary
  train.train(tiny(cache=cache, max_steps=6), split)
  resumed = train.train(tiny(cache=cache), split)
  strip = lambda ms: [{k: v for k, v in m.items() if k not in train.TIMING_FIELDS} for m in ms]
  assert strip(read_metrics(split)) == strip(metrics)
  assert {k: v for k, v in resumed.items() if k != "wall_seconds"} == {
      k: v for k, v in summary.items() if k != "wall_seconds"}
  before = sorted(os.listdir(whole))
  family = tasks.report("formal_languages")
  paths = family.write(family.collect(report.finished_runs([str(tmp_path)])),
                       str(tmp_path / "out"))
  assert [os.path.basename(p) for p in paths] == [
      "formal_languages.csv", "formal_languages.md", "formal_languages.png"]
  table = open(paths[1]).read()
  assert "| dyck-1 | linear-delta |" in table
  assert sorted(os.listdir(whole)) == before


@pytest.mark.slow
def test_the_length_windows_are_the_config_s(tmp_path):
  c = tiny("counter-2-lstm", cache=str(tmp_path / "cache"), train_lengths="2:5",
           long_lengths="8:9", max_steps=3)
  task = tasks.get("formal_languages").make(c)
  assert task.train.lengths.max() <= 10 and set(task.valid2.lengths) <= {16, 18}
  c = tiny("parity-lstm", cache=str(tmp_path / "cache"), max_length=40, max_steps=3)
  with pytest.raises(ValueError, match="longer than config.max_length=40"):
    train.train(c, str(tmp_path / "run"))


@pytest.mark.slow
def test_a_run_stops_when_both_bins_reach_the_target(tmp_path):
  # aa-star is learnt by an LSTM in a few dozen steps; a target of 60 % stops it early.
  c = tiny("aa-star-lstm", cache=str(tmp_path / "cache"), max_steps=300, eval_every=10,
           checkpoint_every=10, stop_accuracy=60.0, learning_rate=1e-2)
  summary = train.train(c, str(tmp_path / "run"))
  assert summary["stop_reason"] == "target" and summary["steps"] < 300
  metrics = read_metrics(str(tmp_path / "run"))
  assert metrics[-1]["valid_mean_accuracy"] >= 60.0
  assert all(m["valid_mean_accuracy"] < 60.0 for m in metrics[:-1])


@pytest.mark.fast
def test_the_config_is_the_authors_recipe_and_names_parse():
  c = formal_languages.get_config("counter-2-linear-rdn")
  assert (c.problem, c.model_name, c.model.recurrence) == ("counter-2", "linear-rdn", "rdn")
  assert (c.beta2, c.adam_eps, c.model.dropout, c.model.positional) == (0.995, 1e-9, 0.0, "none")
  assert c.max_steps == 300 * (10_000 // 32) and c.eval_every == c.checkpoint_every
  assert (c.select_by, c.stop_accuracy) == ("mean", 100.0)
  trafo = formal_languages.get_config("reset_dyck-transformer")
  assert (trafo.problem, trafo.model.update_rule, trafo.model.pre_norm, trafo.model.positional,
          trafo.model.final_norm) == ("reset_dyck", "softmax", False, "none", True)
  neg = formal_languages.get_config("mod-3-linear-delta-neg")
  assert (neg.problem, neg.model.beta_max, neg.model.qk_norm, neg.model.normalization) == (
      "mod-3", 2.0, "l2", "none")            # unit-norm keys: 1 − β spans (−1, 1)
  assert formal_languages.get_config("s5-linear-delta_product3").model.num_writes == 3
  assert formal_languages.get_config("parity-lstm").model.architecture == "lstm"
  elstm = formal_languages.get_config("parity-elstm")
  assert (elstm.model_name, elstm.model.architecture, elstm.model.cell,
          elstm.model.num_layers) == ("elstm", "lstm", "elstm", 1)
  self_ref = formal_languages.get_config("dyck-1-srwm")
  assert (self_ref.model_name, self_ref.model.recurrence, self_ref.model.feature_map,
          self_ref.model.normalization) == ("srwm", "srwm", "identity", "none")
  assert formal_languages.get_config("parity-linear-sum").model.normalization == "none"


@pytest.mark.fast
@pytest.mark.parametrize("argument,message", [
    ("dyck-2-lstm", "Expected <task>-<model>.*tasks: parity"),
    ("parity", "Expected <task>-<model>"),
    ("parity-linear-foo", "Unknown model 'linear-foo'")])
def test_bad_names(argument, message):
  with pytest.raises(ValueError, match=message):
    formal_languages.get_config(argument)


@pytest.mark.fast
@pytest.mark.parametrize("changes,message", [
    (dict(problem="dyck-2"), "Unknown formal-language task 'dyck-2'"),
    (dict(select_by="bin1"), "config.select_by.*'bin1'.*mean, long"),
    (dict(stop_accuracy=0.0), "stop_accuracy=0.0 is not a percentage"),
    (dict(train_size=4), "train_size=4 is smaller than batch_size"),
    (dict(valid2_size=0), "valid2_size"),
    ({"model.architecture": "gru"}, "Unknown config.model.architecture 'gru'"),
    (dict(long_lengths="51-100"), "long_lengths='51-100' is not LOW:HIGH"),
    (dict(train_lengths="0:50"), r"config.train_lengths of dyck-1 is \[0, 50\]"),
    (dict(long_lengths="60:2000"), r"high <= 1000"),
    (dict(problem="abab-star", long_lengths="5:7"), "no length that is a multiple of 4"),
])
def test_bad_configs_fail_before_anything_is_made(tmp_path, changes, message):
  with pytest.raises(ValueError, match=message):
    train.train(tiny(cache=str(tmp_path / "cache"), **changes), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "cache") and not os.path.exists(tmp_path / "run")
