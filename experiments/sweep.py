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


def parse_range(spec: str) -> tuple[str, list[int]]:
  """'num_keys=20:600:20' -> ('num_keys', [20, 40, ..., 600]) (inclusive end); 'a=1,5,9' too."""
  if "=" not in spec:
    raise ValueError(f"--sweep must look like FIELD=START:STOP:STEP or FIELD=V1,V2,..., "
                     f"got {spec!r}.")
  field, values = spec.split("=", 1)
  try:
    if ":" in values:
      start, stop, step = (int(x) for x in values.split(":"))
      if step <= 0 or stop < start:
        raise ValueError
      points = list(range(start, stop + 1, step))
    else:
      points = [int(x) for x in values.split(",")]
  except ValueError:
    raise ValueError(f"--sweep values must be START:STOP:STEP (STEP > 0, STOP >= START) or a "
                     f"comma-separated list of integers, got {values!r}.") from None
  if not field.strip():
    raise ValueError(f"--sweep needs a config field before '=', got {spec!r}.")
  # A repeated value would be two runs in one workdir (the second refused by its lock).
  return field, list(dict.fromkeys(points))


def points(sweep: str | None, seeds: list[int]) -> list[dict]:
  """Every (field value, seed) combination as a dict of config overrides."""
  if sweep is None:
    return [{"seed": s} for s in seeds]
  field, values = parse_range(sweep)
  seeds = list(dict.fromkeys(seeds))
  return [{field: v, "seed": s} for v, s in itertools.product(values, seeds)]


def point_dir(workdir: str, overrides: dict) -> str:
  name = ",".join(f"{k}={v:04d}" if isinstance(v, int) else f"{k}={v}"
                  for k, v in overrides.items())
  return os.path.join(workdir, name)


def run_parallel(argv: list[str], num_points: int, parallel: int) -> int:
  """Re-launches this command once per point with --sweep_index, `parallel` at a time, each
  process single-threaded so they do not fight over cores. Returns the number of failures."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
  args = [a for a in argv if not a.startswith(("--parallel", "--sweep_index"))]

  running, lock, stopping = set(), threading.Lock(), []

  def launch(index):
    with lock:
      if stopping:
        return -stopping[0]              # not started: the sweep is being stopped
      child = subprocess.Popen([sys.executable] + args + [f"--sweep_index={index}"], env=env)
      running.add(child)
    code = child.wait()
    with lock:
      running.discard(child)
    return code

  def forward(signum, frame):
    """SIGTERM/SIGINT: pass it to every running point (each saves a checkpoint and exits), start
    no new one, and wait for them, so a relaunch never races a child left running."""
    del frame
    with lock:
      stopping.append(signum)
      for child in running:
        child.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    with futures.ThreadPoolExecutor(parallel) as pool:
      codes = list(pool.map(launch, range(num_points)))
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  if stopping:
    raise SystemExit(128 + stopping[0])
  return sum(code != 0 for code in codes)
