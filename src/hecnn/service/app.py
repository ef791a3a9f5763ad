"""The HTTP server: a FastAPI app built by :func:`create_app` from a plan and a state directory.

Endpoints (bodies are raw ``application/octet-stream`` HECN objects, answers JSON):

- ``GET /info`` — model name, input shape, classes, CKKS parameters, max batch, limits.
- ``GET /params`` — the serialized CKKS parameters the client must use.
- ``POST /sessions`` — evaluation keys → ``{session_id, token}`` (201).
- ``POST /jobs`` — a ciphertext batch (``Authorization: Bearer <token>``) → ``{job_id}`` (202);
  429 when the queue is full.
- ``GET /jobs/{id}`` — status, queue position, progress (layer, percent, ETA).
- ``GET /jobs/{id}/result`` — the encrypted logits (409 until done).
- ``DELETE /jobs/{id}`` — forget a job (204); ``DELETE /sessions`` — forget the session, its
  keys and its jobs (204). Sessions also expire after ``session_ttl`` seconds.

Every rejection is a 4xx with a ``detail`` message: 400 malformed or foreign objects (any
:class:`~hecnn.errors.HecnnError` raised while validating), 401 missing or wrong token, 404
unknown job (also for another session's job: ids are unguessable and existence is not
revealed), 409 result not ready, 413 body over the cap computed from the parameters, 429 queue or
session table full. The server holds no secret key: every upload is parsed with
``allow_secret=False``, and a secret-key object is refused before its contents are read.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from hecnn.ckks import serialize
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import digits
from hecnn.compile.ir import Plan
from hecnn.compile.serialize import dumps_plan
from hecnn.errors import HecnnError, SecurityError
from hecnn.runtime.files import require_secure
from hecnn.service.jobs import JobManager, QueueFullError, Runner
from hecnn.service.store import ID_RE, JobStore, SessionStore

#: allowance for the envelope header and JSON metadata on top of the arrays
ENVELOPE_SLACK = 64 * 1024
UPLOAD_CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Request caps derived from the plan's parameters (bytes), and queue/session bounds."""

    eval_keys_bytes: int
    batch_bytes: int
    max_queue: int
    max_sessions: int

    @classmethod
    def for_plan(cls, plan: Plan, *, max_queue: int, max_sessions: int) -> Limits:
        p = plan.params
        limbs_qp = len(p.moduli) + len(p.special_moduli)
        dnum = len(digits(p, p.max_level))
        relin = dnum * 2 * limbs_qp * p.n * 4
        features = math.prod(plan.input_shape)
        batch = features * 2 * len(p.moduli) * p.n * 4
        return cls(relin + ENVELOPE_SLACK, batch + ENVELOPE_SLACK, max_queue, max_sessions)


def plan_id(plan: Plan) -> str:
    """Identifies the served model (weights and parameters): jobs recorded under another plan
    are not re-run after a restart."""
    return hashlib.sha256(dumps_plan(plan)).hexdigest()[:32]


def _reject(status: int, detail: str, headers: dict | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=detail, headers=headers)


def create_app(
    plan: Plan,
    state_dir: str | Path,
    *,
    workers: int = 1,
    max_queue: int = 8,
    max_sessions: int = 64,
    session_ttl: float = 7 * 24 * 3600.0,
    preprocess: str = "mnist",
    allow_insecure_test_only: bool = False,
    backend: str = "numpy",
    device: str = "cpu",
    runner: Runner | None = None,
) -> FastAPI:
    """The service for ``plan``, keeping sessions and jobs under ``state_dir``.

    Parameters below 128-bit security are refused unless ``allow_insecure_test_only`` (the
    ``--allow-insecure-test-only`` flag of ``hecnn serve``, for tests only). ``backend`` /
    ``device`` choose where the jobs run (``"torch"``, ``"cuda"`` on a GPU server); ``runner``
    what runs them (default :func:`hecnn.runtime.run` here; ``RayExecutor(plan, …).run_plan``
    sends them to a Ray cluster).
    """
    require_secure(plan.params, allow_insecure_test_only=allow_insecure_test_only)
    params = plan.params
    ctx = CkksContext(params, backend=backend, device=device)
    _ = ctx.backend  # a missing torch or GPU fails at start-up, not in the first job
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    uploads = state / "uploads"
    uploads.mkdir(exist_ok=True)
    limits = Limits.for_plan(plan, max_queue=max_queue, max_sessions=max_sessions)
    sessions = SessionStore(state, ctx, max_sessions)
    manager = JobManager(
        plan,
        ctx,
        plan_id(plan),
        JobStore(state),
        sessions,
        workers=workers,
        max_queue=max_queue,
        runner=runner,
    )
    features = math.prod(plan.input_shape)
    params_blob = serialize.dumps(params)
    validating = anyio.CapacityLimiter(2)  # bounds the memory of concurrent upload checks

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        for stale in uploads.iterdir():  # half-received bodies from a previous run
            stale.unlink(missing_ok=True)
        manager.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(manager.stop)

    app = FastAPI(
        title="hecnn encrypted inference",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.manager = manager
    app.state.limits = limits

    @app.exception_handler(HecnnError)
    async def _hecnn_error(_req: Request, exc: HecnnError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    async def receive(request: Request, cap: int, what: str) -> Path:
        """Stream the body to a private temporary file, refusing more than ``cap`` bytes."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise _reject(400, "malformed Content-Length")
            if int(declared) > cap:
                raise _reject(413, f"{what} of {declared} bytes exceeds the cap of {cap} bytes")
        fd, name = tempfile.mkstemp(dir=uploads, suffix=".part")
        path = Path(name)
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > cap:
                        raise _reject(413, f"{what} exceeds the cap of {cap} bytes")
                    f.write(chunk)
        except ClientDisconnect:
            path.unlink(missing_ok=True)
            raise _reject(400, "the client disconnected during the upload") from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if size == 0:
            path.unlink(missing_ok=True)
            raise _reject(400, f"empty body: expected {what} (application/octet-stream)")
        return path

    def check_object(path: Path, kind: serialize.Kind):
        """Parse and validate an upload for this server's parameters (never a secret key)."""
        data = path.read_bytes()
        got, fp, meta, _ = serialize.read_header(data)
        if got == serialize.Kind.SECRET_KEY:
            raise SecurityError("a secret key was sent to the server; refused and not stored")
        if got != kind:
            raise HecnnError(f"expected {kind.name.lower()}, got {got.name.lower()}")
        if fp != params.fingerprint:
            embedded = serialize.params_from_meta(meta.get("params", {}))
            require_secure(embedded, allow_insecure_test_only=False)
            raise HecnnError(
                f"object made for parameters {fp}; this server uses {params.fingerprint} "
                "(fetch GET /params and regenerate keys)"
            )
        return serialize.loads(data, ctx, expect=kind, allow_secret=False)

    def session_of(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _reject(
                401, "missing bearer token (POST /sessions first)", {"WWW-Authenticate": "Bearer"}
            )
        sid = sessions.authenticate(token.strip())
        if sid is None:
            raise _reject(401, "invalid bearer token", {"WWW-Authenticate": "Bearer"})
        return sid

    def job_of(job_id: str, sid: str):
        rec = manager.get(job_id, sid) if ID_RE.match(job_id) else None
        if rec is None:
            raise _reject(404, "no such job for this session")
        return rec

    @app.get("/info")
    async def info() -> dict:
        return {
            "model": plan.model_name,
            "model_version": manager.plan_id[:16],
            "input_shape": list(plan.input_shape),
            "classes": plan.num_classes,
            "max_batch": params.slots,
            "preprocess": preprocess,
            "params": {
                "fingerprint": params.fingerprint,
                "n": params.n,
                "slots": params.slots,
                "levels": params.max_level,
                "log_q": round(params.log_q, 1),
                "log_qp": round(params.log_qp, 1),
                "scale_bits": round(math.log2(params.scale), 2),
                "security": "INSECURE-TEST-ONLY"
                if params.insecure_test_only
                else "128-bit (HE Standard)",
                "description": params.describe(),
            },
            "evaluation_keys": {"relinearization": True, "rotations": []},
            "limits": {
                "eval_keys_bytes": limits.eval_keys_bytes,
                "batch_bytes": limits.batch_bytes,
                "max_queue": limits.max_queue,
                "max_sessions": limits.max_sessions,
            },
            "jobs": manager.counts(),
        }

    @app.get("/params")
    async def get_params() -> Response:
        return Response(params_blob, media_type="application/octet-stream")

    def drop_session(sid: str) -> None:
        manager.delete_session(sid)
        sessions.delete(sid)

    @app.post("/sessions", status_code=201)
    async def create_session(request: Request) -> dict:
        for old in sessions.expired(session_ttl):
            await anyio.to_thread.run_sync(drop_session, old)
        if sessions.full():
            raise _reject(429, f"session table full ({limits.max_sessions}); retry later")
        path = await receive(request, limits.eval_keys_bytes, "evaluation keys")
        try:
            keys = await anyio.to_thread.run_sync(
                check_object, path, serialize.Kind.EVALUATION_KEYS, limiter=validating
            )
            if keys.relin is None:
                raise HecnnError("the evaluation keys lack the relinearization key")
            sid, token = await anyio.to_thread.run_sync(sessions.create, path.read_bytes(), keys)
        finally:
            path.unlink(missing_ok=True)
        return {"session_id": sid, "token": token}

    @app.delete("/sessions", status_code=204)
    async def delete_session(request: Request) -> Response:
        await anyio.to_thread.run_sync(drop_session, session_of(request))
        return Response(status_code=204)

    @app.post("/jobs", status_code=202)
    async def create_job(request: Request) -> dict:
        sid = session_of(request)
        if not manager.has_room():
            raise _reject(429, "the job queue is full; retry later", {"Retry-After": "5"})
        path = await receive(request, limits.batch_bytes, "ciphertext batch")
        try:
            batch = await anyio.to_thread.run_sync(
                check_object, path, serialize.Kind.CIPHERTEXT_BATCH, limiter=validating
            )
            if len(batch) != features:
                raise HecnnError(
                    f"the model takes {features} input ciphertexts (one per feature of "
                    f"{tuple(plan.input_shape)}), got {len(batch)}"
                )
            if batch.level != params.max_level or batch.components != 2:
                raise HecnnError("inputs must be fresh ciphertexts (top level, 2 components)")
            if not np.isclose(batch.scale, params.scale, rtol=1e-9):
                raise HecnnError(f"inputs must be encrypted at scale {params.scale:g}")
            del batch
            jid, d = manager.jobs.new_dir()
            os.replace(path, d / "input.hecnn")
            try:
                rec = manager.submit(jid, sid)
            except QueueFullError as exc:
                manager.jobs.remove(jid)
                raise _reject(429, str(exc), {"Retry-After": "5"}) from None
        finally:
            path.unlink(missing_ok=True)
        return {"job_id": rec.id, "status": rec.status}

    @app.get("/jobs/{job_id}")
    async def job_status(job_id: str, request: Request) -> dict:
        return manager.view(job_of(job_id, session_of(request)))

    @app.get("/jobs/{job_id}/result")
    async def job_result(job_id: str, request: Request) -> Response:
        rec = job_of(job_id, session_of(request))
        if rec.status == "failed":
            raise _reject(409, f"the job failed: {rec.error}")
        if rec.status != "done":
            raise _reject(409, f"the job is {rec.status}; poll GET /jobs/{job_id}")
        try:
            data = await anyio.to_thread.run_sync(manager.result_path(job_id).read_bytes)
        except OSError:
            raise _reject(404, "the job's result is gone (deleted)") from None
        return Response(data, media_type="application/octet-stream")

    @app.delete("/jobs/{job_id}", status_code=204)
    async def delete_job(job_id: str, request: Request) -> Response:
        sid = session_of(request)
        if not ID_RE.match(job_id) or not manager.delete(job_id, sid):
            raise _reject(404, "no such job for this session")
        return Response(status_code=204)

    return app
