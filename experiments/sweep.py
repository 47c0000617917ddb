"""Sweeps: a grid of config overrides (a range of one field × seeds), each point in its own
sub-directory of the sweep's workdir. Points run in-process, as parallel local processes, or one
at a time by index (a cluster job array)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
from concurrent import futures


def _value(text: str):
  """A sweep value as written: an integer, else a number, else a string (the field's own type
  is applied when the value is set, see `set_field`)."""
  text = text.strip()
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def parse_range(spec: str) -> tuple[str, list]:
  """'num_keys=20:600:20' -> ('num_keys', [20, 40, ..., 600]) (inclusive end); 'a=1,5,9' and
  'model.form=recurrent,chunked' too. The field may be nested (model.d_model)."""
  if "=" not in spec:
    raise ValueError(f"--sweep must look like FIELD=START:STOP:STEP or FIELD=V1,V2,..., "
                     f"got {spec!r}.")
  field, values = spec.split("=", 1)
  if ":" in values:
    try:
      start, stop, step = (int(x) for x in values.split(":"))
      if step <= 0 or stop < start:
        raise ValueError
    except ValueError:
      raise ValueError(f"--sweep values must be START:STOP:STEP (integers, STEP > 0, STOP >= "
                       f"START) or a comma-separated list, got {values!r}.") from None
    points = list(range(start, stop + 1, step))
  else:
    points = [_value(x) for x in values.split(",")]
    if any(p == "" for p in points):
      raise ValueError(f"--sweep has an empty value in {values!r}.")
  if not field.strip():
    raise ValueError(f"--sweep needs a config field before '=', got {spec!r}.")
  # A repeated value would be two runs in one workdir (the second refused by its lock).
  return field.strip(), list(dict.fromkeys(points))


def points(sweep: str | None, seeds: list[int]) -> list[dict]:
  """Every (field value, seed) combination as a dict of config overrides. Sweeping `seed`
  itself is a seed sweep: one point per seed (then `seeds` must not be given too)."""
  if sweep is None:
    return [{"seed": s} for s in seeds]
  field, values = parse_range(sweep)
  if field == "seed":
    if not all(isinstance(v, int) for v in values):
      raise ValueError(f"--sweep=seed=... needs integer seeds, got {values}.")
    return [{"seed": v} for v in values]
  seeds = list(dict.fromkeys(seeds))
  return [{field: v, "seed": s} for v, s in itertools.product(values, seeds)]


def set_field(config, path: str, value) -> None:
  """config.<path> = value for a (possibly nested) field path, in the field's own type (an
  integer into a float field, a number into a string field such as chunk_size). Raises
  ValueError naming the field and the valid ones."""
  *parents, name = path.split(".")
  node = config
  for i, key in enumerate(parents + [name]):
    if not hasattr(node, "keys") or key not in node:
      fields = sorted(k for k in node.keys()) if hasattr(node, "keys") else []
      where = ".".join(path.split(".")[:i])
      raise ValueError(f"--sweep names {path!r}, which is not a config field; fields"
                       f"{' of ' + where if where else ''}: {', '.join(fields)}.")
    if key != name:
      node = node[key]
  current = node[name]
  if hasattr(current, "keys"):
    raise ValueError(f"--sweep names {path!r}, a group of fields; sweep one of them: "
                     f"{', '.join(sorted(current.keys()))}.")
  if isinstance(current, bool) and str(value).lower() in ("true", "false"):
    value = str(value).lower() == "true"
  elif isinstance(current, str):
    value = str(value)
  elif isinstance(current, float) and isinstance(value, int):
    value = float(value)
  elif not isinstance(value, type(current)) or isinstance(current, bool):
    raise ValueError(f"--sweep value {value!r} for {path} is not a {type(current).__name__} "
                     f"(the field holds {current!r}).")
  node[name] = value


def point_config(config, overrides: dict):
  """A copy of `config` with one point's overrides set (see `set_field`)."""
  point = config.copy_and_resolve_references()
  for path, value in overrides.items():
    set_field(point, path, value)
  return point


def point_dir(workdir: str, overrides: dict) -> str:
  name = ",".join(f"{k}={v:04d}" if isinstance(v, int) else f"{k}={v}"
                  for k, v in overrides.items())
  return os.path.join(workdir, name)


def single_threaded_env() -> dict:
  """This process's environment with XLA:CPU at one thread, for processes that share the cores."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
  return env


def run_processes(commands: list[list[str]], parallel: int, logs: list[str] | None = None,
                  env: dict | None = None, on_exit=None) -> list[int]:
  """Runs each command as a process, `parallel` at a time (output to its log file when `logs`
  is given), and returns their exit codes; `on_exit(index, code)`, when given, is called as
  each ends (one call at a time). SIGTERM/SIGINT is passed to every running process (each saves
  a checkpoint and exits), no new one starts, and once they have ended SystemExit (128 + the
  signal) is raised, so a relaunch never races a process left running."""
  running, lock, exit_lock, stopping = set(), threading.Lock(), threading.Lock(), []

  def start(index):
    with lock:
      if stopping:
        return -stopping[0]              # not started: the processes are being stopped
      out = None
      if logs:
        os.makedirs(os.path.dirname(logs[index]) or ".", exist_ok=True)
        out = open(logs[index], "a")
      child = subprocess.Popen(commands[index], env=env, stdout=out,
                               stderr=subprocess.STDOUT if out else None)
      running.add(child)
    try:
      code = child.wait()
    finally:
      with lock:
        running.discard(child)
      if out:
        out.close()
    if on_exit is not None:
      with exit_lock:
        on_exit(index, code)
    return code

  def forward(signum, frame):
    del frame
    with lock:
      stopping.append(signum)
      for child in running:
        child.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    with futures.ThreadPoolExecutor(parallel) as pool:
      codes = list(pool.map(start, range(len(commands))))
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  if stopping:
    raise SystemExit(128 + stopping[0])
  return codes


def run_parallel(argv: list[str], num_points: int, parallel: int) -> int:
  """Re-launches this command once per point with --sweep_index, `parallel` at a time, each
  process single-threaded so they do not fight over cores. Returns the number of failures."""
  args = [a for a in argv if not a.startswith(("--parallel", "--sweep_index"))]
  commands = [[sys.executable] + args + [f"--sweep_index={i}"] for i in range(num_points)]
  codes = run_processes(commands, parallel, env=single_threaded_env())
  return sum(code != 0 for code in codes)
