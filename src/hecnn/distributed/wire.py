"""What crosses the network of a Ray cluster, and how a worker opens it.

Everything a task receives or returns is an HECN object (:mod:`hecnn.ckks.serialize`,
:mod:`hecnn.compile.serialize`) held as a ``uint8`` numpy array: Ray keeps such arrays in its
object store as they are and hands workers a read-only view of shared memory (no pickling copy
of hundreds of megabytes), and the worker validates the bytes exactly as a server validates an
upload. Only three kinds ever travel — the plan, the *evaluation* keys and ciphertext batches —
and :func:`pack_keys` takes nothing but :class:`~hecnn.ckks.keys.EvaluationKeys`: the secret key
has no way onto the cluster.

A worker process runs many tasks of one job. Rebuilding the plan, the context's NTT tables and
the keys for each would cost more than a small layer slice, so the last few are kept per process
(:class:`_Recent`), keyed by the envelope header, whose SHA-256 digest names the content.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from hecnn.ckks import serialize
from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.context import CkksContext, default_threads
from hecnn.ckks.keys import EvaluationKeys
from hecnn.ckks.params import CkksParameters
from hecnn.compile.ir import Plan
from hecnn.compile.serialize import dumps_plan, loads_plan
from hecnn.errors import SerializationError

T = TypeVar("T")

#: bytes of the envelope header (magic, version, kind, fingerprint, lengths, SHA-256 digest)
HEADER_BYTES = serialize._HEADER.size


def _blob(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def pack_plan(plan: Plan) -> np.ndarray:
    """The plan as it travels (weights included: the model owner's cluster runs it)."""
    return _blob(dumps_plan(plan))


def pack_keys(keys: EvaluationKeys) -> np.ndarray:
    """Public evaluation keys as they travel; anything else (a secret key) is refused."""
    if not isinstance(keys, EvaluationKeys):
        raise SerializationError(
            f"only evaluation keys go to the cluster, not a {type(keys).__name__}"
        )
    return _blob(serialize.dumps(keys))


def pack_batch(batch: CiphertextBatch) -> np.ndarray:
    """A ciphertext batch as it travels."""
    return _blob(serialize.dumps(batch))


class _Recent:
    """The last ``size`` objects opened in this process, by key (most recent kept)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[object, object] = OrderedDict()

    def get(self, key: object, build: Callable[[], T]) -> T:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]  # type: ignore[return-value]
        value = build()
        self.items[key] = value
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


# one per worker process: a job's tasks share the plan, the context and the keys
_PLANS = _Recent(2)
_CONTEXTS = _Recent(2)
_KEYS = _Recent(4)


def _header(blob: np.ndarray) -> bytes:
    return bytes(memoryview(blob)[:HEADER_BYTES])


def open_plan(blob: np.ndarray) -> Plan:
    """The plan in ``blob`` (validated on first sight in this process)."""
    return _PLANS.get(_header(blob), lambda: loads_plan(memoryview(blob)))


def open_context(params: CkksParameters, threads: int | None = None) -> CkksContext:
    """A context for ``params`` using ``threads`` threads (default: the cores Ray gave the task,
    see :func:`task_threads`)."""
    threads = threads or task_threads()
    return _CONTEXTS.get(
        (params.fingerprint, threads), lambda: CkksContext(params, threads=threads)
    )


def open_keys(blob: np.ndarray, ctx: CkksContext) -> EvaluationKeys:
    """The evaluation keys in ``blob``; a secret key is refused by the loader itself."""
    return _KEYS.get(
        _header(blob),
        lambda: serialize.loads(
            memoryview(blob), ctx, expect=serialize.Kind.EVALUATION_KEYS, allow_secret=False
        ),
    )


def open_batch(blob: np.ndarray, ctx: CkksContext) -> CiphertextBatch:
    """The ciphertext batch in ``blob`` (validated: shapes, residues, parameters)."""
    return serialize.loads(memoryview(blob), ctx, expect=serialize.Kind.CIPHERTEXT_BATCH)


def task_threads() -> int:
    """Threads for the kernels of the task running here: the CPUs Ray assigned to it (so two
    tasks on one machine do not each start a thread per core), else the process's cores."""
    try:
        import ray

        if ray.is_initialized():
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
            if cpus >= 1:
                return int(cpus)
    except ImportError:  # pragma: no cover - only called inside Ray tasks
        pass
    return default_threads()
