"""The one train loop, for every task: optax, eval, early stopping, checkpoints, resume.

What a run computes comes from its task (experiments.tasks, picked by config.task): the model,
the batch, the loss, the evaluation. What every run shares is here: the jitted step over
nnx.split state, the optimizer, early stopping, orbax checkpoints and exact resume, SIGTERM, the
data mesh. A run's workdir holds config.json, metrics.jsonl (one line per eval), checkpoints/
and, when the run ends, summary.json. Relaunching on the same workdir resumes from the latest
checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import math
import os
import signal
import socket
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from experiments import checkpoint, distributed, event_log, profiling, progress, results, tasks

# Fields that may change between a run and its resumption: they change neither model nor data.
RESUMABLE_CHANGES = ("max_steps", "patience", "stop_loss", "checkpoint_every",
                     "keep_checkpoints", "model.form", "model.chunk_size", "mesh_shape",
                     "eval_batch_size", "sliding_stride", "cache_dir", "tensorboard",
                     "profile_steps")
# Fields added after runs already existed, with the value those runs used implicitly: a saved
# config without one of them resumes when the current value is this one.
ADDED_FIELDS = {"task": "associative_recall", "lr_schedule": "constant", "warmup_steps": 0,
                "grad_clip": 0.0, "model.recurrence": "none",
                "model.accumulate": "float32", "cache_dir": ""}
# config.json's record of the data a run trained on (a task's `data_identity`), checked apart
# from the config's fields.
DATA_IDENTITY = "data_identity"
TIMING_FIELDS = ("steps_per_second", "wall_seconds")


class _Stop:
  """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step and exits."""

  def __init__(self):
    self.signal = None

  def __enter__(self):
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


flatten = results.flatten


def check_resumable(saved: dict, current: dict) -> None:
  """Refuses a resume that would change the model or the data: a changed config field (beyond
  RESUMABLE_CHANGES) or other data under the same names (config.json's data_identity)."""
  saved, current = dict(saved), dict(current)
  saved_data, current_data = saved.pop(DATA_IDENTITY, None), current.pop(DATA_IDENTITY, None)
  if saved_data and current_data and saved_data != current_data:
    details = ", ".join(f"{k}: {saved_data.get(k)!r} -> {current_data.get(k)!r}"
                        for k in sorted(set(saved_data) | set(current_data))
                        if saved_data.get(k) != current_data.get(k))
    raise ValueError(f"This workdir's run trained on other data than the files now read "
                     f"({details}). Restore the original files, or use a new --workdir.")
  saved_flat, current_flat = flatten(saved), flatten(current)
  saved_flat = {**{k: v for k, v in ADDED_FIELDS.items() if k in current_flat}, **saved_flat}
  changed = sorted(k for k in set(saved_flat) | set(current_flat)
                   if k not in RESUMABLE_CHANGES and saved_flat.get(k) != current_flat.get(k))
  if changed:
    details = ", ".join(f"{k}: {saved_flat.get(k)!r} -> {current_flat.get(k)!r}" for k in changed)
    raise ValueError(f"This workdir holds a run with a different config; these fields change the "
                     f"model or the data: {details}. Use a new --workdir, or restore the old "
                     f"values. Fields that may change on resume: {', '.join(RESUMABLE_CHANGES)}.")


_say = progress.say


def _prepare_workdir(workdir: str | None) -> str:
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


def _read_metrics(path: str, up_to_step: int) -> list[dict]:
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


def _read_json(path: str, what: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as error:
    raise ValueError(f"{path} ({what}) is not valid JSON ({error}): restore it, delete it to "
                     f"start that part over, or use a new --workdir.") from None


def _write_json(path: str, obj) -> None:
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


LR_SCHEDULES = ("constant", "cosine")


def validate(config) -> None:
  """Every check that needs no computation, the loop's fields and then the task's; launch.py
  runs it at flag parsing, before anything is compiled."""
  task_module = tasks.get(config.task)

  def positive(name):
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(f"config.{name} must be a positive integer, got {value!r}.")
  for name in ("batch_size", "max_steps", "eval_every", "checkpoint_every", "keep_checkpoints",
               "patience"):
    positive(name)
  if not (config.learning_rate > 0 and math.isfinite(config.learning_rate)):
    raise ValueError(f"config.learning_rate must be a finite number > 0, got "
                     f"{config.learning_rate!r}.")
  if config.lr_schedule not in LR_SCHEDULES:
    raise ValueError(f"Unknown config.lr_schedule {config.lr_schedule!r}; valid choices: "
                     f"{', '.join(LR_SCHEDULES)}.")
  if isinstance(config.warmup_steps, bool) or not isinstance(config.warmup_steps, int) or (
      config.warmup_steps < 0):
    raise ValueError(f"config.warmup_steps must be an integer >= 0, got "
                     f"{config.warmup_steps!r}.")
  if not config.grad_clip >= 0:
    raise ValueError(f"config.grad_clip must be >= 0 (0 turns clipping off), got "
                     f"{config.grad_clip!r}.")
  profiling.parse(config.profile_steps)
  mesh = tuple(config.mesh_shape)
  if len(mesh) != 1 or isinstance(mesh[0], bool) or not isinstance(mesh[0], int) or not (
      mesh[0] == -1 or mesh[0] >= 1):
    raise ValueError(f"config.mesh_shape must be (N,) with N >= 1 data-parallel devices, or (-1,) "
                     f"for all devices; got {config.mesh_shape!r}.")
  task_module.validate(config)


def config_warnings(config) -> list[str]:
  """Values that are legal but probably not meant, with their numbers (launch.py prints them
  at flag parsing)."""
  out = []
  if config.warmup_steps >= config.max_steps:
    out.append(f"warmup_steps {config.warmup_steps} >= max_steps {config.max_steps}: the "
               f"learning rate never reaches {config.learning_rate:g} (it ends at "
               f"{config.learning_rate * config.max_steps / config.warmup_steps:.3g}).")
  return out


def make_schedule(config) -> optax.Schedule:
  """The learning rate at each step: constant, or linear warm-up then constant, or linear
  warm-up then cosine to 0 at max_steps."""
  lr = config.learning_rate
  if config.lr_schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps,
                                              max(config.max_steps, config.warmup_steps + 1), 0.0)
  if config.warmup_steps:
    return optax.linear_schedule(0.0, lr, config.warmup_steps)
  return optax.constant_schedule(lr)


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam over `make_schedule`; optional global-norm clipping first (the authors' LM recipe:
  2,000 warm-up steps, clipping 0.25)."""
  constant = config.lr_schedule == "constant" and not config.warmup_steps
  # A plain float keeps the optimizer state of a constant rate what it always was (no count).
  adam = optax.adam(config.learning_rate if constant else make_schedule(config))
  if config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adam)
  return adam


def train(config, workdir: str | None = None, *, restore_from: str | None = None) -> dict:
  """Trains one run to its stopping criterion; returns the summary (also in summary.json)."""
  validate(config)
  workdir = _prepare_workdir(workdir)
  try:
    with _workdir_lock(workdir):
      return _train(config, workdir, restore_from)
  except OSError as error:     # a full disk, a lost mount: say what, never a raw traceback
    raise ValueError(f"Writing in workdir {workdir!r} failed ({error}). Its checkpoints up to "
                     f"the last complete one are kept: free space (or fix the mount) and "
                     f"relaunch to resume.") from error


@contextlib.contextmanager
def _workdir_lock(workdir: str):
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


def _train(config, workdir: str, restore_from: str | None) -> dict:
  task_module = tasks.get(config.task)
  config_dict = config.to_dict()
  if hasattr(task_module, "data_identity"):
    config_dict[DATA_IDENTITY] = task_module.data_identity(config)
  config_path = os.path.join(workdir, "config.json")
  saved = None
  if os.path.exists(config_path):
    saved = _read_json(config_path, "the run's config")
    check_resumable(saved, config_dict)
  summary_path = os.path.join(workdir, "summary.json")
  continuing = False
  if os.path.exists(summary_path):
    summary = _read_json(summary_path, "the finished run's summary")
    if not _continues(summary, saved, config):
      _write_json(config_path, config_dict)   # fields that may change on resume, recorded
      _say(f"Already finished ({summary['stop_reason']} at step {summary['steps']}): {workdir}")
      return summary
    continuing = True           # a larger max_steps continues a run that ran out of steps

  mesh = distributed.make_mesh(config.mesh_shape)
  distributed.check_batch(config.batch_size, mesh)
  _say(f"Mesh: {mesh.size} {jax.default_backend()} device(s) over {jax.process_count()} "
       f"process(es); batch {config.batch_size} = {config.batch_size // mesh.size} per device")
  task = task_module.make(config, mesh)
  model = task_module.build_model(config, nnx.Rngs(config.seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = make_optimizer(config)
  state = fresh_state(params, rest, tx)
  arrays = ("params", "rest", "opt_state", "loss_sum")   # the counters stay 64-bit NumPy
  state.update(distributed.replicate({k: state[k] for k in arrays}, mesh))

  mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  restored_step, restored = checkpoint.restore_latest(mngr, checkpoint.abstract(state))
  if restored is None and restore_from:
    if not os.path.isdir(restore_from):
      raise ValueError(f"--restore_from={restore_from!r} is not a directory; pass another run's "
                       f"checkpoints/ directory.")
    source = checkpoint.reader(restore_from)       # another run's: read, never clean up
    _, restored = checkpoint.restore_latest(source, checkpoint.abstract(state), set_aside=False)
    source.close()
    if restored is None:
      raise ValueError(f"--restore_from={restore_from!r} holds no restorable checkpoint.")
    # A new run from another run's weights: keep parameters and optimizer, restart counters.
    state.update(params=restored["params"], rest=restored["rest"],
                 opt_state=restored["opt_state"])
    _say(f"Starting from the checkpoint in {restore_from}")
  elif restored is not None:
    check_schedule(saved, config)
    state = restored
    _say(f"Resuming from step {restored_step} in {workdir}")
  # Only now, with the checkpoint read as this config's model, does the workdir change.
  _write_json(config_path, config_dict)
  if continuing:
    distributed.barrier("read-summary")
    if distributed.is_main():
      os.remove(summary_path)
  step = int(state["step"])
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  history = _read_metrics(metrics_path, step)
  distributed.barrier("read-metrics")
  if distributed.is_main():  # drop lines written after the checkpoint we resume from
    with open(metrics_path, "w") as f:
      f.writelines(json.dumps(m) + "\n" for m in history)

  events = event_log.EventLog(workdir, config_dict, history, config.tensorboard)
  trace = profiling.StepTrace(config.profile_steps, workdir)
  schedule = make_schedule(config)
  train_step = compile_step(graphdef, tx, task, mesh)
  sync_each_step = distributed.needs_step_sync(mesh)
  carry = (state["params"], state["opt_state"], state["loss_sum"])
  rest = state["rest"]
  best, bad_evals = float(state["best_eval_loss"]), int(state["bad_evals"])
  loss_count, wall_before = int(state["loss_count"]), float(state["wall_seconds"])
  stop_reason, last_eval = None, (history[-1]["eval_loss"] if history else None)
  start_time = time.time()
  interval_start, interval_step = start_time, step
  first_step = step

  def snapshot():
    params, opt_state, loss_sum = carry
    return dict(params=params, rest=rest, opt_state=opt_state, loss_sum=loss_sum,
                **_counters(step=step, best_eval_loss=best, bad_evals=bad_evals,
                            loss_count=loss_count,
                            wall_seconds=wall_before + time.time() - start_time))

  with _Stop() as stop, contextlib.ExitStack() as cleanup:
    cleanup.callback(events.close)
    cleanup.callback(trace.close)
    while stop_reason is None:
      if step >= config.max_steps:
        stop_reason = "max_steps"
        break
      batch = task.host_batch(step)
      if batch is not None:
        batch = distributed.put_batch(batch, mesh)
      if step == first_step:
        _say("Compiling the train step ...")
        compile_start = time.time()
      trace.before(step)
      carry = train_step(*carry, rest, step, batch)
      if step == first_step:
        jax.block_until_ready(carry)
        _say(f"Compiled and ran the first train step in {time.time() - compile_start:.1f} s")
      if sync_each_step:
        jax.block_until_ready(carry)
      step, loss_count = step + 1, loss_count + 1
      trace.after(step, carry)
      if step % config.eval_every == 0:
        params, opt_state, loss_sum = carry
        train_loss = float(distributed.fetch(loss_sum)) / loss_count
        evaluated = {k: float(distributed.fetch(v))
                     for k, v in task.evaluate(graphdef, params, rest, step).items()}
        eval_loss = evaluated["eval_loss"]
        now = time.time()
        record = dict(step=step, train_loss=train_loss, **evaluated,
                      learning_rate=float(schedule(step - 1)),   # the last step's rate
                      steps_per_second=(step - interval_step) / max(now - interval_start, 1e-9),
                      wall_seconds=wall_before + now - start_time)
        interval_start, interval_step = now, step
        if not (math.isfinite(train_loss) and math.isfinite(eval_loss)):
          stop_reason = "non_finite"
          logging.error("Non-finite loss at step %d (train %s, eval %s); stopping. The last "
                        "checkpoint holds the parameters before it.", step, train_loss, eval_loss)
          _say(f"Stopped: non-finite loss at step {step} (train {train_loss}, eval "
               f"{eval_loss}).")
          break
        if distributed.is_main():
          with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        events.write(record)
        extra = "".join(f"  {k} {v:.4g}" for k, v in evaluated.items() if k != "eval_loss")
        _say(f"step {step:>6}  train {train_loss:.5f}  eval {eval_loss:.5f}{extra}  "
             f"{record['steps_per_second']:.1f} steps/s  "
             f"{_eta(config.max_steps - step, record['steps_per_second'])}")
        last_eval = eval_loss
        carry = (params, opt_state, jnp.zeros_like(loss_sum))
        loss_count = 0
        if eval_loss < best:
          best, bad_evals = eval_loss, 0
        else:
          bad_evals += 1
        if eval_loss <= config.stop_loss:
          stop_reason = "stop_loss"
        elif bad_evals > config.patience:
          stop_reason = "patience"
        if stop_reason or step % config.checkpoint_every == 0:
          checkpoint.save(mngr, step, snapshot(), eval_loss)
      elif step % config.checkpoint_every == 0:
        checkpoint.save(mngr, step, snapshot(), None)
      if distributed.any_process(stop.signal is not None):  # all processes stop at one step
        stop.signal = stop.signal or "SIGTERM"
        if step not in mngr.all_steps():
          checkpoint.save(mngr, step, snapshot(), None)
        _say(f"Received {stop.signal}: saved a checkpoint at step {step}; relaunch the same "
             f"command to resume.")
        mngr.close()
        raise SystemExit(128 + getattr(signal, stop.signal))
    if stop_reason == "max_steps" and step not in mngr.all_steps():
      checkpoint.save(mngr, step, snapshot(), None)
  mngr.close()
  final = {}
  if stop_reason != "non_finite":
    final = {k: float(v) for k, v in task.final(graphdef, carry[0], rest).items()}
    if final:
      _say("Final: " + "  ".join(f"{k} {v:.4f}" for k, v in final.items()))
  summary = dict(final_eval_loss=last_eval, best_eval_loss=best if math.isfinite(best) else None,
                 steps=step, stop_reason=stop_reason,
                 wall_seconds=wall_before + time.time() - start_time, seed=config.seed,
                 task=config.task, **task.summary_fields, **final)
  _write_json(summary_path, summary)
  _say(f"Done: {stop_reason} at step {step}, final eval loss {last_eval}")
  return summary


def _eta(steps_left: int, steps_per_second: float) -> str:
  """'eta 1h02m to max_steps' at the last interval's rate."""
  if steps_left <= 0:
    return "at max_steps"
  seconds = int(steps_left / max(steps_per_second, 1e-9))
  hours, rest = divmod(seconds, 3600)
  return (f"eta {hours}h{rest // 60:02d}m" if hours else f"eta {rest // 60}m{rest % 60:02d}s") + \
      " to max_steps"


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


def _continues(summary: dict, saved: dict | None, config) -> bool:
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


def fresh_state(params, rest, tx) -> dict:
  """The whole training state a checkpoint holds, at step 0."""
  return dict(params=params, rest=rest, opt_state=tx.init(params), loss_sum=jnp.float32(0),
              **_counters(step=0, best_eval_loss=np.inf, bad_evals=0, loss_count=0,
                          wall_seconds=0.0))


def _counters(**values):
  """The loop's Python scalars as 0-d numpy arrays (what orbax stores), 64-bit exact."""
  return {k: np.asarray(v, np.float64 if isinstance(v, float) else np.int64)
          for k, v in values.items()}


def compile_step(graphdef, tx, task, mesh=None):
  """The jitted pure train step: (params, opt_state, loss_sum, rest, step, batch) -> (params,
  opt_state, loss_sum + loss). `batch` is the task's host batch (None when the task makes its
  batch inside the step); with a `mesh`, the task shards it over the data axis."""

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def train_step(params, opt_state, loss_sum, rest, step, batch):
    def loss_fn(params):
      return task.loss(nnx.merge(graphdef, params, rest), batch, step)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss_sum + loss

  return train_step
