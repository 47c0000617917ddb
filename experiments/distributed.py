"""Data parallelism on JAX's own runtime: a Mesh with one "data" axis over all devices.

The batch is sharded over "data", parameters and optimizer state are replicated. One device is the
degenerate mesh of the same code. Each batch is generated inside the jitted step from
(seed, step), and its sharding constraint lets XLA compute only each device's slice, so in a
multi-process run every process makes just its own part of the global batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(mesh_shape) -> Mesh:
  """`mesh_shape` is a 1-tuple: the number of data-parallel devices, -1 for all of them."""
  devices = jax.devices()
  (size,) = tuple(mesh_shape)
  size = len(devices) if size == -1 else size
  if not 1 <= size <= len(devices):
    raise ValueError(f"config.mesh_shape={tuple(mesh_shape)} asks for {size} devices; "
                     f"{len(devices)} are available (use -1 for all).")
  return Mesh(np.asarray(devices[:size]), (DATA,))


def needs_step_sync(mesh: Mesh) -> bool:
  """True where each training step must finish before the next is dispatched: several devices of
  the mesh in this process on the CPU backend. There, XLA:CPU runs every device's program on
  one shared pool, and with several steps in flight a later step's programs, blocked in their
  all-reduce, can starve an earlier step's last program: the rendezvous times out and XLA aborts
  ("Expected 8 threads to join the rendezvous, but only 7 of them arrived on time"). Reproduced
  without fwp by scripts/xla_cpu_collective_deadlock.py (jax 0.10.2, 8 devices on 2 cores)."""
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  return len(local) > 1 and local[0].platform == "cpu"


def check_batch(batch_size: int, mesh: Mesh) -> None:
  if batch_size % mesh.size:
    raise ValueError(f"batch_size={batch_size} does not divide over the {mesh.size} devices of "
                     f"the mesh; use a multiple of {mesh.size} or set config.mesh_shape.")


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def place_state(arrays: dict, mesh: Mesh) -> dict:
  """The training state on the mesh: everything replicated but a task's carried state
  (`arrays["carry"]`, one row per sequence of the batch), which is split over the data axis as
  the batch is, so each device holds the state of its own rows."""
  placed = replicate({k: v for k, v in arrays.items() if k != "carry"}, mesh)
  if "carry" in arrays:
    placed["carry"] = jax.device_put(arrays["carry"], NamedSharding(mesh, P(DATA)))
  return placed


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Constrains every [B, ...] array of `batch` to be split over the data axis (inside jit)."""
  return {k: jax.lax.with_sharding_constraint(v, NamedSharding(mesh, P(DATA)))
          for k, v in batch.items()}


def check_processes(coordinator_address: str | None, num_processes: int | None,
                    process_id: int | None, *, detect: bool = False) -> None:
  """ValueError for multi-process settings that cannot start (launch.py runs it at parsing)."""
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is None for v in explicit) and any(v is not None for v in explicit) and not detect:
    raise ValueError(f"--coordinator_address, --num_processes and --process_id go together (got "
                     f"{coordinator_address!r}, {num_processes!r}, {process_id!r}); or pass "
                     f"--distributed to detect them from the cluster.")
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} must be in 0..{num_processes - 1}.")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, detect: bool = False) -> None:
  """Starts JAX's multi-process runtime: from explicit values, or (`detect=True`) from the
  cluster environment JAX recognises (SLURM, Open MPI, Kubernetes, TPU pods, ...). Does nothing
  when neither is asked for, so one process is the degenerate case."""
  check_processes(coordinator_address, num_processes, process_id, detect=detect)
  if all(v is None for v in (coordinator_address, num_processes, process_id)):
    if detect:
      jax.distributed.initialize()
    return
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def is_main() -> bool:
  """Process 0 writes config, metrics and summaries; every process joins checkpoints."""
  return jax.process_index() == 0


def fetch(x) -> np.ndarray:
  """The value of a replicated array, readable on every process (a multi-process array spans
  devices another process owns, so it cannot be read whole)."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any (so they all stop at the same step)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def put_batch(batch: dict, mesh: Mesh) -> dict:
  """A host batch (the same global NumPy arrays on every process) as global arrays split over the
  data axis; each process transfers only the rows its own devices hold."""
  sharding = NamedSharding(mesh, P(DATA))
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
          for k, v in batch.items()}
