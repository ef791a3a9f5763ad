"""The job queue: a bounded number of pending jobs, run one (or a few) at a time by worker
threads, every state transition recorded on disk.

Why threads and so few of them: the CKKS kernels release the GIL and one job already keeps every
core busy (the context's own thread pool), so a second concurrent job only adds memory. The
HTTP event loop stays responsive because the heavy work never runs on it.

Restart policy (chosen over "mark everything failed"): a job whose input ciphertexts and session
keys are still on disk is **re-queued** — the client uploaded it and was given an id, running the
same public computation again on the same ciphertexts reveals nothing new, and the client simply
keeps polling. A job that was already *running* when the server died is retried once; if it dies
again (say it crashed the machine) it is marked failed rather than retried forever. A job whose
input, session or model is gone is marked failed with the reason. Finished results are kept.
Nothing accepted is ever silently lost.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hecnn.ckks import serialize
from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.context import CkksContext
from hecnn.compile.cost import node_costs
from hecnn.compile.ir import Plan
from hecnn.errors import HecnnError
from hecnn.runtime.executor import run
from hecnn.runtime.files import write_atomic
from hecnn.service.store import JobRecord, JobStore, SessionStore

log = logging.getLogger("hecnn.service")

#: a job interrupted while running is retried this many times in total before it is failed
MAX_ATTEMPTS = 2


#: what runs a job: :func:`hecnn.runtime.run`, or e.g. a Ray cluster's
#: (:meth:`hecnn.distributed.RayExecutor.run_plan`), with the same signature
Runner = Callable[..., CiphertextBatch]


class QueueFullError(HecnnError):
    """More jobs are pending than the server accepts (HTTP 429)."""


class _StopRunError(Exception):
    """Raised from the progress callback to abandon a run at a node boundary."""


class JobManager:
    """Accepts, queues, runs and records jobs for one plan."""

    def __init__(
        self,
        plan: Plan,
        ctx: CkksContext,
        plan_id: str,
        jobs: JobStore,
        sessions: SessionStore,
        *,
        workers: int = 1,
        max_queue: int = 8,
        runner: Runner | None = None,
    ) -> None:
        self.plan, self.ctx, self.plan_id = plan, ctx, plan_id
        self.runner = runner or run
        self.jobs, self.sessions = jobs, sessions
        self.workers, self.max_queue = max(1, workers), max(1, max_queue)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: collections.deque[str] = collections.deque()
        self._records: dict[str, JobRecord] = {}
        self._cancel: set[str] = set()
        self._stopping = False
        self._paused = False
        self._threads: list[threading.Thread] = []
        costs = node_costs(plan)
        total = sum(costs) or 1.0
        self._done_before = [sum(costs[:i]) / total for i in range(len(costs) + 1)]

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, name=f"hecnn-job-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers; a running job is abandoned at its next layer and re-queued on disk."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        for t in self._threads:
            t.join(timeout)

    def pause(self, paused: bool = True) -> None:
        """Hold queued jobs (maintenance; running jobs finish); ``pause(False)`` resumes."""
        with self._lock:
            self._paused = paused
            self._wake.notify_all()

    def recover(self) -> None:
        """Load the records a previous server left (see the module doc for the policy)."""
        records, orphans = self.jobs.load_all()
        for d in orphans:  # uploads that never got an id back: nobody knows of them
            self.jobs.remove(d.name)
        for rec in records:
            if rec.status in ("queued", "running"):
                reason = self._unrunnable(rec)
                if rec.status == "running" and rec.attempts >= MAX_ATTEMPTS:
                    reason = reason or (
                        f"interrupted by server restart {rec.attempts} times; not retried again"
                    )
                if reason:
                    rec.status, rec.error, rec.finished = "failed", reason, time.time()
                else:
                    rec.status, rec.progress = "queued", {}
                    self._pending.append(rec.id)
                self.jobs.save(rec)
            elif rec.status == "done" and not (self.jobs.dir(rec.id) / "result.hecnn").is_file():
                rec.status, rec.error = "failed", "result lost from the server's disk"
                self.jobs.save(rec)
            self._records[rec.id] = rec
        if self._pending:
            log.info("re-queued %d job(s) interrupted by a restart", len(self._pending))

    def _unrunnable(self, rec: JobRecord) -> str | None:
        if rec.plan_id != self.plan_id:
            return "interrupted by server restart: the server now runs a different model"
        if not self.sessions.exists(rec.session):
            return "interrupted by server restart: the session's keys are gone"
        if not (self.jobs.dir(rec.id) / "input.hecnn").is_file():
            return "interrupted by server restart: the input ciphertexts are gone"
        return None

    # -- requests -------------------------------------------------------------------------------
    def has_room(self) -> bool:
        with self._lock:
            return len(self._pending) < self.max_queue

    def submit(self, jid: str, session: str) -> JobRecord:
        """Record and queue job ``jid`` whose validated input is already in its directory."""
        rec = JobRecord(id=jid, session=session, plan_id=self.plan_id)
        with self._lock:
            if len(self._pending) >= self.max_queue or self._stopping:
                raise QueueFullError(
                    f"the queue is full ({self.max_queue} jobs pending); retry later"
                )
            self.jobs.save(rec)  # on disk before the client learns the id
            self._records[jid] = rec
            self._pending.append(jid)
            self._wake.notify()
        return rec

    def get(self, jid: str, session: str) -> JobRecord | None:
        """The record of ``jid`` if it belongs to ``session`` (else ``None``: no oracle)."""
        with self._lock:
            rec = self._records.get(jid)
            if rec is None or rec.session != session:
                return None
            return JobRecord(**{**rec.__dict__, "progress": dict(rec.progress)})

    def view(self, rec: JobRecord) -> dict:
        """The JSON the API returns for a job."""
        out = {
            "job_id": rec.id,
            "status": rec.status,
            "created": rec.created,
            "started": rec.started,
            "finished": rec.finished,
            "error": rec.error,
            "attempts": rec.attempts,
        }
        if rec.status == "queued":
            with self._lock:
                out["position"] = (
                    self._pending.index(rec.id) + 1 if rec.id in self._pending else None
                )
        prog = {k: v for k, v in rec.progress.items() if k != "started_at"}
        if rec.status == "done":
            prog = {**prog, "percent": 100.0, "eta_s": 0.0}
        out["progress"] = prog
        return out

    def result_path(self, jid: str) -> Path:
        return self.jobs.dir(jid) / "result.hecnn"

    def delete(self, jid: str, session: str) -> bool:
        """Forget a job: a queued one is dropped, a running one abandoned at its next layer."""
        with self._lock:
            rec = self._records.get(jid)
            if rec is None or rec.session != session:
                return False
            if rec.status == "running":
                self._cancel.add(jid)
            if jid in self._pending:
                self._pending.remove(jid)
            del self._records[jid]
            running = rec.status == "running"
        if not running:
            self.jobs.remove(jid)
        return True

    def delete_session(self, session: str) -> int:
        """Forget every job of ``session`` (the session is being deleted or expired)."""
        with self._lock:
            jids = [j for j, r in self._records.items() if r.session == session]
        return sum(self.delete(j, session) for j in jids)

    def counts(self) -> dict[str, int]:
        with self._lock:
            out = dict.fromkeys(("queued", "running", "done", "failed"), 0)
            for r in self._records.values():
                out[r.status] += 1
            return out

    # -- workers --------------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            with self._lock:
                while (not self._pending or self._paused) and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                jid = self._pending.popleft()
                rec = self._records[jid]
                rec.status, rec.started, rec.attempts = "running", time.time(), rec.attempts + 1
                rec.progress = {"started_at": time.perf_counter()}
                self.jobs.save(rec)
            self._run(rec)

    def _run(self, rec: JobRecord) -> None:
        jid = rec.id
        d = self.jobs.dir(jid)

        def progress(name: str, i: int, total: int) -> None:
            with self._lock:
                if self._stopping or jid in self._cancel:
                    raise _StopRunError
                frac = self._done_before[min(i, total)]
                elapsed = time.perf_counter() - rec.progress["started_at"]
                eta = elapsed * (1 - frac) / frac if frac > 0.02 else None
                rec.progress.update(
                    layer=name,
                    node=i,
                    nodes=total,
                    percent=round(100 * frac, 1),
                    elapsed_s=round(elapsed, 2),
                    eta_s=None if eta is None else round(eta, 1),
                )

        try:
            keys = self.sessions.keys(rec.session)
            inp = serialize.loads(
                (d / "input.hecnn").read_bytes(), self.ctx, expect=serialize.Kind.CIPHERTEXT_BATCH
            )
            out = self.runner(self.plan, inp, keys, progress=progress)
            del inp
            write_atomic(d / "result.hecnn", serialize.dumps(out))
            final = ("done", None)
        except _StopRunError:
            final = ("queued", None)
        except HecnnError as exc:
            final = ("failed", str(exc))
        except (OSError, MemoryError) as exc:
            final = ("failed", f"server error while running the job: {type(exc).__name__}")
            log.exception("job %s", jid)
        except Exception:  # a bug: report it on the job, keep the worker alive
            final = ("failed", "internal error while running the job (logged on the server)")
            log.exception("job %s", jid)
        with self._lock:
            if jid in self._cancel:  # deleted while running
                self._cancel.discard(jid)
                self.jobs.remove(jid)
                return
            rec.status, rec.error = final
            if rec.status == "queued":  # server stopping: leave it for the next start
                rec.attempts -= 1
                rec.progress = {}
            else:
                rec.finished = time.time()
            self.jobs.save(rec)
        if rec.status == "done":
            (d / "input.hecnn").unlink(missing_ok=True)
