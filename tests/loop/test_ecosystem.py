"""fwp in the JAX research ecosystem: TensorBoard event files that mirror metrics.jsonl (across a
SIGKILL and a resume: tests/loop/test_resume.py), profiler traces by flag that change nothing,
an installable `fwp`, and the guided tour, executed so it never rots."""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
from tensorboard.backend.event_processing import event_accumulator

from experiments import train
from tests.helpers import ROOT, read_metrics, tiny_retrieval_config

pytestmark = pytest.mark.slow   # processes: launch.py, pip, the tour


def read_events(workdir):
  """{tag: [(step, value)]} and the config text, through TensorBoard's own reader."""
  events = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"),
                                              size_guidance={event_accumulator.SCALARS: 0,
                                                             event_accumulator.TENSORS: 0})
  events.Reload()
  scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)]
             for tag in events.Tags()["scalars"]}
  texts = [e for tag in events.Tags()["tensors"] if tag.startswith("config")
           for e in events.Tensors(tag)]
  return scalars, texts


# The event files across a SIGKILL and resume: tests/loop/test_resume.py's SIGKILL test.


def _tiny(**overrides):
  return tiny_retrieval_config(max_steps=12, eval_every=4, checkpoint_every=4, **overrides)


def test_a_profile_by_flag_writes_a_trace_and_changes_nothing(tmp_path):
  plain = train.train(_tiny(tensorboard=False), str(tmp_path / "plain"))
  traced = train.train(_tiny(profile_steps="2:5"), str(tmp_path / "traced"))
  found = [name for _, _, files in os.walk(tmp_path / "traced" / "profile") for name in files]
  assert any(name.endswith(".xplane.pb") for name in found), found
  assert any(name.endswith(".trace.json.gz") for name in found), found
  assert not (tmp_path / "plain" / "tensorboard").exists()
  assert (plain["final_eval_loss"], plain["steps"]) == (traced["final_eval_loss"],
                                                         traced["steps"])
  strip = lambda ms: [{k: v for k, v in m.items() if k not in train.TIMING_FIELDS} for m in ms]
  assert strip(read_metrics(tmp_path / "plain")) == strip(read_metrics(tmp_path / "traced"))
  with pytest.raises(ValueError, match="profile_steps must be 'START:STOP'"):
    train.validate(_tiny(profile_steps="5:2"))


def test_fwp_installs_into_a_fresh_venv_and_imports_from_anywhere(tmp_path):
  """`pip install .` into a scratch venv (whose only other packages are this environment's, for
  JAX and Flax), then `import fwp` from outside the checkout."""
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = str(venv / "bin" / "python")
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip()
  with open(os.path.join(site, "deps.pth"), "w") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  source = tmp_path / "source"           # a copy, so the build leaves nothing in the checkout
  source.mkdir()
  for name in ("pyproject.toml", "README.md"):
    (source / name).write_bytes(open(os.path.join(ROOT, name), "rb").read())
  subprocess.run(["cp", "-r", os.path.join(ROOT, "fwp"), str(source / "fwp")], check=True)
  install = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
                            "--no-deps", str(source)], capture_output=True, text=True,
                           timeout=600)
  assert install.returncode == 0, install.stderr[-3000:]
  out = subprocess.run([python, "-c", "import fwp, fwp.ops, fwp.lm; print(fwp.__file__)"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().startswith(site), out.stdout


def test_the_guided_tour_runs(tmp_path):
  env = dict(os.environ, FWP_TOUR_STEPS="8", FWP_TOUR_MAX_KEYS="60", FWP_TOUR_OUT=str(tmp_path))
  result = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "tour.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  for text in ("delta rule,  parallel: max |y − y_recurrent|", "fraction of keys retrieved",
               "valid bits per byte after 8 steps", "after  8192 tokens: linear-delta"):
    assert text in result.stdout, text
  assert (tmp_path / "tour_memory.png").exists()


def test_a_tensorboard_symlink_is_rebuilt_in_its_target_on_resume(tmp_path):
  # rmtree refuses a symlink (silently, under ignore_errors): a resumed run whose tensorboard/
  # points at a shared logdir showed its steps twice. Only event files go; the link stays.
  from experiments import event_log
  shared, workdir = tmp_path / "logdir", tmp_path / "run"
  shared.mkdir()
  workdir.mkdir()
  (shared / "notes.txt").write_text("someone else's")
  os.symlink(shared, workdir / "tensorboard")
  history = [{"step": 10, "eval_loss": 1.0}, {"step": 20, "eval_loss": 0.5}]
  event_log.EventLog(str(workdir), {"seed": 1}, history).close()     # a launch
  first = next(n for n in os.listdir(shared) if n.startswith(event_log.EVENTS))
  shutil.copy(shared / first, shared / f"{event_log.EVENTS}1.stale")  # an older launch's file
  event_log.EventLog(str(workdir), {"seed": 1}, history).close()     # its resume from step 20
  assert os.path.islink(workdir / "tensorboard") and (shared / "notes.txt").exists()
  assert len([n for n in os.listdir(shared) if n.startswith(event_log.EVENTS)]) == 1
  scalars, _ = read_events(workdir)
  assert scalars["eval_loss"] == [(10, 1.0), (20, 0.5)]
