"""Data parallelism over every device of every host: one Mesh with a "data" axis.

Parameters and optimizer state are replicated; batches are sharded along "data". Each
host feeds only its own slice of the global batch (`global_batch`), and `jax.jit` with
these shardings makes the contrastive loss see the whole global batch. The same code runs
on one CPU, one host with 8 GPUs, and a multi-host TPU pod slice or SLURM GPU job.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

DATA_AXIS = "data"

_MULTIHOST_ENV = (
    "ATJAX_DISTRIBUTED",         # =1: let jax.distributed auto-detect (TPU pods, GKE, ...)
    "JAX_COORDINATOR_ADDRESS",   # explicit set-up (several processes on one machine, tests)
    "SLURM_JOB_ID",              # SLURM: jax.distributed reads the topology from SLURM
    "TPU_WORKER_HOSTNAMES",      # Cloud TPU VM pod slices (when the runtime exports it)
)


def initialize_distributed() -> None:
    """Calls `jax.distributed.initialize()` when the environment describes several hosts.

    Must run before any other JAX call. A single process (a laptop, one GPU host) skips it.
    `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` are honoured
    explicitly; SLURM and TPU pods are auto-detected by JAX itself.
    """
    if not any(os.environ.get(k) for k in _MULTIHOST_ENV):
        return
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) <= 1 \
            and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return  # a one-task SLURM job is a single process
    kwargs = {}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAX_PROCESS_ID"]))
        if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
            # CPU hosts need a collectives backend for cross-process all-gathers.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    elif os.environ.get("SLURM_JOB_ID"):
        kwargs = _slurm_local_devices()
    jax.distributed.initialize(**kwargs)
    log.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())


def _slurm_local_devices() -> dict:
    """With one SLURM task per node, that task drives all of the node's GPUs.

    JAX's SLURM detection assumes one task per GPU and gives each process the one device
    numbered by its SLURM_LOCALID: with one task per node every process would train on
    GPU 0 alone. So when each node runs a single task, name all of its GPUs.
    """
    per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "")
    gpus = os.environ.get("SLURM_GPUS_ON_NODE", "")
    # SLURM writes e.g. "1" or "1(x4)" (the same count on 4 nodes).
    if per_node.split("(")[0] != "1" or not gpus.isdigit():
        return {}
    return {"local_device_ids": list(range(int(gpus)))}


def make_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """Returns the per-host batch size; the global batch must split evenly over devices."""
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ValueError(f"batch_size={global_batch_size} is not divisible by the "
                         f"{devices} devices of the mesh")
    return global_batch_size // jax.process_count()


def replicate(tree, mesh: Mesh):
    """Places host-local values (identical on every host) as arrays replicated over the
    whole mesh. Unlike `jax.device_put`, this works when the mesh spans other hosts."""
    sharding = replicated(mesh)

    def one(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = one(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.tree.map(one, tree)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each host's slice into global arrays sharded along the data axis."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v)
            for k, v in local_batch.items()}
