"""Service fixtures: a tiny model compiled for a tiny ring (N=2^10, below 128-bit security:
tests only, through the explicit test-only switches) and real ``hecnn serve`` processes on
loopback."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from _svchelpers import TINY_RING, tiny_images, tiny_model
from torch import nn

from hecnn.compile import compile_model, save_plan
from hecnn.nn.activations import Square


@pytest.fixture(scope="session")
def tiny():
    model = tiny_model()
    calib = tiny_images(64, 0)
    plan = compile_model(model, (1, 6, 6), batch=8, calib=calib, insecure_ring_for_tests=TINY_RING)
    return model, plan


@pytest.fixture(scope="session")
def tiny_plan_file(tiny, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "tiny.hecnn"
    save_plan(tiny[1], path)
    return path


@pytest.fixture(scope="session")
def medium(tmp_path_factory):
    """A model whose encrypted run takes a noticeable moment (800 hidden ciphertexts), so that
    jobs are still queued when a test kills the server. Returns (model, plan, plan file)."""
    torch.manual_seed(8)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), Square(), nn.Flatten(), nn.Linear(8 * 10 * 10, 4)
    ).eval()
    calib = np.random.default_rng(0).normal(size=(64, 1, 12, 12)).astype(np.float32)
    plan = compile_model(
        model, (1, 12, 12), batch=8, calib=calib, insecure_ring_for_tests=TINY_RING
    )
    path = tmp_path_factory.mktemp("plan") / "medium.hecnn"
    save_plan(plan, path)
    return model, plan, path


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    url: str
    state_dir: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def start_server(args: list[str], state_dir: Path, timeout: float = 120) -> ServerProcess:
    """``hecnn serve ARGS --port 0`` as a real process; returns once it prints its URL."""
    cmd = [sys.executable, "-c", "from hecnn.cli import main; main()", "serve", *args]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--state-dir", str(state_dir)]
    env = {**os.environ, "HECNN_THREADS": "2"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump(stream) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, args=(proc.stdout,), daemon=True).start()
    err_lines: list[str] = []
    threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True).start()
    seen = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            proc.kill()
            raise AssertionError(f"server did not start: {seen} {err_lines}") from None
        if line is None:
            proc.wait()
            raise AssertionError(f"server exited: {''.join(seen)} {''.join(err_lines)}")
        seen.append(line)
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if m:
            return ServerProcess(proc, m.group(1), state_dir)


@pytest.fixture()
def server_factory():
    """Start servers; every one still running at the end is killed."""
    started: list[ServerProcess] = []

    def make(args: list[str], state_dir: Path) -> ServerProcess:
        s = start_server(args, state_dir)
        started.append(s)
        return s

    yield make
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(30)
