"""The algorithmic family behind the one loop: it trains, the final numbers are those of the
best checkpoint by valid accuracy, a resumed run is bitwise the uninterrupted one, and bad
configs fail before anything is made or compiled."""

import json
import os

import numpy as np
import pytest

from configs import algorithmic, algorithmic_cpu
from experiments import report, sweep, tasks, train
from tests.helpers import read_metrics

pytestmark = pytest.mark.slow     # trains runs end to end


def tiny(name="code2-linear-delta", cache="", **changes):
  c = algorithmic_cpu.get_config(name)
  c.code_length, c.train_size, c.valid_size, c.test_size = 5, 64, 16, 16
  c.batch_size, c.eval_batch_size = 8, 8
  c.max_steps, c.eval_every, c.checkpoint_every, c.warmup_steps = 12, 3, 3, 0
  c.learning_rate = 3e-3
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_head = 1, 16, 2, 8
  c.model.d_ff, c.model.embed_size = 32, 8
  c.cache_dir, c.tensorboard = cache, False
  for key, value in changes.items():
    sweep.set_field(c, key, value)
  return c


def _final_is_the_best(workdir, summary):
  metrics = read_metrics(workdir)
  accuracies = [m["valid_accuracy"] for m in metrics]
  best = metrics[int(np.argmax(accuracies))]                  # the first on a tie
  assert summary["final_from_step"] == best["step"]
  assert summary["best_valid_accuracy"] == pytest.approx(best["valid_accuracy"])
  # final() evaluated the restored checkpoint: its valid numbers are that eval's
  assert summary["valid_accuracy"] == pytest.approx(best["valid_accuracy"], abs=1e-9)
  assert summary["valid_loss"] == pytest.approx(best["eval_loss"], rel=1e-5)


def test_code_execution_trains_selects_the_best_and_resumes_bitwise(tmp_path):
  cache = str(tmp_path / "cache")
  whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
  summary = train.train(tiny(cache=cache), whole)
  for key in ("test_print_accuracy", "test_sequence_accuracy", "test_noop_accuracy",
              "test_loss", "valid_print_accuracy"):
    assert key in summary
  assert summary["task"] == "algorithmic" and summary["problem"] == "code2"
  _final_is_the_best(whole, summary)
  train.train(tiny(cache=cache, max_steps=6), split)
  resumed = train.train(tiny(cache=cache), split)
  strip = lambda ms: [{k: v for k, v in m.items() if k not in train.TIMING_FIELDS} for m in ms]
  assert strip(read_metrics(split)) == strip(read_metrics(whole))
  assert {k: v for k, v in resumed.items() if k != "wall_seconds"} == {
      k: v for k, v in summary.items() if k != "wall_seconds"}
  # The report reads both runs (a reader: the run directories are left as they were).
  before = sorted(os.listdir(whole))
  finished = report.finished_runs([str(tmp_path)])
  paths = tasks.report("algorithmic").write(tasks.report("algorithmic").collect(finished),
                                            str(tmp_path / "out"))
  assert [os.path.basename(p) for p in paths] == [
      "algorithmic.csv", "algorithmic.md", "algorithmic.png"]
  table = open(paths[1]).read()
  assert "**code2**" in table and "| linear-delta | 2 | 12 |" in table
  assert sorted(os.listdir(whole)) == before


@pytest.mark.parametrize("name", ["listops3-lstm", "listops3-transformer",
                                  "listops3-linear-rdn"])
def test_listops_models_train(tmp_path, name):
  summary = train.train(tiny(name, cache=str(tmp_path / "cache")), str(tmp_path / "run"))
  assert 0.0 <= summary["test_accuracy"] <= 100.0 and np.isfinite(summary["test_loss"])
  assert "test_print_accuracy" not in summary
  _final_is_the_best(str(tmp_path / "run"), summary)
  with open(tmp_path / "run" / "config.json") as f:
    saved = json.load(f)
  assert saved["problem"] == "listops3"


def test_the_paper_configs_are_the_authors_settings():
  c = algorithmic.get_config("code5-linear-delta_rnn")
  assert (c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_head,
          c.model.d_ff) == (4, 256, 16, 16, 1024)
  assert (c.batch_size, c.learning_rate, c.beta2, c.adam_eps) == (64, 3e-4, 0.995, 1e-9)
  assert c.max_steps == 200 * (10_000 // 64) and c.eval_every == c.checkpoint_every
  assert c.model.recurrence == "delta_rnn" and c.model.positional == "none"
  linear = algorithmic.get_config("listops15-linear-sum")
  assert (linear.model.update_rule, linear.model.normalization) == ("sum", "none")
  trafo = algorithmic.get_config("code3-transformer")
  assert (trafo.model.update_rule, trafo.model.positional, trafo.model.pre_norm) == (
      "softmax", "sinusoidal", False)
  assert algorithmic.get_config("code5-lstm").model.architecture == "lstm"


@pytest.mark.parametrize("name,changes,message", [
    ("code5-linear-delta", dict(select_by="tokens"), "Unknown config.select_by 'tokens'"),
    ("code5-linear-delta", dict(train_size=4), "train_size=4 is smaller than batch_size"),
    ("code5-linear-delta", {"model.architecture": "gru"},
     "Unknown config.model.architecture 'gru'; valid choices: transformer, lstm"),
    ("code5-linear-delta", dict(problem="code12"), "supports variables 1..10, got 12"),
    ("code5-linear-delta", dict(max_length=-1), "max_length must be an integer >= 0"),
])
def test_bad_configs_fail_before_anything_is_made(tmp_path, name, changes, message):
  with pytest.raises(ValueError, match=message):
    train.train(tiny(name, cache=str(tmp_path / "cache"), **changes), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "cache")


@pytest.mark.parametrize("argument,message", [
    ("code5-linear-foo", "Unknown model 'linear-foo'"), ("code5", "Expected <problem>-<model>"),
    ("tree3-lstm", "Unknown problem 'tree3'")])
def test_bad_names(argument, message):
  with pytest.raises(ValueError, match=message):
    algorithmic.get_config(argument)


def test_too_long_examples_fail_before_compiling(tmp_path):
  with pytest.raises(ValueError, match="longer than config.max_length=10"):
    train.train(tiny(cache=str(tmp_path / "cache"), max_length=10), str(tmp_path / "run"))
