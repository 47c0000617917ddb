"""The one train loop: Adam on the paper's retrieval loss, eval, early stopping, checkpoints.

A run's workdir holds config.json, metrics.jsonl (one line per eval), checkpoints/ and, when the
run ends, summary.json. Relaunching on the same workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from experiments import builders, checkpoint, data, distributed

# Fields that may change between a run and its resumption: they change neither model nor data.
RESUMABLE_CHANGES = ("max_steps", "patience", "stop_loss", "checkpoint_every",
                     "keep_checkpoints", "model.form", "model.chunk_size", "mesh_shape")
TIMING_FIELDS = ("steps_per_second", "wall_seconds")


def retrieval_loss(predictions, targets, num_keys, mask=None):
  """½‖onehot(target) − ŷ‖² summed over outputs, averaged over (unmasked) queries."""
  per_query = 0.5 * jnp.sum((jax.nn.one_hot(targets, num_keys) - predictions) ** 2, axis=-1)
  if mask is None:
    return jnp.mean(per_query)
  return jnp.sum(per_query * mask) / jnp.sum(mask)


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


def flatten(config_dict, prefix=""):
  out = {}
  for key, value in config_dict.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def check_resumable(saved: dict, current: dict) -> None:
  saved_flat, current_flat = flatten(saved), flatten(current)
  changed = sorted(k for k in set(saved_flat) | set(current_flat)
                   if k not in RESUMABLE_CHANGES and saved_flat.get(k) != current_flat.get(k))
  if changed:
    details = ", ".join(f"{k}: {saved_flat.get(k)!r} -> {current_flat.get(k)!r}" for k in changed)
    raise ValueError(f"This workdir holds a run with a different config; these fields change the "
                     f"model or the data: {details}. Use a new --workdir, or restore the old "
                     f"values. Fields that may change on resume: {', '.join(RESUMABLE_CHANGES)}.")


def _say(message: str) -> None:
  """Progress on stdout, from process 0 only."""
  if distributed.is_main():
    print(message, flush=True)


def _prepare_workdir(workdir: str | None) -> str:
  if workdir is None:
    if jax.process_count() > 1:
      raise ValueError("A multi-process run needs --workdir on a filesystem all processes share.")
    workdir = tempfile.mkdtemp(prefix="fwp-")
    print(f"No --workdir given; writing to {workdir}", flush=True)
  os.makedirs(workdir, exist_ok=True)
  probe = os.path.join(workdir, f".write-test-{jax.process_index()}")
  try:
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as error:
    raise ValueError(f"Workdir {workdir!r} cannot be written: {error}") from error
  return workdir


def _read_metrics(path: str, up_to_step: int) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [json.loads(line) for line in f if line.strip()]
  return [m for m in lines if m["step"] <= up_to_step]


def _write_json(path: str, obj) -> None:
  if not distributed.is_main():
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def train(config, workdir: str | None = None, *, restore_from: str | None = None) -> dict:
  """Trains one run to its stopping criterion; returns the summary (also in summary.json)."""
  builders.validate(config)
  workdir = _prepare_workdir(workdir)
  config_dict = config.to_dict()
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      check_resumable(json.load(f), config_dict)
  _write_json(config_path, config_dict)
  summary_path = os.path.join(workdir, "summary.json")
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
    if summary["stop_reason"] != "max_steps" or summary["steps"] >= config.max_steps:
      _say(f"Already finished ({summary['stop_reason']} at step {summary['steps']}): {workdir}")
      return summary
    distributed.barrier("read-summary")
    if distributed.is_main():
      os.remove(summary_path)   # a larger max_steps continues a run that ran out of steps

  mesh = distributed.make_mesh(config.mesh_shape)
  distributed.check_batch(config.batch_size, mesh)
  _say(f"Mesh: {mesh.size} {jax.default_backend()} device(s) over {jax.process_count()} "
       f"process(es); batch {config.batch_size} = {config.batch_size // mesh.size} per device")
  model = builders.build_model(config, nnx.Rngs(config.seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(config.learning_rate)
  params, rest = distributed.replicate((params, rest), mesh)
  state = dict(params=params, rest=rest, opt_state=distributed.replicate(tx.init(params), mesh),
               loss_sum=distributed.replicate(jnp.float32(0), mesh),
               **_counters(step=0, best_eval_loss=np.inf, bad_evals=0, loss_count=0,
                           wall_seconds=0.0))

  mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  restored_step, restored = checkpoint.restore_latest(mngr, checkpoint.abstract(state))
  if restored is None and restore_from:
    source = checkpoint.manager(restore_from, config.keep_checkpoints)
    _, restored = checkpoint.restore_latest(source, checkpoint.abstract(state), set_aside=False)
    if restored is None:
      raise ValueError(f"--restore_from={restore_from!r} holds no restorable checkpoint.")
    # A new run from another run's weights: keep parameters and optimizer, restart counters.
    state.update(params=restored["params"], rest=restored["rest"],
                 opt_state=restored["opt_state"])
    _say(f"Starting from the checkpoint in {restore_from}")
  elif restored is not None:
    state = restored
    _say(f"Resuming from step {restored_step} in {workdir}")
  step = int(state["step"])
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  history = _read_metrics(metrics_path, step)
  distributed.barrier("read-metrics")
  if distributed.is_main():  # drop lines written after the checkpoint we resume from
    with open(metrics_path, "w") as f:
      f.writelines(json.dumps(m) + "\n" for m in history)

  train_step, eval_loss_fn = compile_steps(config, graphdef, tx, mesh)
  carry = (state["params"], state["opt_state"], state["loss_sum"])
  rest = state["rest"]
  best, bad_evals = float(state["best_eval_loss"]), int(state["bad_evals"])
  loss_count, wall_before = int(state["loss_count"]), float(state["wall_seconds"])
  stop_reason, last_eval = None, (history[-1]["eval_loss"] if history else None)
  start_time = time.time()
  interval_start, interval_step = start_time, step

  def snapshot():
    params, opt_state, loss_sum = carry
    return dict(params=params, rest=rest, opt_state=opt_state, loss_sum=loss_sum,
                **_counters(step=step, best_eval_loss=best, bad_evals=bad_evals,
                            loss_count=loss_count,
                            wall_seconds=wall_before + time.time() - start_time))

  with _Stop() as stop:
    while stop_reason is None:
      if step >= config.max_steps:
        stop_reason = "max_steps"
        break
      carry = train_step(*carry, rest, step)
      step, loss_count = step + 1, loss_count + 1
      if step % config.eval_every == 0:
        params, opt_state, loss_sum = carry
        train_loss = float(distributed.fetch(loss_sum)) / loss_count
        eval_loss = float(distributed.fetch(eval_loss_fn(params, rest, step)))
        now = time.time()
        record = dict(step=step, train_loss=train_loss, eval_loss=eval_loss,
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
        _say(f"step {step:>6}  train {train_loss:.5f}  eval {eval_loss:.5f}  "
             f"{record['steps_per_second']:.1f} steps/s")
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
  summary = dict(final_eval_loss=last_eval, best_eval_loss=best if math.isfinite(best) else None,
                 steps=step, stop_reason=stop_reason,
                 wall_seconds=wall_before + time.time() - start_time,
                 curve=config.curve, setting=config.setting, num_keys=config.num_keys,
                 seed=config.seed)
  _write_json(summary_path, summary)
  _say(f"Done: {stop_reason} at step {step}, final eval loss {last_eval}")
  return summary


def _counters(**values):
  """The loop's Python scalars as 0-d numpy arrays (what orbax stores), 64-bit exact."""
  return {k: np.asarray(v, np.float64 if isinstance(v, float) else np.int64)
          for k, v in values.items()}


def compile_steps(config, graphdef, tx, mesh=None):
  """The jitted pure train step and eval function for this config; with a `mesh`, the train
  batch is sharded over its data axis."""
  num_keys = config.num_keys
  redraw = config.model.redraw_projection

  def projection_key(stream, index):
    if not redraw:
      return None
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed + 7919), stream), index)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def train_step(params, opt_state, loss_sum, rest, step):
    batch = data.train_batch(config.seed, step, batch_size=config.batch_size,
                             num_keys=num_keys, setting=config.setting)
    if mesh is not None:
      batch = distributed.shard_batch(batch, mesh)

    def loss_fn(params):
      model = nnx.merge(graphdef, params, rest)
      y = model(batch["keys"], batch["values"], batch["queries"],
                projection_key=projection_key(0, step))
      return retrieval_loss(y, batch["targets"], num_keys)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss_sum + loss

  @jax.jit
  def eval_loss(params, rest, index):
    batch = data.eval_batch(config.seed, index, num_keys=num_keys, setting=config.setting,
                            num_sequences=config.eval_sequences,
                            max_queries=config.eval_max_queries,
                            full_length=config.eval_full_length)
    model = nnx.merge(graphdef, params, rest)
    y = model(batch["keys"], batch["values"], batch["queries"],
              projection_key=projection_key(1, index))
    return retrieval_loss(y, batch["targets"], num_keys, batch["mask"])

  return train_step, eval_loss
