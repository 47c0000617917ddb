"""Timing helpers shared by the studies (`experiments.studies.bench`, `bench_lm`,
`profile_chunked`, `precision`, `equivalence`; no flags).

Times are medians over `repeats` calls after a warm-up call, so compilation is excluded.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from experiments import hostmem, optim, train
from fwp import ops


def median_seconds(fn, *args, repeats, min_seconds: float = 0.0):
  """Median of `repeats` timed calls after a warm-up call; with `min_seconds`, more calls (up to
  1000) when the warm-up says `repeats` would take less (a 1 ms step's median over 5 calls moved
  by 2× between runs)."""
  jax.block_until_ready(fn(*args))                     # warm-up: compile and first run
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  once = time.perf_counter() - start
  if min_seconds:
    repeats = max(repeats, min(1000, int(min_seconds / max(once, 1e-6))))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def train_step_seconds(task, config, repeats: int, seed: int = 0) -> float:
  """Median seconds of the train loop's own jitted step (experiments.train.compile_step) on the
  state experiments.train.create_state makes for `task` (its model, loss and host batches)
  under `config`'s optimizer, with the host allocator the loop sets (config.host_memory)."""
  hostmem.use(config.host_memory)
  return median_seconds(train_step_call(task, config, seed), repeats=repeats, min_seconds=1.0)


def train_step_call(task, config, seed: int = 0, steps_per_call: int = 1):
  """A function that runs the loop's next `steps_per_call` train steps (one compiled call) on
  its own state and returns something to block on."""
  tx = optim.optimizer(config)
  graphdef, state = train.create_state(task, tx, seed)
  arrays, step = [state.arrays], [0]
  if steps_per_call == 1:
    train_step = train.compile_step(graphdef, tx, task)

    def call():
      arrays[0] = train_step(arrays[0], step[0], task.host_batch(step[0]))
      step[0] += 1
      return arrays[0]["sums"]["loss"]
  else:
    train_steps = train.compile_steps(graphdef, tx, task)

    def call():
      arrays[0] = train_steps(arrays[0], jnp.int32(step[0]), steps_per_call)
      step[0] += steps_per_call
      return arrays[0]["sums"]["loss"]
  return call


def interleaved_seconds(calls: list, repeats: int, rounds: int = 5,
                        min_seconds: float = 0.2) -> list[float]:
  """A/B timing: each call's median over `rounds` rounds, each round timing every call in turn
  (median_seconds), so that a change in the machine's speed during the measurement falls on all
  of them alike rather than on whichever ran last."""
  times = [[] for _ in calls]
  for _ in range(rounds):
    for i, call in enumerate(calls):
      times[i].append(median_seconds(call, repeats=repeats, min_seconds=min_seconds))
  return [statistics.median(t) for t in times]


def matmul_gflops(n: int = 2048, repeats: int = 5, *, k: int | None = None,
                  m: int | None = None) -> float:
  """float32 [m, k] × [k, n] rate (n³ by default)."""
  m, k = m or n, k or n
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
  seconds = median_seconds(jax.jit(jnp.matmul), a, b, repeats=repeats)
  return 2 * m * k * n / seconds / 1e9


def others_running(samples: int = 5, interval: float = 0.05) -> float | None:
  """The median, over `samples` reads `interval` s apart, of the runnable threads on the machine
  besides the one reading (/proc/loadavg's running count, less 1): 0 on a quiet machine between
  two timings. None where /proc/loadavg does not exist."""
  counts = []
  for i in range(samples):
    try:
      with open("/proc/loadavg") as f:
        running = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
      return None
    counts.append(running - 1)
    if i + 1 < samples:
      time.sleep(interval)
  return statistics.median(counts)


def guard_flag(flags):
  """The benchmarks' --guard_matmul flag (Quiet's matmul_size)."""
  return flags.DEFINE_integer(
      "guard_matmul", 1024, "n of the load guard's n³ float32 matmul, sampled before and after "
      "each row (timing.Quiet): smaller is quicker and noisier (the smoke tests use 128).",
      lower_bound=16)


class Quiet:
  """Guards a benchmark's numbers: before and after each row, the 1-minute load average, the
  other runnable threads (`others_running`) and the float32 matmul rate (1024³, quick); a row is
  busy when another thread was runnable (median > `max_others`) or the rate fell more than
  `tolerance` below the first measurement. `matmul_size` sets n of the n³ sample (1024: ~0.4 s a
  sample on 2 cores; smaller is quicker and noisier). `sample` (for tests) returns (load,
  others, gflops)."""

  def __init__(self, tolerance: float = 0.15, max_others: float = 0.5, sample=None,
               matmul_size: int = 1024):
    self.tolerance, self.max_others, self.matmul_size = tolerance, max_others, matmul_size
    self.sample = sample or (lambda: (os.getloadavg()[0], others_running(),
                                      matmul_gflops(matmul_size, repeats=21)))
    self.reference = None
    self.samples: list[tuple] = []
    self._last = (None, -1e9)            # the latest sample and when it was taken

  def measure(self) -> tuple:
    load, others, gflops = self.sample()
    if self.reference is None:
      self.reference = gflops
    self.samples.append((load, others, gflops))
    self._last = ((load, others, gflops), time.monotonic())
    return load, others, gflops

  def recent(self, max_age: float = 2.0) -> tuple:
    """The latest sample if it is at most `max_age` seconds old (the previous row's after),
    else a new one: consecutive rows share a measurement instead of taking two in a row."""
    sample, at = self._last
    return sample if sample is not None and time.monotonic() - at <= max_age else self.measure()

  def timed(self, make) -> dict:
    """`make()`'s row, with the guard's fields from measurements just before and after it."""
    before = self.recent()
    row = make()
    row.update(self.fields(before, self.measure()))
    return row

  def fields(self, before: tuple, after: tuple) -> dict:
    """The row's guard fields from its `before` and `after` measurements."""
    busy = any(others is not None and others > self.max_others for _, others, _ in (before, after))
    slow = min(before[2], after[2]) < (1 - self.tolerance) * self.reference
    return dict(load_before=round(before[0], 2), load_after=round(after[0], 2),
                others_before=before[1], others_after=after[1],
                matmul_before=round(before[2], 1), matmul_after=round(after[2], 1),
                busy=bool(busy or slow))

  def line(self, rows: list[dict]) -> str:
    """The Markdown line that says how quiet the machine was while `rows` were measured."""
    loads = [s[0] for s in self.samples]
    rates = [s[2] for s in self.samples]
    others = [s[1] for s in self.samples if s[1] is not None]
    busy = [i for i, r in enumerate(rows, 1) if r.get("busy")]
    text = (f"Load while measuring: 1-minute load average {min(loads):.2f}-{max(loads):.2f}, "
            f"other runnable threads {max(others) if others else 'unknown'} at most, matmul "
            f"({self.matmul_size}³) {min(rates):.0f}-{max(rates):.0f} GFLOP/s, before and after "
            f"each row.")
    if busy:
      text += (f" **Busy** (another thread runnable, or the matmul rate more than "
               f"{100 * self.tolerance:.0f} % below the first): rows {', '.join(map(str, busy))}, "
               f"marked ‡; their times are not this machine's.")
    return text


def machine(repeats: int = 5) -> dict:
  """What a table of timings was measured on, with the float32 matmul rate measured now."""
  return dict(platform=platform.platform(), processor=platform.processor(),
              cpu_count=os.cpu_count(), jax=jax.__version__,
              devices=[str(d) for d in jax.devices()], matmul_gflops=matmul_gflops(repeats=repeats))


def machine_line(machine: dict) -> str:
  """The Markdown line that heads a table of timings."""
  return (f"Machine: {machine['cpu_count']} CPU cores, {machine['platform']}, jax "
          f"{machine['jax']}, devices {machine['devices']}; measured float32 matmul rate "
          f"(2048³) **{machine['matmul_gflops']:.1f} GFLOP/s**.")


def peak_bytes(compiled) -> int | None:
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes +
             analysis.temp_size_in_bytes)


def time_op(rule, form, t, chunk_size, shape, repeats, peak_rate):
  b, h, dk, dv = shape
  keys = jax.random.split(jax.random.key(t), 5)
  q = jax.random.normal(keys[0], (b, t, h, dk))
  k = jax.nn.softmax(jax.random.normal(keys[1], (b, t, h, dk)), axis=-1)   # sum-normalised
  v = jax.random.normal(keys[2], (b, t, h, dv))
  beta = jax.nn.sigmoid(jax.random.normal(keys[3], (b, t, h)))
  cot = jax.random.normal(keys[4], (b, t, h, dv))
  # The gated rules: one log-decay per head, −softplus of a normal draw (α ∈ (0, 1)).
  gated = ops.rules.get(rule).gated
  log_decay = (-jax.nn.softplus(jax.random.normal(jax.random.fold_in(keys[3], 1), (b, t, h)))
               if gated else None)

  def forward(q, k, v, beta):
    return ops.apply_rule(rule, q, k, v, beta, log_decay=log_decay, form=form,
                          chunk_size=chunk_size)[0]

  def loss(q, k, v, beta):
    return jnp.sum(forward(q, k, v, beta) * cot)

  row = dict(kind="op", rule=rule, form=form, T=t, chunk_size=chunk_size if form == "chunked"
             else None, batch=b, heads=h, d_key=dk, d_value=dv)
  for name, fn, flops_per in (("fwd", forward, 6), ("fwd_bwd",
                                                    jax.grad(loss, argnums=(0, 1, 2, 3)), 18)):
    jitted = jax.jit(fn)
    compiled = jitted.lower(q, k, v, beta).compile()
    seconds = median_seconds(compiled, q, k, v, beta, repeats=repeats)
    gflops = flops_per * b * h * t * dk * dv / seconds / 1e9
    row.update({f"{name}_ms": seconds * 1e3, f"{name}_gflops": gflops,
                f"{name}_fraction_of_matmul": gflops / peak_rate,
                f"{name}_peak_mb": (peak_bytes(compiled) or 0) / 2 ** 20})
  return row
