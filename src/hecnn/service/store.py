"""The server's state on disk: sessions (evaluation keys + token hash) and job records.

Layout under the state directory::

    sessions/<sid>/session.json   {"token_sha256", "created"}        (never the token itself)
    sessions/<sid>/eval.hecnn     the session's public evaluation keys
    jobs/<jid>/status.json        the job record (written atomically on every transition)
    jobs/<jid>/input.hecnn        the uploaded ciphertext batch (deleted once the job is done)
    jobs/<jid>/result.hecnn       the encrypted outputs

Every id is a 128-bit ``secrets.token_urlsafe`` value checked against :data:`ID_RE` before it
touches a path. Nothing here ever holds a secret key: the only key material is the evaluation
keys, loaded with ``allow_secret=False``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hecnn.ckks import serialize
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import EvaluationKeys
from hecnn.errors import HecnnError
from hecnn.runtime.files import write_atomic

ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
JOB_STATES = ("queued", "running", "done", "failed")


def new_id() -> str:
    return secrets.token_urlsafe(16)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """Sessions: evaluation keys on disk, a cache of loaded keys, bearer-token checks."""

    def __init__(self, root: Path, ctx: CkksContext, max_sessions: int) -> None:
        self.root = Path(root) / "sessions"
        self.root.mkdir(parents=True, exist_ok=True)
        self.ctx = ctx
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._keys: dict[str, EvaluationKeys] = {}
        self._hashes: dict[str, str] = {}
        self._created: dict[str, float] = {}
        for d in self.root.iterdir():
            try:
                meta = json.loads((d / "session.json").read_text())
                if ID_RE.match(d.name) and (d / "eval.hecnn").is_file():
                    self._hashes[d.name] = str(meta["token_sha256"])
                    self._created[d.name] = float(meta["created"])
                    continue
            except (OSError, ValueError, KeyError, TypeError):
                pass
            shutil.rmtree(d, ignore_errors=True)  # half-written: its token was never returned

    def __len__(self) -> int:
        with self._lock:
            return len(self._hashes)

    def full(self) -> bool:
        return len(self) >= self.max_sessions

    def create(self, keys_blob: bytes, keys: EvaluationKeys) -> tuple[str, str]:
        """Store validated evaluation keys; return (session id, bearer token)."""
        sid = new_id()
        token = f"{sid}.{secrets.token_urlsafe(32)}"
        d = self.root / sid
        d.mkdir()
        write_atomic(d / "eval.hecnn", keys_blob)
        write_atomic(
            d / "session.json",
            json.dumps({"token_sha256": _hash(token), "created": time.time()}).encode(),
        )
        with self._lock:
            self._hashes[sid] = _hash(token)
            self._created[sid] = time.time()
            self._keys[sid] = keys
        return sid, token

    def delete(self, sid: str) -> None:
        with self._lock:
            self._hashes.pop(sid, None)
            self._created.pop(sid, None)
            self._keys.pop(sid, None)
        shutil.rmtree(self.root / sid, ignore_errors=True)

    def expired(self, ttl: float) -> list[str]:
        """Sessions created more than ``ttl`` seconds ago."""
        limit = time.time() - ttl
        with self._lock:
            return [sid for sid, t in self._created.items() if t < limit]

    def authenticate(self, token: str) -> str | None:
        """The session id a bearer token belongs to, or ``None`` (constant-time comparison)."""
        sid, _, rest = token.partition(".")
        if not rest or not ID_RE.match(sid):
            return None
        with self._lock:
            stored = self._hashes.get(sid)
        ok = hmac.compare_digest(_hash(token), stored or _hash("x" + token))
        return sid if ok and stored is not None else None

    def exists(self, sid: str) -> bool:
        with self._lock:
            return sid in self._hashes

    def keys(self, sid: str) -> EvaluationKeys:
        """The session's evaluation keys (re-validated from disk after a restart)."""
        with self._lock:
            if sid in self._keys:
                return self._keys[sid]
        blob = (self.root / sid / "eval.hecnn").read_bytes()
        keys = serialize.loads(blob, self.ctx, expect=serialize.Kind.EVALUATION_KEYS)
        with self._lock:
            self._keys[sid] = keys
        return keys


@dataclass
class JobRecord:
    """What the server knows of a job; persisted as ``status.json``."""

    id: str
    session: str
    plan_id: str
    status: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    attempts: int = 0
    progress: dict = field(default_factory=dict)


class JobStore:
    """Job directories and their records (the in-memory copy is authoritative while running)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)

    def dir(self, jid: str) -> Path:
        if not ID_RE.match(jid):
            raise HecnnError("malformed job id")
        return self.root / jid

    def new_dir(self) -> tuple[str, Path]:
        jid = new_id()
        d = self.root / jid
        d.mkdir()
        return jid, d

    def save(self, rec: JobRecord) -> None:
        data = asdict(rec)
        data["progress"] = {k: v for k, v in rec.progress.items() if k != "started_at"}
        write_atomic(self.dir(rec.id) / "status.json", json.dumps(data).encode())

    def load_all(self) -> tuple[list[JobRecord], list[Path]]:
        """Every recorded job, oldest first, and the directories without a readable record."""
        records, orphans = [], []
        for d in self.root.iterdir():
            if not d.is_dir():
                continue
            try:
                raw = json.loads((d / "status.json").read_text())
                rec = JobRecord(**raw)
                if rec.id != d.name or rec.status not in JOB_STATES:
                    raise ValueError("inconsistent record")
                records.append(rec)
            except (OSError, ValueError, TypeError):
                orphans.append(d)
        records.sort(key=lambda r: r.created)
        return records, orphans

    def remove(self, jid: str) -> None:
        shutil.rmtree(self.dir(jid), ignore_errors=True)
