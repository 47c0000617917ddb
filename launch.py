"""Launches one run or a sweep of the associative-retrieval experiments.

  python launch.py --config=configs/associative_recall.py:dpfp2-sum --config.num_keys=100 \
      --workdir=runs/dpfp2-sum
  python launch.py --config=configs/associative_recall.py:linear-sum \
      --sweep=num_keys=20:600:20 --seeds=1,2,3 --parallel=2 --workdir=runs/linear-sum

Relaunching the same command on the same --workdir resumes: finished points are skipped and
interrupted ones continue from their latest checkpoint.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import builders, sweep, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and curve, "
                                          "e.g. configs/associative_recall.py:dpfp2-sum.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (a temporary one if unset).")
_SWEEP = flags.DEFINE_string("sweep", None, "FIELD=START:STOP:STEP or FIELD=V1,V2,...; each "
                             "value (× each seed) is a point in its own sub-directory.")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds to run (overrides config.seed).")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Sweep points to run as parallel processes.")
_SWEEP_INDEX = flags.DEFINE_integer(
    "sweep_index", None, "Run only this sweep point (0-based); defaults to $SLURM_ARRAY_TASK_ID "
    "when that is set.")
_RESTORE_FROM = flags.DEFINE_string("restore_from", None, "Start a new run from the latest "
                                    "checkpoint of another run's checkpoints/ directory.")
flags.mark_flag_as_required("config")


def _check_config(config) -> bool:
  try:
    builders.validate(config)
  except ValueError as error:
    raise flags.ValidationError(str(error)) from None
  return True


def _check_sweep(spec) -> bool:
  if spec is not None:
    try:
      sweep.parse_range(spec)
    except ValueError as error:
      raise flags.ValidationError(str(error)) from None
  return True


flags.register_validator("config", _check_config)
flags.register_validator("sweep", _check_sweep)
flags.register_validator("parallel", lambda p: p >= 1, "--parallel must be >= 1.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config = _CONFIG.value
  seeds = [int(s) for s in _SEEDS.value] if _SEEDS.value else [config.seed]
  if _SWEEP.value is None and len(seeds) == 1:
    config.seed = seeds[0]
    train.train(config, _WORKDIR.value, restore_from=_RESTORE_FROM.value)
    return
  if _WORKDIR.value is None:
    raise app.UsageError("A sweep needs --workdir (each point gets a sub-directory of it).")
  grid = sweep.points(_SWEEP.value, seeds)
  index = _SWEEP_INDEX.value
  if index is None and "SLURM_ARRAY_TASK_ID" in os.environ:
    index = int(os.environ["SLURM_ARRAY_TASK_ID"])
  if index is not None:
    if not 0 <= index < len(grid):
      raise app.UsageError(f"--sweep_index={index} is out of range: this sweep has "
                           f"{len(grid)} points (0..{len(grid) - 1}).")
    selected = [grid[index]]
  elif _PARALLEL.value > 1:
    failures = sweep.run_parallel(sys.argv, len(grid), _PARALLEL.value)
    if failures:
      raise SystemExit(f"{failures} of {len(grid)} sweep points failed.")
    return
  else:
    selected = grid
  for overrides in selected:
    point_config = config.copy_and_resolve_references()
    for key, value in overrides.items():
      point_config[key] = value
    builders.validate(point_config)
    workdir = sweep.point_dir(_WORKDIR.value, overrides)
    print(f"Sweep point {overrides} -> {workdir}", flush=True)
    train.train(point_config, workdir)


if __name__ == "__main__":
  app.run(main)
