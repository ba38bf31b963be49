"""Data parallelism over every device of every host: one `jit` over a 1-D device mesh.

We use `jit` with a `Mesh` and `NamedSharding` rather than `pmap`: the batch is one global array sharded along the
mesh's `data` axis and the train state is replicated, so the step is written as ordinary single-device code and
XLA inserts the all-reduces of gradients and of batch-norm statistics. The mathematics is the same on 1 or 8
devices or on several hosts (batch statistics are over the global batch), which is what makes the 1-vs-8-device
and two-process losses equal; `pmap` would need explicit `pmean`s and computes per-device batch statistics.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Any = None) -> Mesh:
  """Returns a 1-D mesh named `data` over `devices` (default: every device of every process).

  Devices are ordered by (process, id), so each process's devices form one contiguous block of the mesh: the
  global batch is then the processes' local batches concatenated in process order, the order in which
  `shard_batch` assembles it and `gather_host_values` gathers host-side fields.
  """
  devices = jax.devices() if devices is None else devices
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Returns `tree` placed on every device of `mesh` (the train state)."""
  return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Returns global arrays from this process's part of the batch, split along axis 0 over the `data` axis.

  Each process passes its own `[B_local, ...]` arrays; the global batch is their concatenation in process order.
  B_local must be divisible by the number of local devices.
  """
  sharding = batch_sharded(mesh)
  local = len(mesh.local_devices)
  out = {}
  for name, value in batch.items():
    value = np.asarray(value)
    if value.shape[0] % local:
      raise ValueError(f"batch[{name!r}] has {value.shape[0]} rows, not divisible by the {local} local devices")
    out[name] = jax.make_array_from_process_local_data(sharding, value)
  return out


def gather_host_values(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Returns host-side arrays `[B_local, ...]` concatenated over all processes in process order.

  int64 values (image ids) travel as two int32 halves, since JAX arrays are 32-bit unless x64 is enabled.
  """
  if jax.process_count() == 1:
    return {k: np.asarray(v) for k, v in values.items()}
  parts = {}
  for k, v in values.items():
    v = np.asarray(v)
    if v.dtype == np.int64:
      parts[k + "/lo"] = (v & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
      parts[k + "/hi"] = (v >> 32).astype(np.int32)
    else:
      parts[k] = v
  gathered = {k: np.asarray(v) for k, v in multihost_utils.process_allgather(parts, tiled=True).items()}
  out = {}
  for k, v in values.items():
    if np.asarray(v).dtype == np.int64:
      lo = gathered[k + "/lo"].view(np.uint32).astype(np.int64)
      out[k] = (gathered[k + "/hi"].astype(np.int64) << 32) | lo
    else:
      out[k] = gathered[k]
  return out


def to_host(tree: Any) -> Any:
  """Returns NumPy copies of (possibly multi-host sharded) arrays, complete on every process."""
  if all(getattr(x, "is_fully_addressable", True) or getattr(x, "is_fully_replicated", False)
         for x in jax.tree.leaves(tree)):
    return jax.tree.map(np.asarray, tree)
  return multihost_utils.process_allgather(tree, tiled=True)
