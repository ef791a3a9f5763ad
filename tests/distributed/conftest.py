"""A real Ray cluster on loopback for the scale-out tests: a head (no CPUs, it only schedules and
holds the driver's objects) and two worker nodes of one CPU each, every one a ``ray start
--block`` process as an operator would run it. Small object stores, no dashboard; the cluster
is torn down (its processes ended by pid) even when a test fails.

A small model at N=2^12 through the explicit insecure test switch keeps every task short.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import torch
from _rayhelpers import RING, Branchy, images

from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import KeyGenerator
from hecnn.compile import compile_model
from hecnn.runtime import encrypt_images

START_TIMEOUT = 120.0


@pytest.fixture(scope="session")
def job():
    """(model, plan, context, secret key, evaluation keys, [(images, ciphertexts)] × 4)."""
    torch.manual_seed(3)
    model = Branchy().eval()
    plan = compile_model(
        model, (1, 6, 6), batch=16, calib=images(64, 0), insecure_ring_for_tests=RING
    )
    ctx = CkksContext(plan.params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    pk = kg.public_key(sk)
    evk = kg.evaluation_keys(sk)
    batches = []
    for i in range(4):
        x = images(16, 10 + i)
        batches.append((x, encrypt_images(plan, ctx, pk, x)))
    return model, plan, ctx, sk, evk, batches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _stop(procs: list[subprocess.Popen]) -> None:
    """End the ``ray start --block`` processes (each ends the processes it started) and then,
    by pid, anything of theirs still alive."""
    family = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            family += psutil.Process(p.pid).children(recursive=True)
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
    _, alive = psutil.wait_procs(family, timeout=10)
    for q in alive:
        with contextlib.suppress(psutil.Error):
            q.kill()


@pytest.fixture(scope="session")
def cluster():
    """Address of a head and two one-CPU worker nodes on 127.0.0.1; the test process is
    connected to it as the driver. Yields (address, worker node processes). One per session:
    Ray reads its authentication token once per process."""
    # the cluster's own authentication token (Ray ≥ 2.5x enables token auth by default; the
    # one in ~/.ray is shared with every other Ray user of this machine)
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    import ray  # after the token is set: Ray reads it once per process

    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must fit
    common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []
    log_path = Path(temp) / "start.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed after teardown

    def start(*args: str) -> subprocess.Popen:
        p = subprocess.Popen(
            [_ray_cli(), "start", *args, *common], stdout=log, stderr=subprocess.STDOUT
        )
        procs.append(p)
        return p

    try:
        head = start(
            *(f"--port={port}", "--head", "--num-cpus=0", "--include-dashboard=false"),
            *("--object-store-memory=150000000", f"--temp-dir={temp}"),
        )
        _wait_port(port, head)
        ray.init(address=address, log_to_driver=False)
        # worker nodes one at a time (two joining at once on busy cores can miss Ray's
        # registration deadline); a node that fails to join is started again
        for cpus in (1, 2):
            for _attempt in range(3):
                node = start(
                    f"--address={address}", "--num-cpus=1", "--object-store-memory=80000000"
                )
                if _joined(ray, cpus, node):
                    break
            else:
                raise RuntimeError(f"a worker node did not join; see {log_path}")
        yield address, procs[1:]
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        _stop(procs)
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _joined(ray, cpus: int, node: subprocess.Popen) -> bool:
    """Wait until the cluster has ``cpus`` CPUs (True) or ``node`` gave up (False)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if ray.cluster_resources().get("CPU", 0) >= cpus:
            return True
        if node.poll() is not None:
            return False
        time.sleep(0.3)
    return False


def _wait_port(port: int, head: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError("ray start --head exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.3)
    raise RuntimeError("the Ray head did not start")
