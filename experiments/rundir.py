"""One run's directory and its rules: the lock, config.json, metrics.jsonl, summary.json, and
whether a relaunch resumes, continues a finished run, or is refused.

  WORKDIR/.lock            held (flock) by the training process; the kernel drops it on death
  WORKDIR/config.json      the config, plus `data_identity` (what data the run read)
  WORKDIR/metrics.jsonl    one line per evaluation, cut back to the checkpoint on resume
  WORKDIR/summary.json     written when the run ends; its presence means finished
  WORKDIR/checkpoints/     orbax (experiments.checkpoint)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import tempfile
import time

import jax

from experiments import distributed, results
from experiments.tasks import common

# Loop fields that may change between a run and its resumption: they change neither model nor
# data. Each family adds its own (its module's RESUMABLE).
RESUMABLE = ("max_steps", "patience", "stop_loss", "checkpoint_every", "keep_checkpoints",
             "mesh_shape", "tensorboard", "profile_steps", "steps_per_call",
             "host_memory")
# Loop fields added after runs already existed, with the value those runs used implicitly: a
# saved config without one of them resumes when the current value is this one. Each family adds
# its own (its module's ADDED_FIELDS).
ADDED_FIELDS = {"task": "associative_recall", "lr_schedule": "constant", "warmup_steps": 0,
                "grad_clip": 0.0, "optimizer": "adam", "beta1": 0.9, "beta2": 0.999,
                "weight_decay": 0.0, "adam_eps": 1e-8, "steps_per_call": 1,
                "host_memory": "system"}
# config.json's record of the data a run trained on (a family's `data_identity`), checked apart
# from the config's fields.
DATA_IDENTITY = "data_identity"


def prepare(workdir: str | None) -> str:
  """The workdir, created (a temporary one when None) and checked writable."""
  if workdir is None:
    if jax.process_count() > 1:
      raise ValueError("A multi-process run needs --workdir on a filesystem all processes share.")
    workdir = tempfile.mkdtemp(prefix="fwp-")
    print(f"No --workdir given; writing to {workdir}", flush=True)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"Workdir {workdir!r} is a file, not a directory: pass a directory path.")
  probe = os.path.join(workdir, f".write-test-{jax.process_index()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as error:
    raise ValueError(f"Workdir {workdir!r} cannot be written ({error}); pass a directory you "
                     f"can write (and with free space).") from error
  return workdir


@contextlib.contextmanager
def lock(workdir: str):
  """One run per workdir: process 0 holds an exclusive flock on workdir/.lock while it trains.
  The kernel drops the lock when the process dies, however it dies, so none is ever stale."""
  if not distributed.is_main():
    yield
    return
  path = os.path.join(workdir, ".lock")
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
      raise ValueError(f"Workdir {workdir!r} is in use by a run that is still going ({holder}). "
                       f"Wait for it, stop it, or use another --workdir.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
    yield
  finally:
    os.close(fd)


def read_json(path: str, what: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as error:
    raise ValueError(f"{path} ({what}) is not valid JSON ({error}): restore it, delete it to "
                     f"start that part over, or use a new --workdir.") from None


def write_json(path: str, obj) -> None:
  """Atomically (a temporary, then a rename); a failed write (a full disk) leaves no temporary
  behind and raises ValueError saying what could not be written."""
  if not distributed.is_main():
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  except OSError as error:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise ValueError(f"Cannot write {path} ({error.strerror or error}): free some space (or "
                     f"fix the permissions) and relaunch; the run's checkpoints are "
                     f"kept.") from None


def read_metrics(path: str, up_to_step: int) -> list[dict]:
  """The eval records up to `up_to_step`. A line that does not parse (a crash mid-write, a
  truncated file) is dropped with a warning: the resumed run writes its evals again."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        step = int(record["step"])
      except (ValueError, KeyError, TypeError):
        print(f"Warning: {path} line {number} is not a metrics record; dropping it.", flush=True)
        continue
      if step <= up_to_step:
        records.append(record)
  return records


def family_runs(finished: list[tuple[str, dict]], task: str, shown=("model",)) -> list[dict]:
  """{directory, summary, metrics, config, group, label} of each finished run of `task` among
  (directory, summary) pairs (a report's first step), grouped into settings by
  results.label_settings (runs that share the `shown` fields and every other config field but
  the seed); a run that never evaluated is skipped, saying so."""
  runs = []
  for directory, summary in finished:
    if summary.get("task") != task:
      continue
    metrics = read_metrics(os.path.join(directory, "metrics.jsonl"), summary["steps"])
    if not metrics:
      print(f"Skipping {directory}: it never evaluated.", flush=True)
      continue
    runs.append(dict(directory=directory, summary=summary, metrics=metrics,
                     config=results.read_config(directory, summary)))
  results.label_settings(runs, shown)
  return runs


def check_same_data(saved: dict | None, current: dict | None, remedy: str) -> None:
  """Refuses data other than a run's (config.json's data_identity against the files now read).
  What both records name is compared: a run recorded before a field was added (the WMT14 files'
  content hashes) is checked on what it recorded."""
  shared = sorted(set(saved or {}) & set(current or {}))
  changed = [k for k in shared if saved[k] != current[k]]
  if changed:
    details = ", ".join(f"{k}: {saved[k]!r} -> {current[k]!r}" for k in changed)
    raise ValueError(f"This workdir's run trained on other data than the files now read "
                     f"({details}). {remedy}")


def check_resumable(saved: dict, current: dict, family) -> None:
  """Refuses a resume that would change the model or the data: a changed config field (beyond
  the loop's and the family's RESUMABLE) or other data under the same names (data_identity)."""
  saved, current = dict(saved), dict(current)
  check_same_data(saved.pop(DATA_IDENTITY, None), current.pop(DATA_IDENTITY, None),
                  "Restore the original files, or use a new --workdir.")
  added = {**ADDED_FIELDS, **getattr(family, "ADDED_FIELDS", {})}
  saved_flat, current_flat = results.flatten(saved), results.flatten(current)
  # A family's RESUMABLE, or its resumable(config) when what may change depends on the config.
  own = (family.resumable(current_flat) if hasattr(family, "resumable") else
         getattr(family, "RESUMABLE", ()))
  resumable = RESUMABLE + tuple(own)
  saved_flat = {**{k: v for k, v in added.items() if k in current_flat}, **saved_flat}
  inert = common.inert_fields(current_flat)
  changed = sorted(k for k in set(saved_flat) | set(current_flat)
                   if k not in resumable and k not in inert and
                   saved_flat.get(k) != current_flat.get(k))
  if changed:
    details = ", ".join(f"{k}: {saved_flat.get(k)!r} -> {current_flat.get(k)!r}" for k in changed)
    raise ValueError(f"This workdir holds a run with a different config; these fields change the "
                     f"model or the data: {details}. Use a new --workdir, or restore the old "
                     f"values. Fields that may change on resume: {', '.join(resumable)}.")


def check_schedule(saved: dict | None, config) -> None:
  """A cosine schedule is stretched over max_steps, so resuming a checkpoint under another
  max_steps would change the learning rate of every step still to come (and of none before):
  a run neither of the old length nor of the new one. Refused; a new run from this checkpoint's
  weights (--restore_from) starts a schedule of its own."""
  if saved is None or config.lr_schedule != "cosine":
    return
  old = saved.get("max_steps", config.max_steps)
  if old != config.max_steps:
    raise ValueError(f"This run's cosine schedule decays to 0 at max_steps {old}; resuming it "
                     f"with max_steps {config.max_steps} would re-stretch the schedule "
                     f"mid-run. Keep --config.max_steps={old}, or start a new run from its "
                     f"weights: --restore_from=<this workdir>/checkpoints with a new --workdir.")


def continues(summary: dict, saved: dict | None, config) -> bool:
  """Whether a finished run goes on under this config: a larger max_steps continues a run that
  ran out of steps; a larger patience one stopped by patience; a lower stop_loss one stopped by
  reaching the old stop_loss (it resumes from its last checkpoint and re-checks at each eval)."""
  if summary["steps"] >= config.max_steps:
    return False
  reason = summary["stop_reason"]
  if reason == "max_steps":
    return True
  if reason == "patience":
    return saved is not None and config.patience > saved.get("patience", config.patience)
  if reason == "stop_loss":
    last = summary.get("final_eval_loss")
    return last is not None and config.stop_loss < last
  return False


@dataclasses.dataclass
class RunDir:
  """A workdir opened for training: what it held before this launch."""
  path: str
  config: dict                       # this launch's config.json content
  saved: dict | None                 # the config.json found, if any
  finished: dict | None              # the summary.json of a finished run that stays finished
  continuing: bool                   # a finished run that this config continues

  @classmethod
  def open(cls, path: str, config, family) -> "RunDir":
    """Reads what the workdir holds and refuses a relaunch that would change the run."""
    content = config.to_dict()
    if hasattr(family, "data_identity"):
      content[DATA_IDENTITY] = family.data_identity(config)
    saved = None
    if os.path.exists(cls._path(path, "config.json")):
      saved = read_json(cls._path(path, "config.json"), "the run's config")
      check_resumable(saved, content, family)
    finished, continuing = None, False
    if os.path.exists(cls._path(path, "summary.json")):
      summary = read_json(cls._path(path, "summary.json"), "the finished run's summary")
      if continues(summary, saved, config):
        continuing = True       # e.g. a larger max_steps continues a run that ran out of steps
      else:
        finished = summary
    return cls(path, content, saved, finished, continuing)

  @staticmethod
  def _path(path: str, name: str) -> str:
    return os.path.join(path, name)

  def file(self, name: str) -> str:
    return self._path(self.path, name)

  def record_config(self) -> None:
    write_json(self.file("config.json"), self.config)

  def start(self, step: int) -> list[dict]:
    """The run (re)starts at `step`: config.json written, a continued run's summary removed,
    metrics.jsonl cut back to `step`; returns the eval records up to it."""
    self.record_config()
    if self.continuing:
      distributed.barrier("read-summary")
      if distributed.is_main():
        os.remove(self.file("summary.json"))
        self._forget_stop()
    history = read_metrics(self.file("metrics.jsonl"), step)
    distributed.barrier("read-metrics")
    if distributed.is_main():  # drop lines written after the checkpoint we resume from
      with open(self.file("metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in history)
    return history

  def append_metrics(self, record: dict) -> None:
    if distributed.is_main():
      with open(self.file("metrics.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")

  def write_summary(self, summary: dict) -> None:
    write_json(self.file("summary.json"), summary)
    if distributed.is_main():
      self._forget_stop()

  # A run that stops (early stopping, a target) writes STOP before its final evaluation, so that
  # a relaunch after that evaluation was interrupted (a signal, SIGKILL) evaluates the same
  # checkpoint instead of training on; the summary replaces it.
  STOP = "stopped.json"

  def write_stop(self, step: int, reason: str) -> None:
    write_json(self.file(self.STOP), dict(step=step, stop_reason=reason))

  def stopped_at(self, step: int) -> str | None:
    """The stop reason recorded for `step` (the step resumed from), else None."""
    if not os.path.exists(self.file(self.STOP)):
      return None
    stop = read_json(self.file(self.STOP), "the stop before the final evaluation")
    return stop.get("stop_reason") if stop.get("step") == step else None

  def _forget_stop(self) -> None:
    with contextlib.suppress(FileNotFoundError):
      os.remove(self.file(self.STOP))
