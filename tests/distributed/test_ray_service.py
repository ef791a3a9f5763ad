"""The service and the command line with their jobs on the Ray cluster of conftest."""

from __future__ import annotations

import numpy as np
import pytest
from _rayhelpers import images, plaintext
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from hecnn.distributed import RayExecutor
from hecnn.runtime.files import generate_keys
from hecnn.service import ServiceClient, classify, create_app


def test_the_service_runs_its_jobs_on_the_cluster(cluster, job, tmp_path):
    address, _ = cluster
    model, plan, *_ = job
    ex = RayExecutor(plan, address)
    app = create_app(plan, tmp_path / "state", allow_insecure_test_only=True, runner=ex.run_plan)
    keys = generate_keys(plan.params)
    x = images(16, 99)
    with TestClient(app) as http:
        res = classify(
            ServiceClient("http://testserver", http=http),
            x,
            keys=keys,
            allow_insecure_test_only=True,
        )
    ref = plaintext(model, x)
    assert np.abs(res.logits - ref).max() < 5e-2
    assert np.array_equal(res.labels, ref.argmax(1))
    assert ex.last is not None and len(ex.last.tasks) == 1  # the job ran as a cluster task


@pytest.mark.slow
def test_infer_with_ray_writes_the_same_ciphertexts(cluster, tmp_path):
    """``hecnn infer --ray ADDRESS`` on the real 128-bit plan equals ``hecnn infer``."""
    from hecnn.cli.main import _register, app
    from hecnn.nn import bundled

    _register()
    address, _ = cluster
    run = CliRunner().invoke
    keys = tmp_path / "keys"
    assert run(app, ["keygen", "--out", str(keys), "--batch", "16"]).exit_code == 0
    x, y = bundled.sample_images()
    np.savez(tmp_path / "imgs.npz", x=x[:16], y=y[:16])
    enc = ["encrypt", "--keys", str(keys), "--images", str(tmp_path / "imgs.npz")]
    assert run(app, [*enc, "--out", str(tmp_path / "ct")]).exit_code == 0
    common = ["infer", "--keys", str(keys), "--in", str(tmp_path / "ct")]
    r = run(app, [*common, "--out", str(tmp_path / "local"), "--ray", address])
    assert r.exit_code == 0, r.output
    assert "Ray cluster" in r.output
    assert run(app, [*common, "--out", str(tmp_path / "plain")]).exit_code == 0
    assert (tmp_path / "local").read_bytes() == (tmp_path / "plain").read_bytes()


def test_serve_refuses_an_unknown_executor_before_loading_anything(tmp_path):
    from hecnn.cli.main import _register, app
    from hecnn.errors import HecnnError

    _register()
    r = CliRunner().invoke(app, ["serve", "--executor", "cluster", "--state-dir", str(tmp_path)])
    assert isinstance(r.exception, HecnnError)
    assert "--executor is local or ray" in str(r.exception)


def test_hecnn_serve_with_the_ray_executor_answers_a_client(cluster, job, tmp_path):
    """``hecnn serve PLAN --executor ray --ray-address ADDRESS`` as a real process (a second
    driver of the cluster): a client's job runs there and decrypts to the plaintext logits."""
    import os
    import queue
    import re
    import subprocess
    import sys
    import threading

    from hecnn.compile import save_plan

    address, _ = cluster
    model, plan, *_ = job
    save_plan(plan, tmp_path / "plan.hecnn")
    cmd = [sys.executable, "-c", "from hecnn.cli import main; main()", "serve"]
    cmd += [str(tmp_path / "plan.hecnn"), "--executor", "ray", "--ray-address", address]
    cmd += ["--allow-insecure-test-only", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--state-dir", str(tmp_path / "state")]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ)
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True
    ).start()
    try:
        seen, url = [], None
        while url is None:
            line = lines.get(timeout=180)  # a hang guard, not a speed assertion
            assert line is not None, "".join(seen)
            seen.append(line)
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            url = m.group(1) if m else None
        assert any("Ray cluster" in x for x in seen)
        x = images(8, 123)
        with ServiceClient(url) as client:
            res = classify(
                client, x, keys=generate_keys(plan.params), allow_insecure_test_only=True
            )
        ref = plaintext(model, x)
        assert np.abs(res.logits - ref).max() < 5e-2
        assert np.array_equal(res.labels, ref.argmax(1))
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
