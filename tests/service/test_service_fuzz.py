"""Property-based fuzzing of every endpoint (in process, ``fastapi.testclient``) with corrupted,
truncated, extended, re-checksummed and oversized bodies, foreign kinds, random ids and tokens:
the answer is always a 4xx with a message, never a 500, and the server keeps serving."""

import hashlib
import json
import struct
from urllib.parse import quote

import pytest
from _svchelpers import tiny_images
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hecnn.ckks import serialize
from hecnn.compile.serialize import dumps_plan
from hecnn.runtime import encrypt_images
from hecnn.runtime.files import generate_keys
from hecnn.service import create_app

HEAD = struct.Struct("<4sHH16sIQ32s")
ASCII = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)


@pytest.fixture(scope="module")
def env(tiny, tmp_path_factory):
    _, plan = tiny
    keys = generate_keys(plan.params)
    blobs = {
        "eval": serialize.dumps(keys.evaluation),
        "batch": serialize.dumps(encrypt_images(plan, keys.ctx, keys.public, tiny_images(2, 1))),
        "params": serialize.dumps(plan.params),
        "public": serialize.dumps(keys.public),
        "secret": serialize.dumps(keys.secret),
        "plan": dumps_plan(plan),
    }
    app = create_app(
        plan, tmp_path_factory.mktemp("fuzz"), max_queue=64, allow_insecure_test_only=True
    )
    with TestClient(app, raise_server_exceptions=True) as http:
        token = http.post("/sessions", content=blobs["eval"]).json()["token"]
        yield http, token, blobs


def _reseal(blob: bytes, meta_bytes: bytes, body: bytes) -> bytes:
    magic, version, kind, fprint, *_ = HEAD.unpack_from(blob)
    digest = hashlib.sha256(meta_bytes + body).digest()
    return HEAD.pack(magic, version, kind, fprint, len(meta_bytes), len(body), digest) + (
        meta_bytes + body
    )


@st.composite
def mutated(draw, blobs: dict) -> tuple[str, bytes, bool]:
    """(source kind, bytes, unchanged?) — a valid object, then maybe one mutation."""
    name = draw(st.sampled_from(sorted(blobs)))
    base = blobs[name]
    mode = draw(
        st.sampled_from(
            ["none", "flip", "truncate", "extend", "header", "meta", "payload", "random"]
        )
    )
    if mode == "none":
        return name, base, True
    if mode == "random":
        return name, draw(st.binary(max_size=512)), False
    if mode == "flip":
        pos = draw(st.integers(0, len(base) - 1))
        return (
            name,
            base[:pos] + bytes([base[pos] ^ draw(st.integers(1, 255))]) + base[pos + 1 :],
            False,
        )
    if mode == "truncate":
        return name, base[: draw(st.integers(0, len(base) - 1))], False
    if mode == "extend":
        return name, base + draw(st.binary(min_size=1, max_size=256)), False
    if mode == "header":  # version, kind, fingerprint or lengths rewritten, checksum kept
        fields = list(HEAD.unpack_from(base))
        i = draw(st.sampled_from([1, 2, 3, 4, 5]))
        if i == 3:
            fields[3] = draw(st.binary(min_size=16, max_size=16))
        else:
            fields[i] = draw(st.integers(0, 2**16 - 1 if i < 4 else 2**32 - 1))
        return name, HEAD.pack(*fields) + base[HEAD.size :], False
    _, _, meta, payload = serialize.read_header(base)
    if mode == "meta":  # valid checksum, doctored metadata
        m = json.loads(json.dumps(meta))
        key = draw(st.sampled_from(sorted(m)))
        m[key] = draw(
            st.none() | st.integers(-(2**70), 2**70) | st.floats() | ASCII | st.lists(st.integers())
        )
        return name, _reseal(base, json.dumps(m).encode(), bytes(payload)), False
    raw = bytearray(payload)  # valid checksum, doctored arrays
    if raw:
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    mb = json.dumps(meta, separators=(",", ":")).encode()
    return name, _reseal(base, mb, bytes(raw)), raw == payload


def _check(r) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert r.json()["detail"]


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_uploads_get_4xx_never_500(env, data):
    http, token, blobs = env
    name, blob, unchanged = data.draw(mutated(blobs))
    endpoint = data.draw(st.sampled_from(["/sessions", "/jobs"]))
    headers = {"authorization": f"Bearer {token}"} if endpoint == "/jobs" else {}
    r = http.post(endpoint, content=blob, headers=headers)
    _check(r)
    if r.is_success:
        # only a genuine object of the right kind is accepted (a payload mutation may leave the
        # residues valid: the ciphertext is then just different, which the server cannot know)
        assert name == ("eval" if endpoint == "/sessions" else "batch")
        if endpoint == "/sessions":
            t = r.json()["token"]
            assert http.delete("/sessions", headers={"authorization": f"Bearer {t}"}).is_success
        else:
            assert http.delete(f"/jobs/{r.json()['job_id']}", headers=headers).is_success
    else:
        assert not (unchanged and name == ("eval" if endpoint == "/sessions" else "batch"))
    assert http.get("/info").status_code == 200


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    job=st.text(max_size=70),
    auth=st.one_of(st.none(), ASCII),
    method=st.sampled_from(["GET", "DELETE", "POST", "PUT"]),
    suffix=st.sampled_from(["", "/result"]),
    use_real_token=st.booleans(),
)
def test_fuzzed_ids_tokens_and_methods_get_4xx(env, job, auth, method, suffix, use_real_token):
    http, token, _ = env
    headers = {}
    if use_real_token:
        headers["authorization"] = f"Bearer {token}"
    elif auth is not None:
        headers["authorization"] = auth
    r = http.request(method, f"/jobs/{quote(job, safe='')}{suffix}", headers=headers)
    _check(r)
    assert not r.is_success  # no such job exists for anybody
    fuzzed = {} if auth is None else {"authorization": auth}  # never the real token here
    r = http.request(method, "/sessions", headers=fuzzed, content=job.encode())
    _check(r)


def test_oversized_and_declared_oversized_bodies(env):
    http, token, blobs = env
    limits = http.get("/info").json()["limits"]
    h = {"authorization": f"Bearer {token}"}
    for path, cap, hdr in (
        ("/sessions", limits["eval_keys_bytes"], {}),
        ("/jobs", limits["batch_bytes"], h),
    ):
        r = http.post(path, content=blobs["eval"] + b"\0" * cap, headers=hdr)
        assert r.status_code == 413
        r = http.post(path, content=b"x", headers={**hdr, "content-length": "abc"})
        assert r.status_code in (400, 413)
