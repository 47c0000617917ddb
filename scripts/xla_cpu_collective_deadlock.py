"""Minimal reproduction of an XLA:CPU deadlock that fwp works around (docs/running.md, "Running on many
devices"). Run on a machine with fewer cores than simulated devices, e.g. 2 cores:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python scripts/xla_cpu_collective_deadlock.py
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python scripts/xla_cpu_collective_deadlock.py --sync

Without --sync, steps of a data-parallel jitted function (one all-reduce each) are dispatched
asynchronously, several in flight at once; on jax 0.10.2 / 2 cores this aborts within a few hundred
steps with "rendezvous.cc: Termination timeout for all reduce ... Expected 8 threads to join the
rendezvous, but only 7 of them arrived on time". With --sync (block on each step's result before
dispatching the next) it finishes every time.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

mesh = Mesh(np.asarray(jax.devices()), ("data",))
batch = NamedSharding(mesh, P("data"))
replicated = NamedSharding(mesh, P())


@jax.jit
def step(w, x):
  x = jax.lax.with_sharding_constraint(x, batch)
  grad = jax.grad(lambda w: jnp.mean(jnp.tanh(x @ w) ** 2))(w)     # an all-reduce over "data"
  return w - 0.1 * grad


w = jax.device_put(jnp.ones((64, 64)) / 8, replicated)
x = jax.device_put(jax.random.normal(jax.random.key(0), (32 * mesh.size, 64)), batch)
for i in range(2000):
  w = step(w, x)
  if "--sync" in sys.argv:
    w.block_until_ready()
print("finished 2000 steps on", mesh.size, "devices:", float(w.sum()))
