"""The one train loop, for every task: TrainState, the jitted train step, early stopping, resume.

What a run computes comes from its task (experiments.tasks, picked by config.task): the model,
the batch, the loss, the evaluation, the selection metric. What every run shares is here: one
TrainState, the jitted step over nnx.split state, early stopping, checkpoints and exact resume,
SIGTERM, the data mesh. The run directory's rules live in experiments.rundir, the optimizer in
experiments.optim, checkpoints in experiments.checkpoint. Relaunching on the same workdir
resumes from the latest checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from experiments import (checkpoint, distributed, event_log, hostmem, optim, profiling, progress,
                         results, rundir, stopping, tasks)
from fwp import checks

TIMING_FIELDS = ("steps_per_second", "wall_seconds")
flatten = results.flatten
_say = progress.say


# --- The state --------------------------------------------------------------------------------

@dataclasses.dataclass
class Progress:
  """The host side of the training state: Python numbers, saved as 64-bit 0-d arrays."""
  step: int
  best: float            # the best selection metric so far (±inf before the first eval)
  bad_evals: int         # evals since the best
  wall_seconds: float    # training time before this launch

  def arrays(self) -> dict:
    return {f.name: np.asarray(getattr(self, f.name),
                               np.float64 if f.type == "float" else np.int64)
            for f in dataclasses.fields(self)}

  @classmethod
  def of(cls, tree: dict) -> "Progress":
    return cls(**{f.name: (float if f.type == "float" else int)(tree[f.name])
                  for f in dataclasses.fields(cls)})


@dataclasses.dataclass
class TrainState:
  """Everything a checkpoint holds. `arrays` is the device pytree the jitted step maps to
  itself: params, rest (the model's other variables, e.g. FAVOR+ projections), opt_state,
  `sums` (the train loss and the task's aux numbers, weighted, since the last eval, with their
  weight) and, for a task that carries a state from step to step, `carry` (batch-major arrays,
  sharded like the batch). `progress` is the loop's counters."""
  arrays: dict
  progress: Progress

  def checkpoint(self, wall_seconds: float) -> dict:
    return {**self.arrays, **dataclasses.replace(self.progress,
                                                 wall_seconds=wall_seconds).arrays()}

  @classmethod
  def of_checkpoint(cls, tree: dict) -> "TrainState":
    names = {f.name for f in dataclasses.fields(Progress)}
    return cls({k: v for k, v in tree.items() if k not in names}, Progress.of(tree))


def create_state(task, tx: optax.GradientTransformation, seed: int):
  """(graphdef, the TrainState at step 0) of `task`'s model initialised from `seed`: the one
  constructor for the loop, tests and studies."""
  model = task.build_model(nnx.Rngs(seed))
  carry = tasks.initial_carry(task, model)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  batch = task.host_batch(0)
  aux = jax.eval_shape(
      lambda p: _task_loss(task, nnx.merge(graphdef, p, rest), batch, 0, carry)[1], params)
  sums = {"loss": jnp.zeros((), jnp.float32),
          **{k: jnp.zeros((), jnp.float32) for k in aux}}
  sums.setdefault("weight", jnp.zeros((), jnp.float32))
  best = math.inf if tasks.selection(task)[1] == "min" else -math.inf
  arrays = dict(params=params, rest=rest, opt_state=tx.init(params), sums=sums)
  if carry is not None:
    arrays["carry"] = carry
  return graphdef, TrainState(arrays, Progress(0, best, 0, 0.0))


def _task_loss(task, model, batch, step, carry):
  """(loss, aux, next carry): the task's loss, with the carried state when it keeps one (the
  carry enters as a constant: no gradient flows into the steps before)."""
  if carry is None:
    loss, aux = task.loss(model, batch, step)
    return loss, aux, None
  return task.loss(model, batch, step, jax.lax.stop_gradient(carry))


def compile_step(graphdef, tx: optax.GradientTransformation, task):
  """The jitted pure train step: (arrays, step, batch) -> arrays, one optimizer update with the
  loss (and aux) added to `sums` at the batch's weight, and a task's carried state (arrays
  ["carry"], when it keeps one) replaced by the one its loss returns. `batch` is the task's host
  batch (None when the task makes its batch inside the step)."""
  return jax.jit(_step_function(graphdef, tx, task), donate_argnums=0)


def compile_steps(graphdef, tx: optax.GradientTransformation, task):
  """K train steps in one compiled call, (arrays, start, K) -> arrays: a scan of compile_step's
  function over the steps start..start+K-1, for tasks that make their batch inside the step
  (config.steps_per_call: the dispatch of a small step costs more than its work). One compile
  per K."""
  one = _step_function(graphdef, tx, task)

  @functools.partial(jax.jit, donate_argnums=0, static_argnums=2)
  def train_steps(arrays, start, k):
    return jax.lax.scan(lambda a, i: (one(a, start + i, None), None), arrays,
                        jnp.arange(k, dtype=jnp.int32))[0]

  return train_steps


def _step_function(graphdef, tx: optax.GradientTransformation, task):
  def train_step(arrays, step, batch):
    def loss_fn(params):
      model = nnx.merge(graphdef, params, arrays["rest"])
      loss, aux, carry = _task_loss(task, model, batch, step, arrays.get("carry"))
      return loss, (aux, carry)

    (loss, (aux, carry)), grads = jax.value_and_grad(loss_fn, has_aux=True)(arrays["params"])
    updates, opt_state = tx.update(grads, arrays["opt_state"], arrays["params"])
    weight = jnp.asarray(aux.get("weight", 1.0), jnp.float32)
    added = {"loss": loss * weight, "weight": weight,
             **{k: v * weight for k, v in aux.items() if k != "weight"}}
    sums = {k: s + added[k].astype(s.dtype) for k, s in arrays["sums"].items()}
    out = dict(arrays, params=optax.apply_updates(arrays["params"], updates),
               opt_state=opt_state, sums=sums)
    if carry is not None:
      out["carry"] = jax.lax.stop_gradient(carry)
    return out

  return train_step


# --- Checks at flag parsing -------------------------------------------------------------------

def validate(config) -> None:
  """Every check that needs no computation, the loop's fields and then the task's; launch.py
  runs it at flag parsing, before anything is compiled."""
  family = tasks.get(config.task)

  for name in ("batch_size", "max_steps", "eval_every", "checkpoint_every", "keep_checkpoints",
               "patience", "steps_per_call"):
    checks.positive_int(f"config.{name}", config[name])
  optim.validate(config)
  hostmem.check(config.host_memory)
  profiling.parse(config.profile_steps)
  mesh = tuple(config.mesh_shape)
  if len(mesh) != 1 or isinstance(mesh[0], bool) or not isinstance(mesh[0], int) or not (
      mesh[0] == -1 or mesh[0] >= 1):
    raise ValueError(f"config.mesh_shape must be (N,) with N >= 1 data-parallel devices, or (-1,) "
                     f"for all devices; got {config.mesh_shape!r}.")
  family.validate(config)


def config_warnings(config) -> list[str]:
  """Values that are legal but probably not meant, with their numbers (launch.py prints them
  at flag parsing)."""
  out = []
  if config.eval_every > config.max_steps:
    out.append(f"eval_every {config.eval_every} > max_steps {config.max_steps}: the run never "
               f"evaluates during training (no metrics.jsonl line, so no report row; early "
               f"stopping and the best checkpoint never act). Its final evaluation still runs.")
  profile = profiling.parse(config.profile_steps)
  if profile is not None and profile[0] >= config.max_steps:
    out.append(f"profile_steps {config.profile_steps!r} starts at or after max_steps "
               f"{config.max_steps}: nothing is traced.")
  if config.warmup_steps >= config.max_steps:
    out.append(f"warmup_steps {config.warmup_steps} >= max_steps {config.max_steps}: the "
               f"learning rate never reaches {config.learning_rate:g} (it ends at "
               f"{config.learning_rate * config.max_steps / config.warmup_steps:.3g}).")
  return out


# --- The run ----------------------------------------------------------------------------------

def train(config, workdir: str | None = None, *, restore_from: str | None = None) -> dict:
  """Trains one run to its stopping criterion; returns the summary (also in summary.json)."""
  validate(config)
  hostmem.use(config.host_memory)
  workdir = rundir.prepare(workdir)
  try:
    # The signals are the run's from here: until the loop starts, one ends the launch at once
    # (nothing is trained yet; the data caches are written whole or not at all).
    with rundir.lock(workdir), stopping.Signals(preparing=True) as signals:
      try:
        return _train(config, workdir, restore_from, signals)
      except stopping.Interrupted as interrupted:
        if not signals.preparing:
          raise
        _say(f"Received {interrupted.signal} while preparing the run; nothing was trained. "
             f"Relaunch the same command to start it.")
        raise SystemExit(128 + getattr(signal, interrupted.signal)) from None
  except OSError as error:     # a full disk, a lost mount: say what, never a raw traceback
    raise ValueError(os_error_message(error, workdir)) from error


def os_error_message(error: OSError, workdir: str) -> str:
  """What failed, where, and what to do: the file the error names (a cache, a data file, one of
  the workdir's) and the system's reason, not a guess that the workdir's disk is full."""
  path = error.filename or workdir
  reason = error.strerror or str(error)
  remedy = {errno.ENOSPC: "free space there (or fix the mount)",
            errno.EDQUOT: "free space there (a quota)",
            errno.ENOENT: "it is missing: restore it, or delete the cache it belongs to so that "
                          "it is rebuilt",
            errno.EACCES: "fix its permissions", errno.EPERM: "fix its permissions",
            errno.EROFS: "it is on a read-only mount",
            errno.ENOTDIR: "a part of that path is a file, not a directory: move the file",
            errno.EISDIR: "it is a directory where a file belongs: move it"}.get(
                error.errno, "fix it (or the mount)")
  return (f"{path}: {reason}; {remedy}. The run's checkpoints in {workdir!r} up to the last "
          f"complete one are kept: relaunch to resume.")


def _train(config, workdir: str, restore_from: str | None, signals: stopping.Signals) -> dict:
  family = tasks.get(config.task)
  run = rundir.RunDir.open(workdir, config, family)
  if run.finished is not None:
    run.record_config()            # fields that may change on resume, recorded
    _say(f"Already finished ({run.finished['stop_reason']} at step {run.finished['steps']}): "
         f"{workdir}")
    return run.finished
  mesh = distributed.make_mesh(config.mesh_shape)
  distributed.check_batch(config.batch_size, mesh)
  _say(f"Mesh: {mesh.size} {jax.default_backend()} device(s) over {jax.process_count()} "
       f"process(es); batch {config.batch_size} = {config.batch_size // mesh.size} per device")
  task = family.make(config, mesh)
  if config.steps_per_call > 1 and task.host_batch(0) is not None:
    raise ValueError(f"config.steps_per_call={config.steps_per_call} runs several train steps in "
                     f"one compiled call, which needs a task that makes its batches inside the "
                     f"step (associative_recall); the {config.task} family makes them on the "
                     f"host. Use steps_per_call=1.")
  if hasattr(task, "output_dir"):
    task.output_dir = workdir
  tx = tasks.optimizer(task, config)
  graphdef, state = create_state(task, tx, config.seed)
  state.arrays = distributed.place_state(state.arrays, mesh)
  early = stopping.EarlyStopping.of(task, config)
  mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), config.keep_checkpoints,
                            early.direction)
  state = _restore(mngr, state, run, config, restore_from)
  signals.preparing = False      # from here a signal is a flag: the loop saves, then exits
  if signals.signal is not None:
    raise stopping.Interrupted(signals.signal)   # came between the handler's last two checks
  # Only now, with the checkpoint read as this config's model, does the workdir change.
  history = run.start(state.progress.step)
  loop = _Loop(config, run, task, graphdef, compile_step(graphdef, tx, task), mesh, mngr,
               early, history, state, compile_steps(graphdef, tx, task))
  try:
    return loop.finish(loop.run(signals))
  finally:
    mngr.close()


def _restore(mngr, state: TrainState, run: rundir.RunDir, config, restore_from: str | None):
  """The state to start from: this workdir's latest checkpoint, else --restore_from's weights
  and optimizer (with fresh counters), else `state`."""
  abstract = checkpoint.abstract(state.checkpoint(0.0))
  restored_step, restored = checkpoint.restore_latest(mngr, abstract)
  if restored is not None:
    rundir.check_schedule(run.saved, config)
    _say(f"Resuming from step {restored_step} in {run.path}")
    return TrainState.of_checkpoint(restored)
  if not restore_from:
    return state
  if not os.path.isdir(restore_from):
    raise ValueError(f"--restore_from={restore_from!r} is not a directory; pass another run's "
                     f"checkpoints/ directory.")
  source = checkpoint.reader(restore_from)       # another run's: read, never clean up
  try:
    _, restored = checkpoint.restore_latest(source, abstract, set_aside=False)
  finally:
    source.close()
  if restored is None:
    raise ValueError(f"--restore_from={restore_from!r} holds no restorable checkpoint.")
  _say(f"Starting from the checkpoint in {restore_from}")
  # A new run from another run's weights: keep parameters and optimizer, restart counters.
  return TrainState(dict(state.arrays, **{k: restored[k] for k in
                                          ("params", "rest", "opt_state")}), state.progress)


@dataclasses.dataclass
class _Loop:
  """One launch of a run from `state` on: the step schedule, evals, checkpoints, the summary."""
  config: object
  workdir: rundir.RunDir
  task: object
  graphdef: object
  train_step: object
  mesh: object
  mngr: object
  early: stopping.EarlyStopping
  history: list
  state: TrainState
  train_steps: object = None            # compile_steps's, for steps_per_call > 1

  def __post_init__(self):
    self.first_step = self.state.progress.step
    self.wall_before = self.state.progress.wall_seconds
    self.start = time.time()
    self.interval = (self.start, self.first_step)
    self.schedule = optim.schedule(self.config)     # the learning rate each metrics line names
    self.last_eval = self.history[-1] if self.history else None

  def wall_seconds(self) -> float:
    return self.wall_before + time.time() - self.start

  def save(self, selection: float | None = None) -> None:
    checkpoint.save(self.mngr, self.state.progress.step,
                    self.state.checkpoint(self.wall_seconds()), selection)

  def run(self, stop: stopping.Signals) -> str:
    """Steps until a stop; returns the stop reason (a signal exits after its checkpoint)."""
    c, progress = self.config, self.state.progress
    stopped = self.workdir.stopped_at(progress.step)
    if stopped is not None:      # its final evaluation was interrupted: evaluate, train no more
      _say(f"The run stopped ({stopped}) at step {progress.step}; its final evaluation was "
           f"interrupted and runs again.")
      return stopped
    events = event_log.EventLog(self.workdir.path, self.workdir.config, self.history, c.tensorboard)
    trace = profiling.StepTrace(c.profile_steps, self.workdir.path)
    sync_each_step = distributed.needs_step_sync(self.mesh)
    with contextlib.ExitStack() as cleanup:
      cleanup.callback(events.close)
      cleanup.callback(trace.close)
      if self._evaluation_pending():
        _say(f"The evaluation of step {progress.step} was interrupted; it runs again.")
        stop_reason = self._evaluate_and_save(events, resumed=True)
        if stop_reason:
          return stop_reason
      while progress.step < c.max_steps:
        steps = self._steps_this_call()
        if steps == 1:
          self._step(trace, sync_each_step)
        else:
          self._steps(steps, sync_each_step)
        if progress.step % c.eval_every == 0:
          stop_reason = self._evaluate_and_save(events)
          if stop_reason:
            return stop_reason
        elif progress.step % c.checkpoint_every == 0:
          self.save()
        if distributed.any_process(stop.signal is not None):  # all processes stop at one step
          self._exit_on_signal(stop.signal or "SIGTERM")
    if progress.step not in self.mngr.all_steps():
      self.save()
    return "max_steps"

  def _evaluation_pending(self) -> bool:
    """Whether the checkpoint resumed from was saved by a signal during its step's evaluation:
    an evaluation step with no metrics line (an evaluation writes its line before any save)."""
    step = self.state.progress.step
    return (step > 0 and step % self.config.eval_every == 0 and step in self.mngr.all_steps()
            and (not self.history or self.history[-1]["step"] != step))

  def _evaluate_and_save(self, events, resumed: bool = False) -> str | None:
    """The evaluation of this step and its checkpoint; returns the stop reason or None. A
    signal between the evaluation's batches saves the state before it and exits; the relaunch
    evaluates that step again (`resumed`), whose checkpoint then gets its selection value."""
    progress = self.state.progress
    try:
      stop_reason, selection = self._evaluate(events)
    except stopping.Interrupted as interrupted:
      self._exit_on_signal(interrupted.signal, f" during the evaluation of step {progress.step}")
    if stop_reason == "non_finite":
      return stop_reason
    if stop_reason or progress.step % self.config.checkpoint_every == 0:
      if resumed:      # saved without its selection value when the evaluation was interrupted
        self.mngr.delete(progress.step)
      self.save(selection)
    if stop_reason:
      self.workdir.write_stop(progress.step, stop_reason)
    return stop_reason

  def _steps_this_call(self) -> int:
    """config.steps_per_call, cut so that a call ends at the next evaluation, checkpoint,
    max_steps and profiled range: each falls where it falls one step a call (so the metrics and
    checkpoints are the same), and a profiled step runs alone."""
    c, step = self.config, self.state.progress.step
    if c.steps_per_call == 1:
      return 1
    ends = [c.max_steps, (step // c.eval_every + 1) * c.eval_every,
            (step // c.checkpoint_every + 1) * c.checkpoint_every]
    profiled = profiling.parse(c.profile_steps)
    if profiled:
      if profiled[0] <= step < profiled[1]:
        return 1
      ends += [b for b in profiled if b > step]
    return max(1, min(c.steps_per_call, min(ends) - step))

  def _steps(self, k: int, sync_each_step: bool) -> None:
    """K train steps in one call (compile_steps); as `_step`, the host leads by one call."""
    progress = self.state.progress
    first = progress.step == self.first_step
    if first:
      _say(f"Compiling {k} train steps a call ...")
      compile_start = time.time()
    jax.block_until_ready(self.state.arrays["sums"])
    self.state.arrays = self.train_steps(self.state.arrays, jnp.int32(progress.step), k)
    if first:
      jax.block_until_ready(self.state.arrays)
      _say(f"Compiled and ran the first {k} train steps in {time.time() - compile_start:.1f} s")
    if sync_each_step:
      jax.block_until_ready(self.state.arrays)
    progress.step += k

  def _step(self, trace, sync_each_step: bool) -> None:
    progress = self.state.progress
    batch = self.task.host_batch(progress.step)
    if batch is not None:
      batch = distributed.put_batch(batch, self.mesh)
    first = progress.step == self.first_step
    if first:
      _say("Compiling the train step ...")
      compile_start = time.time()
    trace.before(progress.step)
    # The host's lead is one step: the previous step must have finished before this one is
    # dispatched (its batch is already made, so the host's work still overlaps the device's). A
    # signal, checked after each dispatch, then waits for one step, not for every step queued.
    jax.block_until_ready(self.state.arrays["sums"])
    self.state.arrays = self.train_step(self.state.arrays, progress.step, batch)
    if first:
      jax.block_until_ready(self.state.arrays)
      _say(f"Compiled and ran the first train step in {time.time() - compile_start:.1f} s")
    if sync_each_step:
      jax.block_until_ready(self.state.arrays)
    progress.step += 1
    trace.after(progress.step, self.state.arrays)

  def _evaluate(self, events) -> tuple[str | None, float | None]:
    """One eval: a metrics.jsonl line, the train sums reset, early stopping updated. Returns
    (stop reason or None, the selection metric's value)."""
    progress, arrays = self.state.progress, self.state.arrays
    sums = {k: float(distributed.fetch(v)) for k, v in arrays["sums"].items()}
    weight = sums.pop("weight")
    train = {f"train_{k}": v / weight for k, v in sums.items()}
    evaluated = {k: float(distributed.fetch(v)) for k, v in
                 self.task.evaluate(self.graphdef, arrays["params"], arrays["rest"],
                                    progress.step).items()}
    now, (interval_start, interval_step) = time.time(), self.interval
    record = dict(step=progress.step, **train, **evaluated,
                  learning_rate=float(self.schedule(progress.step - 1)),
                  steps_per_second=(progress.step - interval_step) /
                  max(now - interval_start, 1e-9),
                  wall_seconds=self.wall_before + now - self.start)
    self.interval = (now, progress.step)
    selection = evaluated.get(self.early.metric)
    if not all(math.isfinite(v) for v in (*train.values(), *evaluated.values())):
      logging.error("Non-finite numbers at step %d (%s); stopping. The last checkpoint holds "
                    "the parameters before them.", progress.step, {**train, **evaluated})
      _say(f"Stopped: non-finite loss at step {progress.step} ({train} {evaluated}).")
      return "non_finite", selection
    self.workdir.append_metrics(record)
    events.write(record)
    _say(f"step {progress.step:>6}  {_numbers(train, evaluated)}  "
         f"{record['steps_per_second']:.1f} steps/s  "
         f"{_eta(self.config.max_steps - progress.step, record['steps_per_second'])}")
    self.last_eval = record
    self.state.arrays = dict(arrays, sums=jax.tree.map(jnp.zeros_like, arrays["sums"]))
    return self.early.update(progress, evaluated), selection

  def _exit_on_signal(self, name: str, when: str = "") -> None:
    if self.state.progress.step not in self.mngr.all_steps():
      self.save()
    _say(f"Received {name}{when}: saved a checkpoint at step {self.state.progress.step}; "
         f"relaunch the same command to resume.")
    raise SystemExit(128 + getattr(signal, name))

  def _final_parameters(self):
    """(step, params, rest) that the final evaluation reads: the run's last, or the best
    checkpoint's when the task asks for it (`final_checkpoint = "best"`, as the authors of the
    algorithmic tasks test the model selected by valid accuracy)."""
    arrays, step = self.state.arrays, self.state.progress.step
    if getattr(self.task, "final_checkpoint", "last") != "best":
      return step, arrays["params"], arrays["rest"]
    best = checkpoint.best_step(self.mngr)
    if best is None or best == step:
      return step, arrays["params"], arrays["rest"]
    restored = checkpoint.restore_step(
        self.mngr, best, checkpoint.abstract(self.state.checkpoint(0.0)))
    return best, restored["params"], restored["rest"]

  def finish(self, stop_reason: str) -> dict:
    """The final evaluation (unless the run diverged) and summary.json."""
    progress, metric = self.state.progress, self.early.metric
    final, from_step = {}, progress.step
    if stop_reason != "non_finite":
      from_step, params, rest = self._final_parameters()
      try:
        final = {k: float(v) for k, v in
                 self.task.final(self.graphdef, params, rest, from_step).items()}
      except stopping.Interrupted as interrupted:
        _say(f"Received {interrupted.signal} during the final evaluation; the checkpoint of "
             f"step {progress.step} is kept: relaunch the same command to evaluate it.")
        raise SystemExit(128 + getattr(signal, interrupted.signal)) from None
      if final:
        _say("Final" + (f" (the best checkpoint, step {from_step})"
                        if from_step != progress.step else "") + ": " +
             "  ".join(f"{k} {v:.4f}" for k, v in final.items()))
    last = self.last_eval or {}
    summary = dict(final_eval_loss=last.get("eval_loss"),
                   **{f"best_{metric}": progress.best if math.isfinite(progress.best) else None},
                   steps=progress.step, stop_reason=stop_reason,
                   wall_seconds=self.wall_seconds(), seed=self.config.seed,
                   task=self.config.task, **self.task.summary_fields, **final)
    if metric != "eval_loss":
      summary[f"final_{metric}"] = last.get(metric)
    if getattr(self.task, "final_checkpoint", "last") == "best":
      summary["final_from_step"] = from_step
    self.workdir.write_summary(summary)
    _say(f"Done: {stop_reason} at step {progress.step}, final eval loss "
         f"{summary['final_eval_loss']}")
    return summary


def _numbers(train: dict, evaluated: dict) -> str:
  """'train 0.12345  eval 0.23456  valid_ppl 12.3': the losses first, to 5 decimals."""
  losses = {"train": train.get("train_loss"), "eval": evaluated.get("eval_loss")}
  rest = {k: v for k, v in {**train, **evaluated}.items() if k not in ("train_loss", "eval_loss")}
  return "  ".join([f"{k} {v:.5f}" for k, v in losses.items() if v is not None] +
                   [f"{k} {v:.4g}" for k, v in rest.items()])


def _eta(steps_left: int, steps_per_second: float) -> str:
  """'eta 1h02m to max_steps' at the last interval's rate."""
  if steps_left <= 0:
    return "at max_steps"
  seconds = int(steps_left / max(steps_per_second, 1e-9))
  hours, rest = divmod(seconds, 3600)
  return (f"eta {hours}h{rest // 60:02d}m" if hours else f"eta {rest // 60}m{rest % 60:02d}s") + \
      " to max_steps"
