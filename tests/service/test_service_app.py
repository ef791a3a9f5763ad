"""The FastAPI app in process (``fastapi.testclient``): endpoints, limits, tokens, and proof that
the server never receives or builds a secret key."""

import json
import time

import numpy as np
import pytest
from _svchelpers import check_against_plaintext, plaintext, tiny_images
from fastapi.testclient import TestClient

from hecnn.ckks import serialize
from hecnn.ckks.keys import SecretKey
from hecnn.ckks.params import CkksParameters
from hecnn.compile.serialize import dumps_plan
from hecnn.errors import SecurityError
from hecnn.runtime import encrypt_images
from hecnn.runtime.files import generate_keys
from hecnn.service import ServiceClient, classify, create_app


@pytest.fixture()
def app_client(tiny, tmp_path):
    _, plan = tiny
    app = create_app(plan, tmp_path / "state", max_queue=4, allow_insecure_test_only=True)
    with TestClient(app) as http:
        yield http, tmp_path / "state"


@pytest.fixture(scope="module")
def client_keys(tiny):
    return generate_keys(tiny[1].params)


def _bearer(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


def _session(http, keys) -> str:
    r = http.post("/sessions", content=serialize.dumps(keys.evaluation))
    assert r.status_code == 201, r.text
    return r.json()["token"]


def _wait(http, token, jid, timeout=120):
    deadline = time.monotonic() + timeout  # a hang guard, not a speed assertion
    while time.monotonic() < deadline:
        st = http.get(f"/jobs/{jid}", headers=_bearer(token)).json()
        if st["status"] in ("done", "failed"):
            return st
        time.sleep(0.05)
    raise AssertionError(f"job {jid} still {st}")


def test_info_and_params(app_client, tiny):
    http, _ = app_client
    _, plan = tiny
    info = http.get("/info").json()
    assert info["input_shape"] == [1, 6, 6] and info["classes"] == 4
    assert info["max_batch"] == plan.params.slots
    assert info["params"]["security"] == "INSECURE-TEST-ONLY"
    assert info["params"]["fingerprint"] == plan.params.fingerprint
    assert serialize.loads(http.get("/params").content) == plan.params
    assert "weights" not in json.dumps(info)  # the model itself is never published


def test_full_flow_matches_plaintext_model(app_client, tiny, client_keys):
    http, _ = app_client
    model, _ = tiny
    keys = client_keys
    x = tiny_images(32, 1)
    res = classify(
        ServiceClient("http://testserver", http=http), x, keys=keys, allow_insecure_test_only=True
    )
    check_against_plaintext(res.logits, plaintext(model, x), tol=0.05)
    assert np.allclose(res.probabilities.sum(1), 1.0)
    # the session was closed: its token no longer works
    assert http.get("/info").json()["jobs"] == {"queued": 0, "running": 0, "done": 0, "failed": 0}


def test_client_refuses_insecure_server_unless_told(app_client):
    http, _ = app_client
    with pytest.raises(SecurityError, match="128-bit"):
        classify(ServiceClient("http://testserver", http=http), tiny_images(2, 0))


def test_tokens_and_isolation(app_client, client_keys, tiny):
    http, _ = app_client
    _, plan = tiny
    keys = client_keys
    t1, t2 = _session(http, keys), _session(http, keys)
    ct = serialize.dumps(encrypt_images(plan, keys.ctx, keys.public, tiny_images(4, 2)))
    assert http.post("/jobs", content=ct).status_code == 401
    assert http.post("/jobs", content=ct, headers=_bearer("garbage")).status_code == 401
    forged = t1.split(".")[0] + ".forged"
    assert http.post("/jobs", content=ct, headers=_bearer(forged)).status_code == 401
    r = http.post("/jobs", content=ct, headers=_bearer(t1))
    assert r.status_code == 202, r.text
    jid = r.json()["job_id"]
    assert len(jid) >= 22
    # another session cannot see, fetch or delete it; the answer does not reveal it exists
    for call in (
        lambda h: http.get(f"/jobs/{jid}", headers=h),
        lambda h: http.get(f"/jobs/{jid}/result", headers=h),
        lambda h: http.delete(f"/jobs/{jid}", headers=h),
    ):
        r = call(_bearer(t2))
        assert r.status_code == 404 and r.json()["detail"] == "no such job for this session"
    assert _wait(http, t1, jid)["status"] == "done"
    assert http.get(f"/jobs/{jid}/result", headers=_bearer(t1)).status_code == 200
    assert http.delete(f"/jobs/{jid}", headers=_bearer(t1)).status_code == 204
    assert http.get(f"/jobs/{jid}", headers=_bearer(t1)).status_code == 404
    assert http.get("/jobs/../../etc", headers=_bearer(t1)).status_code == 404


def test_rejections_are_clear_4xx(app_client, client_keys, tiny):
    http, _ = app_client
    _, plan = tiny
    keys = client_keys
    token = _session(http, keys)
    h = _bearer(token)
    limits = http.get("/info").json()["limits"]
    # oversized bodies: 413, before anything is parsed
    big = b"\0" * (limits["eval_keys_bytes"] + 1)
    r = http.post("/sessions", content=big)
    assert r.status_code == 413 and "exceeds the cap" in r.json()["detail"]
    assert (
        http.post("/jobs", content=b"\0" * (limits["batch_bytes"] + 1), headers=h).status_code
        == 413
    )
    assert http.post("/jobs", content=b"", headers=h).status_code == 400
    # the wrong object, the wrong number of ciphertexts, foreign or insecure parameters
    r = http.post("/jobs", content=serialize.dumps(keys.public), headers=h)
    assert r.status_code == 400 and "expected ciphertext_batch" in r.json()["detail"]
    few = encrypt_images(plan, keys.ctx, keys.public, tiny_images(2, 3))[:5]
    r = http.post("/jobs", content=serialize.dumps(few), headers=h)
    assert r.status_code == 400 and "36 input ciphertexts" in r.json()["detail"]
    other = generate_keys(CkksParameters.create(depth=1, n=1 << 10, allow_insecure_test_only=True))
    r = http.post("/sessions", content=serialize.dumps(other.evaluation))
    assert r.status_code == 400 and "128-bit" in r.json()["detail"]
    secure = CkksParameters.create(depth=1, n=1 << 12)
    blob = serialize.dumps(secure)  # right kind of thing? no: parameters, not keys
    assert http.post("/sessions", content=blob).status_code == 400
    r = http.post("/sessions", content=dumps_plan(plan))
    assert r.status_code == 400 and "expected evaluation_keys" in r.json()["detail"]
    no_relin = serialize.dumps(type(keys.evaluation)(keys.params, None, {}))
    r = http.post("/sessions", content=no_relin)
    assert r.status_code == 400 and "relinearization" in r.json()["detail"]
    r = http.get("/jobs/AAAAAAAAAAAAAAAAAAAAAA/result", headers=h)
    assert r.status_code == 404


def test_queue_bound_gives_429(tiny, client_keys, tmp_path):
    _, plan = tiny
    keys = client_keys
    app = create_app(plan, tmp_path / "s", max_queue=2, allow_insecure_test_only=True)
    ct = serialize.dumps(encrypt_images(plan, keys.ctx, keys.public, tiny_images(2, 4)))
    manager = app.state.manager
    with TestClient(app) as http:
        manager.pause()  # nothing leaves the queue
        h = _bearer(_session(http, keys))
        codes = [http.post("/jobs", content=ct, headers=h).status_code for _ in range(2)]
        assert codes == [202, 202]
        r = http.post("/jobs", content=ct, headers=h)
        assert r.status_code == 429 and "queue is full" in r.json()["detail"]
        assert r.headers["retry-after"]
        manager.pause(False)


def test_insecure_plan_needs_the_explicit_flag(tiny, tmp_path):
    with pytest.raises(SecurityError, match="128-bit"):
        create_app(tiny[1], tmp_path / "s")


def test_server_never_receives_or_builds_a_secret_key(tiny, client_keys, tmp_path, monkeypatch):
    """A secret key posted to every endpoint is refused before being parsed; during a full
    session (keys, job, result) no SecretKey object is ever constructed in the server; and no
    file the server wrote holds secret-key material."""
    _, plan = tiny
    keys = client_keys
    built = []
    real_init = SecretKey.__init__

    def spy(self, *a, **kw):
        built.append(1)
        real_init(self, *a, **kw)

    monkeypatch.setattr(SecretKey, "__init__", spy)
    state = tmp_path / "state"
    app = create_app(plan, state, allow_insecure_test_only=True)
    secret_blob = serialize.dumps(keys.secret)
    with TestClient(app) as http:
        r = http.post("/sessions", content=secret_blob)
        assert r.status_code == 400 and "secret key" in r.json()["detail"]
        token = _session(http, keys)
        r = http.post("/jobs", content=secret_blob, headers=_bearer(token))
        assert r.status_code == 400 and "secret key" in r.json()["detail"]
        ct = encrypt_images(plan, keys.ctx, keys.public, tiny_images(4, 5))
        jid = http.post("/jobs", content=serialize.dumps(ct), headers=_bearer(token)).json()
        assert _wait(http, token, jid["job_id"])["status"] == "done"
        assert http.get(f"/jobs/{jid['job_id']}/result", headers=_bearer(token)).status_code == 200
    assert built == []
    coeffs = keys.secret.coeffs.astype(np.int8).tobytes()
    files = [p for p in state.rglob("*") if p.is_file()]
    assert any(p.name == "result.hecnn" for p in files)
    for p in files:
        data = p.read_bytes()
        assert coeffs not in data
        if data[:4] == b"HECN":
            assert serialize.read_header(data)[0] != serialize.Kind.SECRET_KEY


def test_jobs_run_on_the_torch_backend_too(tiny, client_keys, tmp_path):
    """``hecnn serve --backend torch`` (here on the CPU device): same flow, same answers."""
    pytest.importorskip("torch")
    model, plan = tiny
    app = create_app(plan, tmp_path / "t", allow_insecure_test_only=True, backend="torch")
    x = tiny_images(16, 2)
    with TestClient(app) as http:
        res = classify(
            ServiceClient("http://testserver", http=http),
            x,
            keys=client_keys,
            allow_insecure_test_only=True,
        )
    check_against_plaintext(res.logits, plaintext(model, x), tol=0.05)
