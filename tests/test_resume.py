"""Runs survive being killed: SIGKILL and relaunch, SIGTERM saves, corrupt checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from experiments import checkpoint, train
from tests.test_launch import CONFIG, ROOT, _tiny_config, launch, read_metrics

ARGS = [f"--config={CONFIG}:dpfp1-delta", "--config.num_keys=6", "--config.max_steps=160",
        "--config.eval_every=20", "--config.checkpoint_every=20"]


def _start(workdir, args=ARGS):
  return subprocess.Popen([sys.executable, "launch.py", *args, f"--workdir={workdir}"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_metrics(workdir, lines, proc, timeout=300):
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.exists(path) and sum(1 for _ in open(path)) >= lines:
      return
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(0.05)
  raise AssertionError("the run did not make progress")


def _final_params(workdir):
  mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), 2)
  state = mngr.restore(mngr.latest_step())
  mngr.close()
  return jax.tree.leaves(state["params"]) + jax.tree.leaves(state["opt_state"])


def _strip(metrics):
  return [{k: v for k, v in m.items() if k not in train.TIMING_FIELDS} for m in metrics]


def sigkill_then_relaunch_matches_an_uninterrupted_run(tmp_path, args=ARGS, lines=3):
  """Kills a run after `lines` evals, relaunches it, and compares metrics and final state with a
  run left alone: bitwise (timing fields aside)."""
  alone, killed = tmp_path / "alone", tmp_path / "killed"
  assert launch(*args, f"--workdir={alone}").returncode == 0
  proc = _start(killed, args)
  _wait_for_metrics(killed, lines, proc)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert not (killed / "summary.json").exists()
  resumed = launch(*args, f"--workdir={killed}")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resuming from step" in resumed.stdout
  assert _strip(read_metrics(alone)) == _strip(read_metrics(killed))
  for a, b in zip(_final_params(alone), _final_params(killed)):
    np.testing.assert_array_equal(a, b)


def test_sigkill_then_relaunch_matches_an_uninterrupted_run(tmp_path):
  sigkill_then_relaunch_matches_an_uninterrupted_run(tmp_path)


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
  resumed = launch(*ARGS, f"--workdir={tmp_path}")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
