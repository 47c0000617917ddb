"""Runs survive being killed: SIGKILL and relaunch, SIGTERM saves, corrupt checkpoints."""

import json
import os
import signal

import numpy as np
import pytest

from experiments import train
from tests.helpers import (CONFIG, launch, read_metrics,
                           sigkill_then_relaunch_matches_an_uninterrupted_run, start_launch,
                           tiny_retrieval_config as _tiny_config,
                           wait_for_metrics as _wait_for_metrics)

pytestmark = pytest.mark.slow   # every test here starts or trains runs end to end

# Checkpoints every 40 steps, evaluations every 20: a run killed after its third evaluation
# (step 60) resumes from step 40 and evaluates step 60 again.
ARGS = [f"--config={CONFIG}:dpfp1-delta", "--config.num_keys=6", "--config.max_steps=160",
        "--config.eval_every=20", "--config.checkpoint_every=40"]


def _start(workdir, args=ARGS):
  return start_launch(workdir, args)


def test_sigkill_then_relaunch_matches_an_uninterrupted_run(tmp_path):
  """Metrics and state bitwise as a run left alone; and the killed run's TensorBoard event
  files mirror its metrics (read by TensorBoard's own reader): the evaluation replayed after
  the resume is there once, none is lost, and the config is written once, at step 0."""
  sigkill_then_relaunch_matches_an_uninterrupted_run(tmp_path, ARGS)
  from tests.loop.test_ecosystem import read_events
  workdir = tmp_path / "killed"
  metrics = read_metrics(workdir)
  assert [m["step"] for m in metrics] == list(range(20, 161, 20))
  scalars, texts = read_events(workdir)
  for key in ("train_loss", "eval_loss", "learning_rate", "steps_per_second", "wall_seconds"):
    steps, values = zip(*scalars[key])
    assert list(steps) == [m["step"] for m in metrics], key           # none twice, none lost
    np.testing.assert_allclose(values, [m[key] for m in metrics], rtol=1e-6, err_msg=key)
  assert len(texts) == 1 and texts[0].step == 0
  assert b'"num_keys": 6' in texts[0].tensor_proto.string_val[0]


def test_sigterm_saves_a_checkpoint_before_exiting(tmp_path):
  proc = _start(tmp_path)
  _wait_for_metrics(tmp_path, 2, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
  assert "Received SIGTERM: saved a checkpoint at step" in out
  step = int(out.split("saved a checkpoint at step ")[1].split(";")[0])
  assert str(step) in os.listdir(tmp_path / "checkpoints")


def test_corrupt_latest_checkpoint_is_skipped(tmp_path):
  workdir = str(tmp_path)
  train.train(_tiny_config(max_steps=40), workdir)
  latest = tmp_path / "checkpoints" / "40"
  for root, _, files in os.walk(latest):      # truncate every file of the newest checkpoint
    for name in files:
      open(os.path.join(root, name), "w").close()
  summary = train.train(_tiny_config(max_steps=60), workdir)
  assert summary["steps"] == 60
  assert [m["step"] for m in read_metrics(workdir)] == [20, 40, 60]
  assert any(name.startswith("40.unreadable") for name in os.listdir(tmp_path / "checkpoints"))


def test_unwritable_workdir_fails_at_start(tmp_path):
  target = tmp_path / "file"
  target.write_text("not a directory")
  try:
    train.train(_tiny_config(), str(target / "run"))
  except (ValueError, OSError) as error:
    assert "run" in str(error)
  else:
    raise AssertionError("expected a failure at start")


def test_restore_from_starts_a_new_run_from_another_runs_weights(tmp_path):
  source, new = str(tmp_path / "source"), str(tmp_path / "new")
  train.train(_tiny_config(max_steps=40), source)
  train.train(_tiny_config(max_steps=20), new,
              restore_from=os.path.join(source, "checkpoints"))
  first = read_metrics(new)[0]
  assert first["step"] == 20
  assert first["eval_loss"] < read_metrics(source)[0]["eval_loss"]
  with open(os.path.join(new, "summary.json")) as f:
    assert json.load(f)["steps"] == 20


def test_a_second_launch_on_a_running_workdir_is_refused(tmp_path):
  long_run = [a for a in ARGS if not a.startswith("--config.max_steps")] + [
      "--config.max_steps=1000000"]
  proc = _start(tmp_path, long_run)
  _wait_for_metrics(tmp_path, 1, proc)
  second = launch(*ARGS, f"--workdir={tmp_path}")
  assert second.returncode != 0
  assert "is in use by a run that is still going (pid " in second.stderr, second.stderr[-2000:]
  proc.send_signal(signal.SIGKILL)               # a killed run leaves no stale lock
  proc.communicate()
  short = [a for a in ARGS if not a.startswith("--config.max_steps")] + ["--config.max_steps=40"]
  resumed = launch(*short, f"--workdir={tmp_path}")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "Resuming from step" in resumed.stdout
