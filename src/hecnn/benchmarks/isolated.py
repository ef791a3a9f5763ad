"""Run a function in a short-lived process of its own (spawned: no inherited threads or heap).

The benchmarks use it where a measurement must not share a process: SEAL's memory pool keeps
what it allocated until its process ends, and the server's peak memory should be the server's
alone, not the client's leftovers beside it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def in_own_process(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a spawned child; its result (or its exception) comes back pickled."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()
