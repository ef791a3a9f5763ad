"""Fixtures for hecnn.nn tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Keep the tests light on a shared machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def isolated_data(tmp_path, monkeypatch) -> Path:
    """A data dir that is the only place searched (no shared data, no home cache)."""
    import hecnn.nn.data as data

    monkeypatch.setenv("HECNN_DATA", str(tmp_path))
    monkeypatch.setattr(data, "repo_root", lambda: tmp_path / "no" / "repo")
    monkeypatch.chdir(tmp_path)
    return tmp_path
