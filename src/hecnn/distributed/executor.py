"""``RayExecutor``: a plan run on a Ray cluster — many batches side by side, or one batch whose
layers are split across workers.

- **Data parallel** (:meth:`RayExecutor.run_many`): every batch (≤ N/2 images, its own
  ciphertext batch) is one task running the whole plan on one worker. The plan and the
  evaluation keys are put in Ray's object store once (:meth:`RayExecutor.keys_ref` keeps one
  copy per key set) and every task refers to them: a machine fetches them once, whatever the
  number of batches it runs. Results come back in the order of the batches.
- **Layer split** (:meth:`RayExecutor.run_split`): each node's outputs are cut into slices
  (:mod:`hecnn.distributed.split`), one task each, reading only the input rows it needs from the
  slices of the node before. Every task of the plan is submitted at once; Ray runs each when its
  inputs exist, so layers overlap, and intermediate slices live in the object stores of the
  machines that made them, never whole on one machine (Ray spills them to disk under pressure).
  :meth:`RayExecutor.run` takes this path when the plan's memory estimate exceeds a worker's
  memory.

Faults: tasks are idempotent, so Ray retries a task whose worker or machine died
(``retries`` times, lost intermediate slices are recomputed from their lineage). An error in
hecnn itself (a bad input) is not retried and comes back as the :class:`HecnnError` it is; a
task still failing after its retries raises :class:`DistributedError` naming the batch or layer
— a job either returns every batch or fails loudly.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import EvaluationKeys
from hecnn.compile.ir import ConcatNode, InputNode, Plan
from hecnn.compile.streaming import plan_streaming
from hecnn.distributed.cluster import Connection, cluster_cpus, connect, node_memory
from hecnn.distributed.split import SplitSchedule, plan_split
from hecnn.distributed.wire import open_batch, pack_batch, pack_keys, pack_plan
from hecnn.errors import DistributedError, HecnnError, ParameterError, ShapeError

#: task retries after a worker or node dies (Ray's own default for tasks is 3)
DEFAULT_RETRIES = 3
#: share of a node's task memory one task may plan for (others run beside it)
TASK_MEMORY_SHARE = 0.8
#: seconds between checks of a running job (a cancelled job stops within this)
POLL_SECONDS = 0.5
#: key sets whose object-store copies are kept (one per service session in use)
KEY_SETS = 8

ProgressFn = Callable[[str, int, int], None]


@dataclass
class TaskStats:
    """What one task reported: compute seconds on the worker, bytes it read and returned."""

    seconds: float
    bytes_in: int
    bytes_out: int
    pid: int


@dataclass
class JobStats:
    """A job's transfers and times: ``shared_bytes`` (plan and keys, put once), per task."""

    shared_bytes: int = 0
    tasks: list[TaskStats] = field(default_factory=list)
    wall_seconds: float = 0.0
    #: the driver's own time handing batches over (encoding them, putting them in the store)
    driver_seconds: float = 0.0

    @property
    def bytes_in(self) -> int:
        return sum(t.bytes_in for t in self.tasks)

    @property
    def bytes_out(self) -> int:
        return sum(t.bytes_out for t in self.tasks)


class RayExecutor:
    """Runs ``plan`` on the Ray cluster at ``address`` (``"local"``: a private one here).

    ``cpus_per_task``: CPUs each task asks Ray for (its kernels use as many threads);
    ``worker_memory``: bytes a task may use (default: a share of the smallest node's task
    memory); ``retries``: how often a task is re-run after its worker died.
    """

    def __init__(
        self,
        plan: Plan,
        address: str = "local",
        *,
        cpus_per_task: int = 1,
        worker_memory: int | None = None,
        retries: int = DEFAULT_RETRIES,
        num_cpus: int | None = None,
        object_store_memory: int | None = None,
    ) -> None:
        if cpus_per_task < 1:
            raise ParameterError(f"cpus_per_task must be ≥ 1, got {cpus_per_task}")
        if retries < 0:
            raise ParameterError(f"retries must be ≥ 0, got {retries}")
        self.conn: Connection = connect(
            address, num_cpus=num_cpus, object_store_memory=object_store_memory
        )
        self.ray = self.conn.ray
        from hecnn.distributed import tasks  # imports ray: only once a cluster is chosen

        self._tasks = tasks
        self.plan, self.cpus_per_task, self.retries = plan, cpus_per_task, retries
        if cluster_cpus(self.ray) < cpus_per_task:
            raise DistributedError(
                f"the cluster has {cluster_cpus(self.ray)} CPUs; a task asks for {cpus_per_task}"
            )
        self.worker_memory = worker_memory or int(node_memory(self.ray) * TASK_MEMORY_SHARE)
        blob = pack_plan(plan)
        self.plan_ref = self.ray.put(blob)  # once: every task refers to this copy
        self.plan_bytes = int(blob.nbytes)
        self._keys: OrderedDict[bytes, tuple[object, int]] = OrderedDict()
        self.last: JobStats | None = None
        self._needs_split: bool | None = None

    # -- shared objects -------------------------------------------------------------------------
    def keys_ref(self, keys: EvaluationKeys) -> tuple[object, int]:
        """(object-store reference, bytes) of ``keys``: put once per key set."""
        blob = pack_keys(keys)
        digest = hashlib.sha256(blob).digest()
        if digest not in self._keys:
            self._keys[digest] = (self.ray.put(blob), int(blob.nbytes))
            while len(self._keys) > KEY_SETS:
                self._keys.popitem(last=False)
        self._keys.move_to_end(digest)
        return self._keys[digest]

    def _check(self, batch: CiphertextBatch, keys: EvaluationKeys) -> None:
        p = self.plan.params
        if batch.params.fingerprint != p.fingerprint:
            raise ParameterError("the ciphertexts were not made with the plan's parameters")
        if keys.params.fingerprint != p.fingerprint:
            raise ParameterError("the evaluation keys do not belong to the plan's parameters")
        feats = int(np.prod(self.plan.input_shape))
        if len(batch) != feats:
            raise ShapeError(f"the plan expects {feats} input ciphertexts, got {len(batch)}")

    # -- one batch ------------------------------------------------------------------------------
    def needs_split(self) -> bool:
        """Whether one batch's streamed run exceeds a worker's memory (decided once: the plan
        and the budget do not change)."""
        if self._needs_split is None:
            self._needs_split = not plan_streaming(self.plan, self.worker_memory).fits
        return self._needs_split

    def run(
        self,
        inputs: CiphertextBatch,
        keys: EvaluationKeys,
        *,
        progress: ProgressFn | None = None,
    ) -> CiphertextBatch:
        """One batch: a single task when it fits a worker, else split across workers. The same
        signature as :func:`hecnn.runtime.run`, so the service's job queue can use it."""
        if self.needs_split():
            return self.run_split(inputs, keys, progress=progress)
        nodes = len(self.plan.nodes)
        tick = None if progress is None else (lambda: progress("on the cluster", 0, nodes))
        out = self.run_many([inputs], keys, tick=tick)[0]
        if progress:
            progress("done", nodes, nodes)
        return out

    def run_plan(
        self,
        plan: Plan,
        inputs: CiphertextBatch,
        keys: EvaluationKeys,
        *,
        progress: ProgressFn | None = None,
    ) -> CiphertextBatch:
        """:meth:`run` with :func:`hecnn.runtime.run`'s signature (a job queue's runner)."""
        if plan is not self.plan:
            raise ParameterError("this executor was built for another plan")
        return self.run(inputs, keys, progress=progress)

    # -- data parallel --------------------------------------------------------------------------
    def run_many(
        self,
        batches: Iterable[CiphertextBatch | bytes],
        keys: EvaluationKeys,
        *,
        progress: ProgressFn | None = None,
        concurrency: int | None = None,
        tick: Callable[[], None] | None = None,
    ) -> list[CiphertextBatch]:
        """Every batch as its own task; results in the order of ``batches``.

        A batch may be given as the HECN bytes a client uploaded: it is forwarded as it is
        (no decoding and re-encoding here; the worker validates it as any upload).

        ``concurrency`` bounds the tasks in flight (the batches are put as they are submitted,
        so a long job never holds all its inputs at once); ``progress(name, done, total)`` is
        called as batches finish, ``tick()`` every :data:`POLL_SECONDS` while none does; either
        may raise to cancel the job (its tasks are cancelled).
        """
        batches = list(batches)
        keys_ref, keys_bytes = self.keys_ref(keys)
        stats = JobStats(shared_bytes=self.plan_bytes + keys_bytes)
        t0 = time.perf_counter()
        total = len(batches)
        limit = concurrency or total
        ctx = None
        metas: list[object] = [None] * total
        blobs: list[object] = [None] * total
        pending: dict[object, int] = {}
        submitted = done = 0
        try:
            while done < total:
                while submitted < total and len(pending) < limit:
                    b = batches[submitted]
                    t1 = time.perf_counter()
                    if isinstance(b, CiphertextBatch):
                        self._check(b, keys)
                        ctx = ctx or b.ctx
                        wire = pack_batch(b)
                    else:
                        wire = np.frombuffer(b, dtype=np.uint8)
                    meta, blob = self._tasks.run_batch.options(
                        num_cpus=self.cpus_per_task, max_retries=self.retries
                    ).remote(self.plan_ref, keys_ref, wire, self.worker_memory)
                    del wire
                    stats.driver_seconds += time.perf_counter() - t1
                    metas[submitted], blobs[submitted] = meta, blob
                    pending[meta] = submitted
                    batches[submitted] = None  # the object store holds it now
                    submitted += 1
                ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
                if not ready and tick:
                    tick()
                for ref in ready:
                    i = pending.pop(ref)
                    self._get(ref, f"batch {i + 1} of {total}")
                    done += 1
                    if progress:
                        progress(f"batch {i + 1}", done, total)
            records = self._get(metas, "the job")
            ctx = ctx or CkksContext(self.plan.params)
            outs = [open_batch(blob, ctx) for blob in self._get(blobs, "the job")]
        except BaseException:
            self._cancel([*metas, *blobs])
            raise
        stats.tasks = [_stats(r) for r in records]
        stats.wall_seconds = time.perf_counter() - t0
        self.last = stats
        return outs

    # -- layer split ----------------------------------------------------------------------------
    def split_schedule(self, slices: int | None = None, memory: int | None = None) -> SplitSchedule:
        """How :meth:`run_split` cuts the plan for ``memory`` bytes per task (default: this
        cluster's worker memory)."""
        return plan_split(self.plan, memory or self.worker_memory, slices=slices)

    def run_split(
        self,
        inputs: CiphertextBatch,
        keys: EvaluationKeys,
        *,
        slices: int | None = None,
        memory: int | None = None,
        progress: ProgressFn | None = None,
    ) -> CiphertextBatch:
        """One batch with every layer split into slices (``slices`` forces their number per
        node; default: from the memory estimate for ``memory`` bytes per task). Equal to
        :func:`hecnn.runtime.run` bit for bit."""
        self._check(inputs, keys)
        plan = self.plan
        sched = self.split_schedule(slices, memory)
        keys_ref, keys_bytes = self.keys_ref(keys)
        stats = JobStats(shared_bytes=self.plan_bytes + keys_bytes)
        t0 = time.perf_counter()
        values: dict[str, _Value] = {}
        submitted: list[tuple[str, list]] = []
        users = {n.name: sum(n.name in m.inputs for m in plan.nodes) for n in plan.nodes}
        try:
            for n in plan.nodes:
                if isinstance(n, InputNode):
                    values[n.name] = self._put_input(inputs, sched, n.name)
                    continue
                target = self._concat_target(n, values) if isinstance(n, ConcatNode) else {}
                parts = []
                for s in sched.nodes[n.name].slices:
                    index, refs = [], []
                    for name, rows in s.reads.items():
                        for k in np.unique(values[name].owner[rows]):
                            idx, _, ref = values[name].parts[k]
                            index.append((name, idx))
                            refs.append(ref)
                    meta, blob = self._tasks.run_slice.options(
                        num_cpus=self.cpus_per_task, max_retries=self.retries
                    ).remote(self.plan_ref, keys_ref, n.name, s, target, index, *refs)
                    parts.append((s.idx, meta, blob))
                values[n.name] = _Value(n.features, parts)
                submitted.append((n.name, [m for _, m, _ in parts]))
                for x in n.inputs:  # the tasks hold what they read; drop the driver's refs
                    users[x] -= 1
                    if users[x] == 0:
                        values.pop(x, None)
            records = []
            position = {n.name: i for i, n in enumerate(plan.nodes)}
            for name, metas in submitted:
                records += self._get(metas, f"layer {name}")
                if progress:  # as the executor reports: (node, its index, nodes)
                    progress(name, position[name] + 1, len(plan.nodes))
            out = values[plan.output]
            blobs = self._get([b for _, _, b in out.parts], f"layer {plan.output}")
        except BaseException:
            self._cancel([r for _, metas in submitted for r in metas])
            raise
        stats.tasks = [_stats(r) for r in records]
        stats.wall_seconds = time.perf_counter() - t0
        self.last = stats
        return _assemble(inputs.ctx, out, blobs)

    def _put_input(self, inputs: CiphertextBatch, sched: SplitSchedule, name: str) -> _Value:
        """The input in as many parts as its most divided reader has slices."""
        readers = [s for s in sched.nodes.values() if any(name in x.reads for x in s.slices)]
        count = max((len(s.slices) for s in readers), default=1)
        parts = []
        for idx in np.array_split(np.arange(len(inputs), dtype=np.int64), count):
            part = CiphertextBatch(inputs.ctx, inputs.data[idx[0] : idx[-1] + 1], inputs.scale)
            record = {"level": part.level, "components": part.components, "scale": part.scale}
            parts.append((idx, record, self.ray.put(pack_batch(part))))
        return _Value(len(inputs), parts)

    def _concat_target(self, n: ConcatNode, values: dict[str, _Value]) -> dict:
        """Level, components and scale of the whole concatenation (as ``CiphertextBatch.stack``
        makes them), from the records of its inputs' first slices."""
        firsts = [values[x].parts[0][1] for x in n.inputs]
        firsts = [r if isinstance(r, dict) else self._get(r, "a layer") for r in firsts]
        return {
            "level": min(r["level"] for r in firsts),
            "components": max(r["components"] for r in firsts),
            "scale": firsts[0]["scale"],
        }

    # -- errors ---------------------------------------------------------------------------------
    def _get(self, refs, what: str):
        """``ray.get`` with Ray's failures turned into hecnn's: an error raised by hecnn inside
        a task comes back as itself; a task that kept dying is a :class:`DistributedError`."""
        ray = self.ray
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, HecnnError):
                raise cause from None
            raise DistributedError(f"{what} failed on the cluster: {exc}") from None
        except ray.exceptions.RayError as exc:  # worker or node died, object lost
            raise DistributedError(
                f"{what} failed on the cluster after {self.retries} retries: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None

    def _cancel(self, refs) -> None:
        for r in refs:
            if r is not None:
                with contextlib.suppress(Exception):  # finished or gone: nothing to stop
                    self.ray.cancel(r)

    def close(self) -> None:
        """Shut down the cluster if this executor started it (``"local"``)."""
        self.conn.close()


@dataclass
class _Value:
    """A node's output as slices in the object store: (global indices, record, data) each,
    and ``owner[f]``, the slice holding feature f."""

    features: int
    parts: list[tuple[np.ndarray, object, object]]

    def __post_init__(self) -> None:
        self.owner = np.empty(self.features, dtype=np.int64)
        for k, (idx, _, _) in enumerate(self.parts):
            self.owner[idx] = k


def _stats(r: dict) -> TaskStats:
    return TaskStats(r["seconds"], r["bytes_in"], r["bytes_out"], r["pid"])


def _assemble(ctx, out: _Value, blobs: list[np.ndarray]) -> CiphertextBatch:
    """The output node's slices, in feature order, as one batch."""
    batches = [open_batch(b, ctx) for b in blobs]
    data = np.empty((out.features, *batches[0].data.shape[1:]), dtype=np.int32)
    for (idx, _, _), b in zip(out.parts, batches, strict=True):
        data[idx] = b.data
    return CiphertextBatch(ctx, data, batches[0].scale)
