"""Grids as configs (configs/grids/, experiments/grid.py): every declared grid loads for every
argument its docstring names, and each of its launches names a real config and real fields;
points are numbered as launch.py numbers them, declared twice they run once; bad arguments are
refused by name; and a tiny grid runs end to end (records saved, the report stamped with the
grid command), a relaunch skips every finished point, and a fresh runs directory is restored
from the records instead of retrained."""

import glob
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from configs.grids import Grid, Launch, args
from experiments import grid as grid_lib
from experiments import sweep
from tests.helpers import CONFIG, ROOT

GRID_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "grids", "[a-z]*.py")))


def _documented_args(path):
  """The arguments the grid file's docstring runs it with (None: no argument)."""
  text = open(path, encoding="utf-8").read()
  name = os.path.relpath(path, ROOT)
  found = set(re.findall(rf"--grid={re.escape(name)}(?::([\w,]+))?", text))
  return sorted({a or None for a in found}, key=str) or [None]


def _config(spec):
  path, _, name = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_grid_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(name)


def _has_field(config, dotted):
  node = config
  for key in dotted.split("."):
    if not hasattr(node, "keys") or key not in node:
      return False
    node = node[key]
  return True


@pytest.mark.fast
@pytest.mark.parametrize("path", GRID_FILES, ids=os.path.basename)
def test_every_grid_names_real_configs_and_fields(path, subtests):
  for arg in _documented_args(path):
    grid = grid_lib.load(f"{path}:{arg}" if arg else path)
    assert grid.launches and grid.runs.startswith("runs/"), grid.name
    configs = {}
    for launch in grid.launches:
      with subtests.test(grid=grid.name, arg=arg, workdir=launch.workdir):
        config = configs.get(launch.config) or configs.setdefault(launch.config,
                                                                  _config(launch.config))
        for flag in launch.flags:
          assert flag.startswith("--config.") and "=" in flag, flag
          assert _has_field(config, flag[len("--config."):].split("=")[0]), flag
        if launch.sweep:
          field, values = sweep.parse_range(launch.sweep)
          assert _has_field(config, field) and values, launch.sweep
    labels = [label for label, _ in grid_lib.commands(grid)]
    assert len(labels) == len(set(labels)), grid.name


@pytest.mark.fast
def test_points_are_numbered_as_launch_py_numbers_them_and_run_once():
  grid = Grid("g", "runs/g", (
      Launch(f"{CONFIG}:linear-sum", "s1/linear-sum", ("--config.setting=1",),
             sweep="num_keys=20,40", seeds=(1, 2)),
      Launch(f"{CONFIG}:linear-sum", "s1/linear-sum", ("--config.setting=1",),
             sweep="num_keys=20", seeds=(1,)),                   # a point declared again
      Launch("configs/language_model.py:linear-delta", "lm", seeds=(1, 3), seed_dirs=True),
      Launch(f"{CONFIG}:softmax", "one")))
  todo = grid_lib.commands(grid, python="PY")
  assert [label for label, _ in todo] == [
      "runs/g/s1/linear-sum/num_keys=0020,seed=0001", "runs/g/s1/linear-sum/num_keys=0020,seed=0002",
      "runs/g/s1/linear-sum/num_keys=0040,seed=0001", "runs/g/s1/linear-sum/num_keys=0040,seed=0002",
      "runs/g/lm/seed=1", "runs/g/lm/seed=3", "runs/g/one"]
  assert todo[2][1] == ["PY", "launch.py", f"--config={CONFIG}:linear-sum", "--config.setting=1",
                        "--sweep=num_keys=20,40", "--seeds=1,2",
                        "--workdir=runs/g/s1/linear-sum", "--sweep_index=2"]
  assert todo[5][1] == ["PY", "launch.py", "--config=configs/language_model.py:linear-delta",
                        "--config.seed=3", "--workdir=runs/g/lm/seed=3"]
  assert todo[6][1] == ["PY", "launch.py", f"--config={CONFIG}:softmax", "--workdir=runs/g/one"]
  again = grid_lib.commands(grid_lib.with_seeds(grid, ["7"]), python="PY")
  assert [label for label, _ in again] == [
      "runs/g/s1/linear-sum/num_keys=0020,seed=0007", "runs/g/s1/linear-sum/num_keys=0040,seed=0007",
      "runs/g/lm/seed=7", "runs/g/one"]
  assert again[-1][1][-2:] == ["--seeds=7", "--workdir=runs/g/one"]


# A stand-in for `python launch.py ...`: writes the point's summary.json; the second seed's
# point first checks that the first's record was saved when the first ended (exit 1 if not).
FAKE_LAUNCH = """#!{python}
import json, os, sys
workdir = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--workdir=")][0]
if workdir.endswith("seed=2") and not os.path.exists(
    os.path.join(os.environ["FAKE_RECORDS"], "point", "seed=1", "summary.json")):
  sys.exit(1)
os.makedirs(workdir, exist_ok=True)
json.dump({{"steps": 1}}, open(os.path.join(workdir, "summary.json"), "w"))
"""


@pytest.mark.fast
def test_records_are_saved_as_each_point_finishes(tmp_path, monkeypatch):
  # A machine lost mid-grid (a session's clock, a preemption) keeps what finished before it.
  fake = tmp_path / "fake_python"
  fake.write_text(FAKE_LAUNCH.format(python=sys.executable))
  fake.chmod(0o755)
  records = tmp_path / "records"
  monkeypatch.setenv("FAKE_RECORDS", str(records))
  grid = Grid("g", str(tmp_path / "runs"), (Launch(f"{CONFIG}:linear-sum", "point", seeds=(1, 2),
                                                   seed_dirs=True),),
              records=str(records), parallel=1)
  assert grid_lib.run(grid, python=str(fake)) == 0          # the second point found the record
  assert sorted(os.listdir(records / "point")) == ["seed=1", "seed=2"]


@pytest.mark.fast
def test_bad_grid_arguments_are_refused_by_name(tmp_path):
  with pytest.raises(ValueError, match=r"Unknown grid argument 'kneee'; valid choices: grid: "
                                       r"budget, knee, forget, full; variant: before, authors"):
    grid_lib.load(os.path.join(ROOT, "configs/grids/retrieval.py:kneee"))
  with pytest.raises(ValueError, match=r"No grid file .*nope.py'; the grids: configs/grids/"):
    grid_lib.load(str(tmp_path / "nope.py"))
  with pytest.raises(ValueError, match="valid choices: variant: fwp, authors"):
    args("before", {"variant": ("fwp", "authors")}, {"variant": "fwp"})
  grid = grid_lib.load(os.path.join(ROOT, "configs/grids/lm.py"))
  with pytest.raises(ValueError, match=r"--only=zzz matches no point of grid lm_grid; its "
                                       r"points: runs/lm_grid/transformer/seed=1"):
    grid_lib.run(grid, only=["zzz"], dry_run=True)
  with pytest.raises(ValueError, match="--seeds must be non-negative integers, got 1,x"):
    grid_lib.with_seeds(grid, ["1", "x"])


TINY_GRID = '''
from configs.grids import Grid, Launch

def get_grid(arg=None):
  flags = ("--config.max_steps=20", "--config.eval_every=10")
  return Grid(name="tiny", runs={runs!r}, out={out!r}, records={records!r}, launches=(
      Launch("{config}:linear-sum", "setting1/linear-sum", flags, sweep="num_keys=4,6",
             seeds=(1,)),
      Launch("{config}:linear-delta", "setting1/linear-delta", flags + ("--config.num_keys=4",),
             seeds=(2,), seed_dirs=True)))
'''


@pytest.mark.slow
def test_a_tiny_grid_runs_resumes_and_is_restored_from_its_records(tmp_path):
  runs, out, records = tmp_path / "runs", tmp_path / "results", tmp_path / "records"
  grid_file = tmp_path / "tiny.py"
  grid_file.write_text(TINY_GRID.format(runs=str(runs), out=str(out), records=str(records),
                                        config=CONFIG))
  command = [sys.executable, "-m", "experiments.grid", f"--grid={grid_file}", "--parallel=2"]

  def run_grid(*extra):
    result = subprocess.run(command + list(extra), cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result

  first = run_grid()
  assert "Grid tiny: 3 points, 2 at a time" in first.stdout
  finished = sorted(os.path.relpath(os.path.dirname(p), runs)
                    for p in glob.glob(str(runs / "**" / "summary.json"), recursive=True))
  assert finished == ["setting1/linear-delta/seed=2",
                      "setting1/linear-sum/num_keys=0004,seed=0001",
                      "setting1/linear-sum/num_keys=0006,seed=0001"]
  assert sorted(glob.glob(str(records / "**" / "summary.json"), recursive=True)) == sorted(
      str(records / f / "summary.json") for f in finished)
  table = (out / "associative_recall.md").read_text()
  assert f"Made by `python -m experiments.grid --grid={grid_file} --parallel=2`" in table
  assert "| linear-sum | " in table and "| linear-delta | " in table
  # Relaunched: every point is found finished (its log says so), nothing retrains.
  run_grid("--only=linear-delta")
  log = runs / "logs" / "setting1__linear-delta__seed=2.log"
  assert log.read_text().count("Already finished (max_steps at step 20)") == 1
  # A fresh machine: no runs directory, only the records; they are restored and skipped.
  os.rename(runs, tmp_path / "elsewhere")
  run_grid("--only=num_keys=0006")
  assert "Already finished" in (runs / "logs" / "setting1__linear-sum__num_keys=0006,seed=0001.log"
                                ).read_text()
  assert not (runs / "setting1" / "linear-sum" / "num_keys=0006,seed=0001" / "checkpoints").exists()
