r"""Launches one run or a sweep of any experiment family; the config file picks the family.

  python launch.py --config=configs/associative_recall.py:dpfp2-sum --config.num_keys=100 \
      --workdir=runs/dpfp2-sum
  python launch.py --config=configs/associative_recall.py:linear-sum \
      --sweep=num_keys=20:600:20 --seeds=1,2,3 --parallel=2 --workdir=runs/linear-sum
  python launch.py --config=configs/language_model.py:linear-delta --workdir=runs/lm
  python launch.py --config=configs/wikitext103.py:small-linear-delta \
      --config.data_dir=/data/wikitext-103 --workdir=runs/wt103

Families and their config files:
  associative retrieval   configs/associative_recall.py:<curve>  (e.g. dpfp2-sum, linear-delta)
  language modelling      configs/language_model.py:<model>      (pydoc bytes, CPU-sized)
                          configs/wikitext103.py:<size>-<model>  (the paper's WikiText-103)
  algorithmic tasks       configs/algorithmic.py:<problem>-<model>  (code5-linear-delta_rnn, ...)
                          configs/algorithmic_cpu.py:<problem>-<model>  (CPU-sized)
  formal languages        configs/formal_languages.py:<task>-<model>  (parity-lstm, s3-..., CPU-sized)
  translation             configs/translation.py:<model>   (Debian's catalogs, CPU-sized)
                          configs/wmt14.py:<model>         (the paper's WMT14 En-De, Table 1)
List a config's fields, their values and meanings (and train nothing):
  python launch.py --config=configs/language_model.py:linear-delta --show_config
Change a field with --config.FIELD=VALUE (nested: --config.model.d_model=64). --sweep takes one
field, nested or not (--sweep=model.d_model=64,128); --sweep=seed=1,2,3 is a seed sweep.

Relaunching the same command on the same --workdir resumes: finished points are skipped and
interrupted ones continue from their latest checkpoint.
"""

import importlib.util
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from configs import common
from experiments import distributed, sweep, train

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
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process training: host:port of process 0's coordinator "
    "(with --num_processes and --process_id).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.",
                                      lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.",
                                   lower_bound=0)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Start jax.distributed and detect the processes from the cluster "
    "environment (SLURM, Open MPI, Kubernetes, TPU pods); explicit flags above take precedence.")
_SHOW_CONFIG = flags.DEFINE_bool("show_config", False, "Print every field of --config with its "
                                 "value and meaning, then exit without training.")
flags.mark_flag_as_required("config")


def _check_config(config) -> bool:
  """At flag parsing: the message alone (absl's ValidationError would print the whole config
  before it), then warnings for values that are legal but probably not meant."""
  try:
    train.validate(config)
  except ValueError as error:
    print(f"Error: --config: {error}", file=sys.stderr, flush=True)
    raise SystemExit(1) from None
  for warning in train.config_warnings(config):
    print(f"Warning: {warning}", file=sys.stderr, flush=True)
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
flags.register_validator("seeds", lambda seeds: seeds is None or all(
    s.strip().lstrip("-").isdigit() for s in seeds), "--seeds must be a comma-separated list of "
    "integers, e.g. --seeds=1,2,3.")


@flags.multi_flags_validator(["coordinator_address", "num_processes", "process_id",
                              "distributed", "parallel"])
def _check_processes(values) -> bool:
  try:
    distributed.check_processes(values["coordinator_address"], values["num_processes"],
                                values["process_id"], detect=values["distributed"])
  except ValueError as error:
    raise flags.ValidationError(str(error)) from None
  multi = values["distributed"] or any(
      values[k] is not None for k in ("coordinator_address", "num_processes", "process_id"))
  if multi and values["parallel"] > 1:
    raise flags.ValidationError("--parallel runs sweep points as separate processes; it cannot "
                                "be combined with multi-process training of one point.")
  return True


def main(argv):
  """Runs the config; a ValueError (a bad value found at run time: a workdir holding another run,
  a mismatched checkpoint, ...) ends with its message and exit status 2, a run stopped on a
  non-finite loss with status 3, so job schedulers see the failure."""
  try:
    summaries = _main(argv)
  except ValueError as error:
    print(f"Error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
  failed = [s for s in summaries if s and s.get("stop_reason") == "non_finite"]
  if failed:
    print(f"Error: {len(failed)} run(s) stopped on a non-finite loss (see metrics.jsonl).",
          file=sys.stderr, flush=True)
    raise SystemExit(3)


def _point_config(config, overrides: dict):
  try:
    return sweep.point_config(config, overrides)
  except ValueError as error:
    raise app.UsageError(str(error)) from None


def _main(argv) -> list:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         detect=_DISTRIBUTED.value)
  config = _CONFIG.value
  if _SHOW_CONFIG.value:
    if _SWEEP.value is None:
      print(show_config(config))
      return []
    for overrides in _distinct_points(config, sweep.points(_SWEEP.value, [config.seed])):
      print(f"# Sweep point {overrides}\n{show_config(_point_config(config, overrides))}\n")
    return []
  if _SWEEP.value and sweep.parse_range(_SWEEP.value)[0] == "seed" and _SEEDS.value:
    raise app.UsageError("Give the seeds once: --sweep=seed=1,2,3 is a seed sweep (or use "
                         "--seeds=1,2,3, which any --sweep also takes).")
  seeds = [int(s) for s in _SEEDS.value] if _SEEDS.value else [config.seed]   # checked at parsing
  if _SWEEP.value is None and len(seeds) == 1:
    config.seed = seeds[0]
    return [train.train(config, _WORKDIR.value, restore_from=_RESTORE_FROM.value)]
  if _WORKDIR.value is None:
    raise app.UsageError("A sweep needs --workdir (each point gets a sub-directory of it).")
  try:
    grid = sweep.points(_SWEEP.value, seeds)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  grid = _distinct_points(config, grid)
  for overrides in grid:            # every point is checked before any trains
    train.validate(_point_config(config, overrides))
  index = _SWEEP_INDEX.value
  if index is None and "SLURM_ARRAY_TASK_ID" in os.environ:
    task_id = os.environ["SLURM_ARRAY_TASK_ID"]
    if not task_id.isdigit():
      raise app.UsageError(f"$SLURM_ARRAY_TASK_ID must be a non-negative integer (the sweep "
                           f"point to run), got {task_id!r}.")
    index = int(task_id)
  if index is not None:
    if not 0 <= index < len(grid):
      raise app.UsageError(f"--sweep_index={index} is out of range: this sweep has "
                           f"{len(grid)} points (0..{len(grid) - 1}).")
    selected = [grid[index]]
  elif _PARALLEL.value > 1:
    failures = sweep.run_parallel(sys.argv, len(grid), _PARALLEL.value)
    if failures:
      raise SystemExit(f"{failures} of {len(grid)} sweep points failed.")
    return []
  else:
    selected = grid
  summaries = []
  for overrides in selected:
    point_config = _point_config(config, overrides)
    workdir = sweep.point_dir(_WORKDIR.value, overrides)
    if distributed.is_main():
      print(f"Sweep point {overrides} -> {workdir}", flush=True)
    summaries.append(train.train(point_config, workdir))
  return summaries


def _distinct_points(config, grid: list[dict]) -> list[dict]:
  """The points of `grid` whose configs differ: values that read the same in the field's type
  (tensorboard=true,True,TRUE) are one point, the first as written (said once). Pure in its
  inputs, so every process of a --parallel or array sweep numbers the points alike."""
  seen, out = {}, []
  for overrides in grid:
    key = json.dumps(_point_config(config, overrides).to_dict(), sort_keys=True, default=str)
    if key in seen:
      if distributed.is_main() and _SWEEP_INDEX.value is None:
        print(f"Note: sweep point {overrides} is the config of {seen[key]}; it runs once.",
              flush=True)
      continue
    seen[key] = overrides
    out.append(overrides)
  return out


def _parse_flags(argv):
  """absl's flag parsing, with a config file's own error (an unknown model name) as its one
  line: ml_collections wraps it in the traceback of the config module's call."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
      lines = [lines[-1]]
    print(f"FATAL Flags parsing error: {' '.join(lines)}\nPass --helpshort or --helpfull to see "
          f"help on flags.", file=sys.stderr)
    raise SystemExit(1) from None


def show_config(config) -> str:
  """Every field of `config`, `path = value  # meaning` (the meanings are the config files'
  own comments, see configs.common.field_meanings)."""
  meanings = common.field_meanings(config.get("task", ""))
  flat = train.flatten(config.to_dict())
  width = max(len(f"{k} = {v!r}") for k, v in flat.items())
  return "\n".join(f"{f'{k} = {v!r}':<{width}}  # {meanings.get(k, '')}".rstrip(" #")
                   for k, v in flat.items())


HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "--helpfull", "-?")


def _print_help() -> None:
  """--help: the docstring (both families, how to list a config's fields) and this launcher's
  flags; exit status 0 (absl's own --help exits 1)."""
  print(__doc__)
  print(flags.FLAGS.main_module_help())


def _check_override_names(argv: list[str]) -> None:
  """`--config.FIELD=...` for a FIELD the config does not have fails inside ml_collections with a
  bare AttributeError; name the field and the valid ones instead, before anything runs."""
  config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if config_arg is None:
    return
  path, *config_args = config_arg.split(":", 1)
  try:
    spec = importlib.util.spec_from_file_location("_fwp_config_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(*config_args)
  except Exception:  # noqa: BLE001 - a bad config file or curve is reported by the flag itself
    return
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0].split(".")
    node = config
    for i, key in enumerate(path):
      if not hasattr(node, "keys") or key not in node:
        fields = sorted(node.keys()) if hasattr(node, "keys") else []
        prefix = ".".join(path[:i]) + "." if i else ""
        sys.exit(f"Error: {arg.split('=')[0]}: the config has no field {prefix}{key}; valid "
                 f"fields{' of ' + prefix[:-1] if prefix else ''}: {', '.join(fields)}.")
      node = node[key]


if __name__ == "__main__":
  if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
    _print_help()
    raise SystemExit(0)
  _check_override_names(sys.argv[1:])
  app.run(main, flags_parser=_parse_flags)
