"""Connecting this process to a Ray cluster (Ray is imported here, and only when asked for).

``address`` is what ``ray start --head`` printed (``HOST:6379``), ``"auto"`` for the cluster this
machine already belongs to, or ``"local"`` to start a private cluster inside this process for
trying things out. Every worker machine needs hecnn installed in the same version (the tasks
are hecnn functions); nothing else is shipped to it but HECN objects (see
:mod:`hecnn.distributed.wire`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType

from hecnn.errors import DistributedError

#: object store of a ``local`` cluster: ciphertext batches of 128-bit rings are 0.3–2 GB each,
#: so a few of them in flight; Ray spills to disk beyond it
LOCAL_OBJECT_STORE_BYTES = 2 << 30


def import_ray() -> ModuleType:
    """The ``ray`` module, or a clear error saying how to install it."""
    try:
        import ray
    except ModuleNotFoundError:
        raise DistributedError(
            "Ray is not installed: pip install 'hecnn[ray]' (on every machine of the cluster)"
        ) from None
    return ray


@dataclass
class Connection:
    """This process's link to a cluster; ``close`` shuts down only what ``connect`` started."""

    ray: ModuleType
    address: str
    started_here: bool

    def close(self) -> None:
        if self.started_here and self.ray.is_initialized():
            self.ray.shutdown()
            self.started_here = False


def connect(
    address: str,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
) -> Connection:
    """Join the cluster at ``address`` (or start a ``"local"`` one with ``num_cpus`` CPUs).

    A process already connected keeps its connection (Ray allows one per process).
    """
    ray = import_ray()
    if not address:
        raise DistributedError("give a Ray address (HOST:PORT, 'auto') or 'local'")
    if ray.is_initialized():
        return Connection(ray, address, started_here=False)
    try:
        if address == "local":
            ray.init(
                address="local",  # always a new private cluster, never one found on the machine
                num_cpus=num_cpus or len(os.sched_getaffinity(0)),
                object_store_memory=object_store_memory or LOCAL_OBJECT_STORE_BYTES,
                include_dashboard=False,
                log_to_driver=False,
            )
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        raise DistributedError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    return Connection(ray, address, started_here=True)


def cluster_cpus(ray: ModuleType) -> int:
    """CPUs of the cluster's live nodes."""
    return int(ray.cluster_resources().get("CPU", 0))


def node_memory(ray: ModuleType) -> int:
    """Bytes Ray lets tasks use on the smallest live node that has CPUs (its ``memory``
    resource), the bound a task's working set must fit."""
    sizes = [
        int(n["Resources"].get("memory", 0))
        for n in ray.nodes()
        if n.get("Alive") and n["Resources"].get("CPU", 0) > 0
    ]
    if not sizes:
        raise DistributedError("the Ray cluster has no live node with CPUs")
    return min(sizes)
