"""The client of the HTTP service: keys stay here, only evaluation keys and ciphertexts leave.

:class:`ServiceClient` wraps the endpoints one by one; :func:`classify` is the whole flow —
fetch the server's parameters, load or generate keys, encrypt, open a session, upload, poll,
download, decrypt — used by ``hecnn client classify`` and callable from Python::

    from hecnn.service import classify
    res = classify("http://127.0.0.1:8000", images_uint8, keys_dir="keys/")
    res.labels, res.probabilities

The client also guards its own privacy: it refuses a server whose parameters are below 128-bit
security (a malicious server could otherwise make the client encrypt under weak parameters)
unless explicitly told ``allow_insecure_test_only``, and it validates everything the server
sends back like any other untrusted input.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from hecnn.ckks import serialize
from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import EvaluationKeys
from hecnn.ckks.params import CkksParameters
from hecnn.errors import HecnnError, ServiceError, ShapeError
from hecnn.runtime.client import decrypt_outputs, encrypt_images
from hecnn.runtime.files import (
    KeySet,
    generate_keys,
    load_key_dir,
    prepare_images,
    require_secure,
    write_key_dir,
)

#: (stage, fraction of the stage done in [0, 1], detail) — stages: keys, encrypt, upload,
#: queued, running, download, decrypt
ProgressFn = Callable[[str, float, str], None]


@dataclass(frozen=True)
class ServerInfo:
    """What a server publishes about its model (never the weights)."""

    url: str
    model: str
    input_shape: tuple[int, ...]
    classes: int
    max_batch: int
    preprocess: str
    params: CkksParameters
    raw: dict = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class Session:
    id: str
    token: str

    def __repr__(self) -> str:  # never print the bearer token
        return f"Session({self.id})"


@dataclass(frozen=True)
class Classification:
    logits: np.ndarray  # (images, classes)
    probabilities: np.ndarray  # softmax of the logits
    labels: np.ndarray  # argmax


class ServiceClient:
    """One method per endpoint; every failure is a :class:`~hecnn.errors.ServiceError`."""

    def __init__(
        self, url: str, *, http: httpx.Client | None = None, timeout: float = 120.0
    ) -> None:
        self.url = url.rstrip("/")
        self.http = http or httpx.Client(
            base_url=self.url, timeout=httpx.Timeout(timeout, connect=10.0, write=None)
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, *, session: Session | None = None, **kw):
        headers = {"authorization": f"Bearer {session.token}"} if session else {}
        if "content" in kw:
            headers["content-type"] = "application/octet-stream"
        try:
            resp = self.http.request(method, path, headers=headers, **kw)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach the server at {self.url}: {exc}") from None
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            raise ServiceError(
                f"{method} {path}: HTTP {resp.status_code}: {detail}", resp.status_code
            )
        return resp

    def info(self) -> ServerInfo:
        """``GET /info`` and ``GET /params``, checked against each other."""
        raw = self._call("GET", "/info").json()
        params = serialize.loads(self._call("GET", "/params").content, expect=serialize.Kind.PARAMS)
        try:
            if raw["params"]["fingerprint"] != params.fingerprint:
                raise ServiceError("the server's /info and /params disagree")
            return ServerInfo(
                url=self.url,
                model=str(raw["model"]),
                input_shape=tuple(int(s) for s in raw["input_shape"]),
                classes=int(raw["classes"]),
                max_batch=min(int(raw["max_batch"]), params.slots),
                preprocess=str(raw.get("preprocess", "mnist")),
                params=params,
                raw=raw,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ServiceError(f"malformed /info from the server: {exc}") from None

    def open_session(self, keys: EvaluationKeys) -> Session:
        """Upload evaluation keys (the only key material that ever leaves the client)."""
        if not isinstance(keys, EvaluationKeys):
            raise ServiceError(f"sessions take EvaluationKeys, not {type(keys).__name__}")
        out = self._call("POST", "/sessions", content=serialize.dumps(keys)).json()
        return Session(str(out["session_id"]), str(out["token"]))

    def close_session(self, session: Session) -> None:
        self._call("DELETE", "/sessions", session=session)

    def submit(self, session: Session, batch: CiphertextBatch, *, patience: float = 600.0) -> str:
        """Upload a ciphertext batch; waits and retries while the server's queue is full."""
        if not isinstance(batch, CiphertextBatch):
            raise ServiceError(f"jobs take a CiphertextBatch, not {type(batch).__name__}")
        blob = serialize.dumps(batch)
        deadline = time.monotonic() + patience
        delay = 0.5
        while True:
            try:
                return str(
                    self._call("POST", "/jobs", session=session, content=blob).json()["job_id"]
                )
            except ServiceError as exc:
                if exc.status != 429 or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def status(self, session: Session, job_id: str) -> dict:
        return self._call("GET", f"/jobs/{job_id}", session=session).json()

    def wait(
        self,
        session: Session,
        job_id: str,
        *,
        on_status: Callable[[dict], None] | None = None,
        poll: float = 0.5,
        timeout: float | None = None,
    ) -> dict:
        """Poll until the job is done (returns its status) or failed (raises)."""
        start = time.monotonic()
        while True:
            st = self.status(session, job_id)
            if on_status:
                on_status(st)
            if st["status"] == "done":
                return st
            if st["status"] == "failed":
                raise ServiceError(f"job {job_id} failed on the server: {st.get('error')}")
            if timeout is not None and time.monotonic() - start > timeout:
                raise ServiceError(f"job {job_id} not done after {timeout:.0f} s")
            time.sleep(poll)

    def result(self, session: Session, job_id: str, ctx: CkksContext) -> CiphertextBatch:
        """The encrypted outputs, validated for the client's own parameters."""
        data = self._call("GET", f"/jobs/{job_id}/result", session=session).content
        return serialize.loads(data, ctx, expect=serialize.Kind.CIPHERTEXT_BATCH)

    def delete(self, session: Session, job_id: str) -> None:
        self._call("DELETE", f"/jobs/{job_id}", session=session)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def client_keys(info: ServerInfo, keys_dir: str | Path | None) -> KeySet:
    """Keys for the server's parameters: loaded from ``keys_dir`` when it holds them, else
    generated (and saved there, secret key with mode 0600, when a directory is given)."""
    if keys_dir is not None and (Path(keys_dir) / "params.hecnn").is_file():
        return load_key_dir(Path(keys_dir), info.params)
    keys = generate_keys(info.params)
    if keys_dir is not None:
        spec = {"server": info.url, "model": info.model, "input_shape": list(info.input_shape)}
        write_key_dir(Path(keys_dir), keys, spec)
    return keys


def classify(
    server: str | ServiceClient,
    images: np.ndarray,
    *,
    keys_dir: str | Path | None = None,
    keys: KeySet | None = None,
    on_progress: ProgressFn | None = None,
    poll: float = 0.5,
    allow_insecure_test_only: bool = False,
) -> Classification:
    """Classify ``images`` (uint8 — preprocessed as the server says — or float model inputs)
    on a hecnn server without it seeing the images or the results.

    More images than one ciphertext batch holds are split into several jobs.
    """
    client = server if isinstance(server, ServiceClient) else ServiceClient(server)
    note = on_progress or (lambda stage, frac, detail: None)
    try:
        info = client.info()
        require_secure(info.params, allow_insecure_test_only=allow_insecure_test_only)
        x = np.asarray(images)
        if x.ndim == len(info.input_shape) and info.input_shape[0] == 1:
            x = x[:, None]  # (N, H, W) grayscale
        if tuple(x.shape[1:]) != info.input_shape or len(x) == 0:
            raise ShapeError(
                f"images have shape {tuple(x.shape)}; the model takes (N, {info.input_shape})"
            )
        x = prepare_images(x, info.preprocess)
        note("keys", 0.0, "loading keys" if keys_dir else "generating keys")
        if keys is None:
            keys = client_keys(info, keys_dir)
        elif keys.params.fingerprint != info.params.fingerprint:
            raise HecnnError("the given keys were made for other parameters than the server's")
        note("keys", 1.0, "")
        chunks = [x[i : i + info.max_batch] for i in range(0, len(x), info.max_batch)]
        session = client.open_session(keys.evaluation)
        try:
            jobs = []
            for k, chunk in enumerate(chunks):
                note("encrypt", k / len(chunks), f"batch {k + 1}/{len(chunks)}")
                ct = encrypt_images(info, keys.ctx, keys.public, chunk)
                note("upload", k / len(chunks), f"batch {k + 1}/{len(chunks)}")
                jobs.append(client.submit(session, ct))
                del ct
            note("upload", 1.0, "")
            logits = []
            for k, (jid, chunk) in enumerate(zip(jobs, chunks, strict=True)):

                def on_status(st: dict, k: int = k) -> None:
                    prog = st.get("progress") or {}
                    if st["status"] == "queued":
                        note(
                            "queued", 0.0, f"job {k + 1}/{len(jobs)} position {st.get('position')}"
                        )
                    else:
                        pct = float(prog.get("percent") or 0.0)
                        eta = prog.get("eta_s")
                        detail = f"job {k + 1}/{len(jobs)} {prog.get('layer', '')}"
                        if eta is not None:
                            detail += f" eta {eta:.0f}s"
                        note("running", (k + pct / 100) / len(jobs), detail)

                client.wait(session, jid, on_status=on_status, poll=poll)
                note("download", k / len(jobs), f"job {k + 1}/{len(jobs)}")
                out = client.result(session, jid, keys.ctx)
                if len(out) != info.classes:
                    raise ServiceError(
                        f"the server returned {len(out)} outputs, not {info.classes}"
                    )
                note("decrypt", k / len(jobs), "")
                logits.append(decrypt_outputs(keys.ctx, keys.secret, out, len(chunk)))
            note("decrypt", 1.0, "")
        finally:
            with contextlib.suppress(ServiceError):
                client.close_session(session)  # drops the keys and jobs on the server
        z = np.concatenate(logits)
        return Classification(z, softmax(z), z.argmax(axis=1))
    finally:
        if not isinstance(server, ServiceClient):
            client.close()
