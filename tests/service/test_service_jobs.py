"""Job records survive restarts: the recovery policy, case by case, and a graceful stop."""

import json
import time

import pytest
from _svchelpers import check_against_plaintext, plaintext, tiny_images
from fastapi.testclient import TestClient

from hecnn.ckks import serialize
from hecnn.ckks.context import CkksContext
from hecnn.runtime import decrypt_outputs, encrypt_images
from hecnn.runtime.files import generate_keys
from hecnn.service import create_app
from hecnn.service.app import plan_id
from hecnn.service.jobs import JobManager, node_costs
from hecnn.service.store import JobRecord, JobStore, SessionStore


@pytest.fixture(scope="module")
def keys(tiny):
    return generate_keys(tiny[1].params)


def _wait_all(manager, session, jids, timeout=120):
    deadline = time.monotonic() + timeout  # hang guard only
    while time.monotonic() < deadline:
        recs = [manager.get(j, session) for j in jids]
        if all(r.status in ("done", "failed") for r in recs):
            return recs
        time.sleep(0.05)
    raise AssertionError([r.status for r in recs])


def test_recovery_policy(tiny, keys, tmp_path):
    model, plan = tiny
    ctx = CkksContext(plan.params)
    sessions = SessionStore(tmp_path, ctx, 8)
    sid, _ = sessions.create(serialize.dumps(keys.evaluation), keys.evaluation)
    jobs = JobStore(tmp_path)
    pid = plan_id(plan)
    x = tiny_images(4, 9)
    blob = serialize.dumps(encrypt_images(plan, keys.ctx, keys.public, x))

    def record(status, attempts=0, with_input=True, plan_of=pid, result=False):
        jid, d = jobs.new_dir()
        if with_input:
            (d / "input.hecnn").write_bytes(blob)
        if result:
            (d / "result.hecnn").write_bytes(b"x")
        jobs.save(JobRecord(jid, sid, plan_of, status=status, attempts=attempts))
        return jid

    queued = record("queued")
    running_once = record("running", attempts=1)
    running_twice = record("running", attempts=2)
    no_input = record("queued", with_input=False)
    other_model = record("queued", plan_of="0" * 32)
    lost_result = record("done")
    kept_result = record("done", result=True)
    orphan, _ = jobs.new_dir()  # an upload that never got an id back

    manager = JobManager(plan, ctx, pid, jobs, sessions, workers=1)
    manager.start()
    try:
        recs = dict(
            zip(
                ["q", "r1", "r2", "ni", "om", "lr", "kr"],
                _wait_all(
                    manager,
                    sid,
                    [
                        queued,
                        running_once,
                        running_twice,
                        no_input,
                        other_model,
                        lost_result,
                        kept_result,
                    ],
                ),
                strict=True,
            )
        )
    finally:
        manager.stop()
    assert recs["q"].status == recs["r1"].status == "done"
    assert recs["r1"].attempts == 2
    assert recs["r2"].status == "failed" and "not retried again" in recs["r2"].error
    assert recs["ni"].status == "failed" and "input ciphertexts are gone" in recs["ni"].error
    assert recs["om"].status == "failed" and "different model" in recs["om"].error
    assert recs["lr"].status == "failed" and "result lost" in recs["lr"].error
    assert recs["kr"].status == "done"
    assert not (jobs.root / orphan).exists()
    # the re-run results are right, and every record on disk agrees with memory
    for jid in (queued, running_once):
        out = serialize.loads((jobs.dir(jid) / "result.hecnn").read_bytes(), keys.ctx)
        got = decrypt_outputs(keys.ctx, keys.secret, out, len(x))
        check_against_plaintext(got, plaintext(model, x), tol=0.05)
        disk = json.loads((jobs.dir(jid) / "status.json").read_text())
        assert disk["status"] == "done" and not (jobs.dir(jid) / "input.hecnn").exists()


def test_graceful_stop_keeps_queued_jobs_for_the_next_start(tiny, keys, tmp_path):
    model, plan = tiny
    x = tiny_images(3, 11)
    ct = serialize.dumps(encrypt_images(plan, keys.ctx, keys.public, x))
    state = tmp_path / "state"
    app = create_app(plan, state, allow_insecure_test_only=True)
    with TestClient(app) as http:
        app.state.manager.pause()
        token = http.post("/sessions", content=serialize.dumps(keys.evaluation)).json()["token"]
        h = {"authorization": f"Bearer {token}"}
        jids = [http.post("/jobs", content=ct, headers=h).json()["job_id"] for _ in range(3)]
        assert {http.get(f"/jobs/{j}", headers=h).json()["status"] for j in jids} == {"queued"}
        assert [http.get(f"/jobs/{j}", headers=h).json()["position"] for j in jids] == [1, 2, 3]
    # a new server on the same state: the token still works, the jobs run
    app2 = create_app(plan, state, allow_insecure_test_only=True)
    with TestClient(app2) as http:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sts = [http.get(f"/jobs/{j}", headers=h).json() for j in jids]
            if all(s["status"] == "done" for s in sts):
                break
            time.sleep(0.05)
        assert [s["status"] for s in sts] == ["done"] * 3
        assert sts[0]["progress"]["percent"] == 100.0
        for j in jids:
            out = serialize.loads(http.get(f"/jobs/{j}/result", headers=h).content, keys.ctx)
            got = decrypt_outputs(keys.ctx, keys.secret, out, len(x))
            check_against_plaintext(got, plaintext(model, x), tol=0.05)


def test_node_costs_are_positive_for_work(tiny):
    costs = node_costs(tiny[1])
    assert costs[0] == 0 and all(c > 0 for c in costs[1:])
