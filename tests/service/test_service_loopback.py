"""Real ``hecnn serve`` processes on loopback, real HTTP, no mocks: end to end with the bundled
MNIST model, 20 concurrent jobs from several clients, a server killed mid-queue and restarted,
and hostile requests answered with 4xx."""

import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from _svchelpers import check_against_plaintext, plaintext, tiny_images

from hecnn.ckks import serialize
from hecnn.runtime import decrypt_outputs, encrypt_images, run
from hecnn.runtime.files import generate_keys, load_key_dir
from hecnn.service import ServiceClient, classify

MODEL = "ishiyama_mnist_poly_element_kd"


def _cli(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-c", "from hecnn.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _bundled_e2e(server_factory, tmp_path, ring: int | None, n: int) -> None:
    """``hecnn client classify --sample n`` against ``hecnn serve``; labels must equal a local
    encrypted run of the same plan on the same images with the same keys, and the plaintext
    model's; the server's state holds no secret key material."""
    import torch

    from hecnn.compile import compile_bundled
    from hecnn.nn import bundled

    args = [MODEL]
    extra = []
    if ring is not None:
        args += ["--insecure-ring-for-tests", str(ring), "--allow-insecure-test-only"]
        extra = ["--allow-insecure-test-only"]
    srv = server_factory(args, tmp_path / "state")
    keydir, out = tmp_path / "keys", tmp_path / "res.npz"
    proc = _cli(
        "client", "classify", "--server", srv.url, "--sample", str(n), "--keys", str(keydir),
        "--out", str(out), *extra,
    )  # fmt: skip
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"classified={n} accuracy=")
    res = np.load(out)
    # the same images, keys and plan, run locally
    x_all, y_all = bundled.sample_images()
    idx = (np.arange(n) * len(x_all)) // n
    x = np.asarray(bundled.to_float(x_all[idx]), dtype=np.float64)
    assert np.array_equal(res["true_labels"], y_all[idx])
    keys = load_key_dir(keydir)
    plan = compile_bundled(
        MODEL, batch=min(8192, (ring or 1 << 14) // 2), insecure_ring_for_tests=ring
    )
    assert plan.params.fingerprint == keys.params.fingerprint
    local = decrypt_outputs(
        keys.ctx,
        keys.secret,
        run(plan, encrypt_images(plan, keys.ctx, keys.public, x), keys.evaluation),
        n,
    )
    assert np.array_equal(res["labels"], local.argmax(1))
    with torch.no_grad():
        ref = bundled.load_model(MODEL)(torch.as_tensor(x, dtype=torch.float32)).double().numpy()
    check_against_plaintext(res["logits"], ref, tol=0.05)
    assert float(last.split("accuracy=")[1]) >= 85.0  # the model itself is trained
    coeffs = keys.secret.coeffs.astype(np.int8).tobytes()
    for p in srv.state_dir.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert coeffs not in data
            assert (
                data[:4] != b"HECN" or serialize.read_header(data)[0] != serialize.Kind.SECRET_KEY
            )
    # graceful shutdown on SIGTERM (uvicorn re-raises the signal once it has shut down)
    assert srv.stop() in (0, -signal.SIGTERM)


def test_bundled_model_end_to_end_over_http(server_factory, tmp_path):
    """Small ring (test-only) so that it runs in the default suite."""
    _bundled_e2e(server_factory, tmp_path, ring=1 << 11, n=16)


@pytest.mark.slow
def test_bundled_model_end_to_end_over_http_at_128_bit(server_factory, tmp_path):
    _bundled_e2e(server_factory, tmp_path, ring=None, n=64)


def test_twenty_concurrent_jobs_from_several_clients(
    server_factory, tiny, tiny_plan_file, tmp_path
):
    """4 clients (own keys, own images) × 5 jobs, all in flight at once against a queue of 8:
    every job completes, each client's results decrypt under its own key to its own images."""
    model, plan = tiny
    srv = server_factory(
        [str(tiny_plan_file), "--allow-insecure-test-only", "--max-queue", "8", "--workers", "2"],
        tmp_path / "state",
    )
    outcomes: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []
    go = threading.Barrier(4)

    def client_thread(c: int) -> None:
        try:
            keys = generate_keys(plan.params)
            with ServiceClient(srv.url) as cl:
                session = cl.open_session(keys.evaluation)
                cts = [
                    encrypt_images(plan, keys.ctx, keys.public, tiny_images(8, 100 * c + j))
                    for j in range(5)
                ]
                go.wait()
                jids = [cl.submit(session, ct) for ct in cts]  # retries on 429
                assert len(set(jids)) == 5
                for j, jid in enumerate(jids):
                    cl.wait(session, jid, poll=0.05, timeout=600)  # hang guard
                    out = cl.result(session, jid, keys.ctx)
                    outcomes[(c, j)] = decrypt_outputs(keys.ctx, keys.secret, out, 8)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client_thread, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    assert not errors, errors
    assert len(outcomes) == 20
    for (c, j), got in outcomes.items():
        check_against_plaintext(got, plaintext(model, tiny_images(8, 100 * c + j)), tol=0.05)
    with httpx.Client() as http:
        counts = http.get(f"{srv.url}/info").json()["jobs"]
    assert counts["done"] == 20 and counts["failed"] == 0


def test_restart_mid_queue_loses_no_job(server_factory, medium, tmp_path):
    """SIGKILL the server right after 8 jobs were accepted: after a restart every accepted job
    is reported and completes (re-queued from its input on disk) with the right results."""
    model, plan, plan_file = medium
    state = tmp_path / "state"
    args = [str(plan_file), "--allow-insecure-test-only", "--max-queue", "16"]
    srv = server_factory(args, state)
    keys = generate_keys(plan.params)
    rng = np.random.default_rng(5)
    images = [rng.normal(size=(8, 1, 12, 12)).astype(np.float32) for _ in range(8)]
    cts = [encrypt_images(plan, keys.ctx, keys.public, x) for x in images]
    with ServiceClient(srv.url) as cl:
        session = cl.open_session(keys.evaluation)
        jids = [cl.submit(session, ct) for ct in cts]
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(30)
    restarted_at = time.time()
    srv2 = server_factory(args, state)
    rerun = 0
    with ServiceClient(srv2.url) as cl:
        for j, jid in enumerate(jids):
            st = cl.wait(session, jid, poll=0.05, timeout=600)  # the old token still works
            assert st["status"] == "done"
            rerun += st["started"] >= restarted_at
            got = decrypt_outputs(keys.ctx, keys.secret, cl.result(session, jid, keys.ctx), 8)
            check_against_plaintext(got, plaintext(model, images[j]), tol=0.05)
    assert rerun >= 1, "every job finished before the kill: the restart path was not exercised"


def test_hostile_requests_get_4xx_over_real_http(server_factory, tiny, tiny_plan_file, tmp_path):
    _, plan = tiny
    srv = server_factory([str(tiny_plan_file), "--allow-insecure-test-only"], tmp_path / "s")
    keys = generate_keys(plan.params)
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        limits = http.get("/info").json()["limits"]
        evk = serialize.dumps(keys.evaluation)
        cases = [
            ("POST", "/sessions", serialize.dumps(keys.secret), 400),
            ("POST", "/sessions", evk[: len(evk) // 2], 400),
            ("POST", "/sessions", evk + b"\0", 400),
            ("POST", "/sessions", b"\0" * (limits["eval_keys_bytes"] + 1), 413),
            ("POST", "/sessions", b"", 400),
            ("POST", "/jobs", b"whatever", 401),
            ("GET", "/jobs/not-a-job", None, 401),
            ("GET", "/nope", None, 404),
            ("PUT", "/info", None, 405),
        ]
        for method, path, body, code in cases:
            r = http.request(method, path, content=body)
            assert r.status_code == code, (method, path, r.status_code, r.text)
            assert r.json()["detail"]
        token = http.post("/sessions", content=evk).json()["token"]
        h = {"authorization": f"Bearer {token}"}
        r = http.post("/jobs", content=serialize.dumps(keys.secret), headers=h)
        assert r.status_code == 400 and "secret key" in r.json()["detail"]

        # a streamed body with no Content-Length over the cap is cut off with 413
        def chunks():
            for _ in range(limits["batch_bytes"] // (1 << 16) + 2):
                yield b"\0" * (1 << 16)

        r = http.post("/jobs", content=chunks(), headers=h)
        assert r.status_code == 413
        assert http.get("/info").status_code == 200  # still serving


def test_python_api_over_real_http(server_factory, tiny, tiny_plan_file, tmp_path):
    model, _ = tiny
    srv = server_factory([str(tiny_plan_file), "--allow-insecure-test-only"], tmp_path / "s")
    x = tiny_images(20, 77)
    stages = []
    t0 = time.monotonic()
    res = classify(
        srv.url,
        x,
        keys_dir=tmp_path / "k",
        allow_insecure_test_only=True,
        on_progress=lambda stage, frac, detail: stages.append(stage),
        poll=0.05,
    )
    assert time.monotonic() >= t0
    check_against_plaintext(res.logits, plaintext(model, x), tol=0.05)
    assert {"keys", "encrypt", "upload", "decrypt"} <= set(stages)
    # the saved keys are reused the second time (same secret key file)
    secret = (tmp_path / "k" / "secret.hecnn").read_bytes()
    classify(srv.url, x[:2], keys_dir=tmp_path / "k", allow_insecure_test_only=True)
    assert (tmp_path / "k" / "secret.hecnn").read_bytes() == secret


def test_cli_classify_npz_with_labels_and_csv(server_factory, tiny, tiny_plan_file, tmp_path):
    model, _ = tiny
    srv = server_factory([str(tiny_plan_file), "--allow-insecure-test-only"], tmp_path / "s")
    x = tiny_images(12, 31)
    ref = plaintext(model, x)
    np.savez(tmp_path / "imgs.npz", x=x, y=ref.argmax(1))
    common = ["client", "classify", "--server", srv.url, "--allow-insecure-test-only"]
    proc = _cli(*common, str(tmp_path / "imgs.npz"), "--out", str(tmp_path / "r.csv"))
    assert proc.stdout.strip().splitlines()[-1].startswith("classified=12 accuracy=")
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert rows[0].startswith("index,label,p0") and len(rows) == 13
    labels = np.array([int(r.split(",")[1]) for r in rows[1:]])
    assert np.mean(labels == ref.argmax(1)) >= 0.9
    x_file = tmp_path / "imgs.npz"
    # a refused request ends with a clear error and exit code 2, not a traceback
    bad = subprocess.run(
        [sys.executable, "-c", "from hecnn.cli import main; main()", *common[:4], str(x_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "128-bit" in bad.stderr and "Traceback" not in bad.stderr
