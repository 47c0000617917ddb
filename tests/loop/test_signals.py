"""A signal is honoured in about one unit of work wherever it arrives, and the relaunch goes on
as if nothing had happened: between train steps, between an evaluation's batches, in the final
evaluation (of a run stopped early: the relaunch evaluates the same checkpoint and trains no
more), in BLEU's beam search and while the data is prepared. Each case runs the tiny
formal-language run in this process, sends SIGTERM to it from inside the surface under test,
measures how long the exit took and compares the relaunch with a run left alone (timing fields
aside)."""

import os
import signal
import time

import numpy as np
import pytest

from experiments import stopping, train
from experiments.tasks.algorithmic import data as algorithmic_data
from experiments.tasks.formal_languages import data as formal_data
from experiments.tasks.formal_languages import task as formal_task
from tests.helpers import final_params, read_metrics, strip_timing
from tests.tasks.test_formal_languages_task import tiny

SLOW_BATCH = 0.5       # seconds each evaluation batch (or train step) takes once the signal is sent
WITHIN = 3.0           # the bound on an exit's latency: a few batches' worth, never the rest


def _summary_without_timing(summary):
  return {k: v for k, v in summary.items() if k != "wall_seconds"}


def _alone(tmp_path, config):
  workdir = str(tmp_path / "alone")
  return workdir, train.train(config, workdir)


def _interrupted(config, workdir):
  """Runs `config` until the patched surface signals; returns the seconds from the signal to
  the exit and the exit's status."""
  with pytest.raises(SystemExit) as exit_:
    train.train(config, workdir)
  latency = time.time() - _SENT["at"]
  print(f"exit {exit_.value.code} {latency:.2f} s after the signal")
  return latency, exit_.value.code


_SENT: dict = {}        # "at": when this test sent its signal


@pytest.fixture(autouse=True)
def _no_signal_sent_yet():
  _SENT.clear()


def _signal_self():
  _SENT["at"] = time.time()
  os.kill(os.getpid(), signal.SIGTERM)


def _sent():
  return "at" in _SENT


def _slow_eval_batches(monkeypatch, fire_on_call, fire_after_batches=1, when=lambda: True):
  """eval_batches that send SIGTERM during the `fire_on_call`-th evaluation pass (counted from
  1) that `when()` allows, after `fire_after_batches` batches, and from then on take SLOW_BATCH
  each: what is left of the run after the signal is slow, so an exit that waited for it would
  take seconds; the batches before it are not (they would only cost the suite time)."""
  original, calls = algorithmic_data.eval_batches, {"n": 0}

  def patched(split, batch_size):
    if when():
      calls["n"] += 1
    firing = calls["n"] == fire_on_call and when()
    for i, batch in enumerate(original(split, batch_size)):
      if firing and i == fire_after_batches:
        _signal_self()
      if _sent():
        time.sleep(SLOW_BATCH)
      yield batch

  monkeypatch.setattr(algorithmic_data, "eval_batches", patched)


def _resumed_matches(workdir, alone, alone_summary, config):
  resumed = train.train(config, workdir)
  assert strip_timing(read_metrics(workdir)) == strip_timing(read_metrics(alone))
  assert _summary_without_timing(resumed) == _summary_without_timing(alone_summary)
  for a, b in zip(final_params(alone), final_params(workdir)):
    np.testing.assert_array_equal(a, b)
  return resumed


def test_a_signal_between_train_steps_exits_within_a_step(tmp_path, monkeypatch):
  config = tiny(eval_every=100, checkpoint_every=100, max_steps=40)
  alone, alone_summary = _alone(tmp_path, config)
  original = formal_task.FormalLanguage.host_batch

  def slow_batch(self, step):
    if step == 8:
      _signal_self()
    if _sent():
      time.sleep(SLOW_BATCH)
    return original(self, step)

  monkeypatch.setattr(formal_task.FormalLanguage, "host_batch", slow_batch)
  workdir = str(tmp_path / "stepped")
  latency, code = _interrupted(config, workdir)
  assert code == 128 + signal.SIGTERM
  assert latency < WITHIN, f"the exit took {latency:.2f} s after the signal"
  saved = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
  assert saved and saved[-1] <= 10, saved          # at most two steps past the signal
  monkeypatch.undo()
  _resumed_matches(workdir, alone, alone_summary, config)


def test_a_signal_during_an_evaluation_is_honoured_between_its_batches(tmp_path, monkeypatch,
                                                                       capsys):
  config = tiny(eval_batch_size=4, checkpoint_every=6)      # 6 + 6 batches an evaluation
  alone, alone_summary = _alone(tmp_path, config)
  _slow_eval_batches(monkeypatch, fire_on_call=3)           # the evaluation of step 6, Bin0
  workdir = str(tmp_path / "evaluating")
  latency, code = _interrupted(config, workdir)
  assert code == 128 + signal.SIGTERM
  assert latency < WITHIN, f"the exit took {latency:.2f} s (an evaluation takes ~6 s)"
  assert "during the evaluation of step 6: saved a checkpoint at step 6" in capsys.readouterr().out
  assert [m["step"] for m in read_metrics(workdir)] == [3]
  monkeypatch.undo()
  _resumed_matches(workdir, alone, alone_summary, config)
  assert "The evaluation of step 6 was interrupted; it runs again." in capsys.readouterr().out


def test_a_signal_during_the_final_evaluation_of_a_stopped_run(tmp_path, monkeypatch, capsys):
  # stop_loss above any loss: the run stops at its first evaluation (step 3), then evaluates
  # the best checkpoint; the relaunch must evaluate it, not train on from step 3.
  config = tiny(eval_batch_size=4, stop_loss=100.0)
  alone, alone_summary = _alone(tmp_path, config)
  assert (alone_summary["stop_reason"], alone_summary["steps"]) == ("stop_loss", 3)
  in_final = {"on": False}
  original = formal_task.FormalLanguage.final

  def final(self, *args):
    in_final["on"] = True
    return original(self, *args)

  monkeypatch.setattr(formal_task.FormalLanguage, "final", final)
  _slow_eval_batches(monkeypatch, fire_on_call=2, when=lambda: in_final["on"])   # its Bin1
  workdir = str(tmp_path / "final")
  latency, code = _interrupted(config, workdir)
  assert code == 128 + signal.SIGTERM
  assert latency < WITHIN, f"the exit took {latency:.2f} s"
  assert "during the final evaluation" in capsys.readouterr().out
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  monkeypatch.undo()
  resumed = _resumed_matches(workdir, alone, alone_summary, config)
  assert resumed["steps"] == 3
  assert "The run stopped (stop_loss) at step 3" in capsys.readouterr().out
  assert not os.path.exists(os.path.join(workdir, "stopped.json"))   # the summary replaced it


def test_a_signal_while_the_data_is_prepared_ends_the_launch_at_once(tmp_path, monkeypatch,
                                                                     capsys):
  config = tiny(cache=str(tmp_path / "cache"))
  original = formal_data.generate

  def slow_generate(*args, **kwargs):
    _signal_self()
    time.sleep(30)                          # a long tokenisation: the signal must not wait
    return original(*args, **kwargs)

  monkeypatch.setattr(formal_data, "generate", slow_generate)
  workdir = str(tmp_path / "preparing")
  latency, code = _interrupted(config, workdir)
  assert code == 128 + signal.SIGTERM
  assert latency < WITHIN, f"the exit took {latency:.2f} s"
  assert "while preparing the run; nothing was trained" in capsys.readouterr().out
  assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))
  monkeypatch.undo()
  assert train.train(config, workdir)["steps"] == config.max_steps


def test_checked_raises_only_under_a_signal_context():
  assert list(stopping.checked(range(3))) == [0, 1, 2]       # a reader: no handler, no flag
  with stopping.Signals() as signals:
    signals.signal = "SIGINT"
    with pytest.raises(stopping.Interrupted) as raised:
      list(stopping.checked(range(3)))
  assert raised.value.signal == "SIGINT"
  assert not isinstance(raised.value, Exception)   # `except Exception` must not swallow it


def test_a_signal_during_beam_search_stops_it_before_the_next_batch(tmp_path):
  # BLEU's evaluation translates the valid sentences by beam search a batch at a time (seconds
  # each for a real model): a signal must wait for the batch in flight only.
  from flax import nnx

  from experiments.tasks import translation
  from tests.helpers import tiny_translation_config, write_parallel
  task = translation.make(tiny_translation_config(write_parallel(tmp_path / "d"),
                                                  eval_max_tokens=64))
  model = task.build_model(nnx.Rngs(0))
  batches, reached, firing = task._eval_batches("valid", 0), [], []
  assert len(batches) > 2

  class SignalAfterTheFirst(list):
    def __iter__(self):
      for i, item in enumerate(list.__iter__(self)):
        reached.append(i)
        if i == 1 and firing:
          _signal_self()
        yield item

  task._eval_batches = lambda split, limit=0: SignalAfterTheFirst(batches)
  assert len(task.translate(model, "valid")) == 40        # no signal: every sentence
  reached.clear()
  firing.append(True)
  with stopping.Signals(), pytest.raises(stopping.Interrupted):
    task.translate(model, "valid")
  assert reached == [0, 1], reached                       # batch 1 was never translated
