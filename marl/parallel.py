"""Data-parallel training over local devices with ``jax.sharding``.

The environment copies of every seed are split over a one-axis device mesh (``"env"``); the
parameters, optimiser state and PRNG keys are replicated. The training program is the same
one as on a single device: XLA's SPMD partitioner runs the rollout on each device's copies and
all-reduces the gradients (the PPO loss is a mean over the whole batch), so the same total
batch learns the same, within float tolerance, on one device or many.

``devices=all`` uses every device, ``devices=N`` the first N. On the CPU, test it with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``.

Several hosts (or processes) join one run through ``jax.distributed`` (:func:`init_distributed`,
the ``distributed.*`` config keys): every process runs the same program on the same config,
the mesh spans every process's devices, each process steps its share of the environment
copies, and process 0 writes the run directory. A checkpoint gathers the environment state of
every process (:func:`gather_to_host`) and every process takes part in one orbax save (process
0 writes it), so the run directory must be on a filesystem every host sees; a resume gives
every process the whole state back and each takes its share (:func:`to_global`). Launch, one
command per host::

    marl train devices=all distributed.coordinator=HOST0:12345 \
        distributed.num_processes=2 distributed.process_id=0    # on host 0
    marl train devices=all distributed.coordinator=HOST0:12345 \
        distributed.num_processes=2 distributed.process_id=1    # on host 1
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from marl.errors import ConfigError


def select_devices(devices: str | int, num_envs: int) -> list[Any]:
    """The devices that ``devices`` (``"all"`` or a count) names; checks they divide the
    environment copies."""
    # one process: its devices; several processes (jax.distributed): every process's devices
    local = jax.devices()
    if devices in ("all", "ALL"):
        n = len(local)
    else:
        try:
            n = int(devices)
        except (TypeError, ValueError):
            raise ConfigError(f"devices={devices!r}: use 'all' or a device count") from None
    if not 1 <= n <= len(local):
        raise ConfigError(
            f"devices={devices}: this machine has {len(local)} {local[0].platform} device(s)"
        )
    if num_envs % n:
        raise ConfigError(f"num_envs={num_envs} must be a multiple of the {n} devices")
    return local[:n]


def runner_shardings(mesh: Mesh, runner: Any) -> Any:
    """Shardings of a ``Runner`` with leaves ``[S, ...]``: environment-batched fields split
    along their copy axis (axis 1), everything else replicated."""
    env_axis = NamedSharding(mesh, PartitionSpec(None, "env"))
    replicated = NamedSharding(mesh, PartitionSpec())

    def of(tree, sharding):
        return jax.tree.map(lambda _: sharding, tree)

    return runner._replace(
        train=of(runner.train, replicated),
        env_state=of(runner.env_state, env_axis),
        ts=of(runner.ts, env_axis),
        hidden=of(runner.hidden, env_axis),
        first=of(runner.first, env_axis),
        key=of(runner.key, replicated),
    )


def make_mesh(devices: list[Any]) -> Mesh:
    return Mesh(np.asarray(devices), ("env",))


def to_global(tree: Any, shardings: Any) -> Any:
    """Place ``tree`` with ``shardings``. With several processes, every process holds the same
    full values (same seed, same computation) and contributes the shards it owns."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def one(x, sharding):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        full = np.asarray(x)
        return jax.make_array_from_callback(full.shape, sharding, lambda idx: full[idx])

    return jax.tree.map(one, tree, shardings)


def init_distributed(coordinator: str | None, num_processes: int, process_id: int) -> None:
    """Join a multi-process (multi-host) run through ``jax.distributed.initialize``; on the
    CPU the processes all-reduce with gloo. Call before any other JAX computation."""
    if num_processes <= 1:
        return
    if not coordinator:
        raise ConfigError(
            "distributed.num_processes > 1 needs distributed.coordinator (host:port of process 0)"
        )
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"distributed.process_id={process_id} is not in [0, {num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )


# ------------------------------------------------------------------ several processes
def broadcast_text(text: str, limit: int = 4096) -> str:
    """Process 0's ``text`` on every process (e.g. the run directory it created)."""
    buf = np.zeros(limit, np.uint8)
    if jax.process_index() == 0:
        raw = text.encode()
        if len(raw) > limit:
            raise ConfigError(f"{text[:60]}...: longer than {limit} bytes")
        buf[: len(raw)] = np.frombuffer(raw, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return bytes(out).rstrip(b"\0").decode()


def gather_to_host(tree: Any) -> Any:
    """The full value of every leaf as numpy on every process: arrays split over the devices
    of several processes are all-gathered (a collective: every process must call it)."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)
