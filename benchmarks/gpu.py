"""Script form of ``hecnn bench gpu``: run from the repository root with no install step,

    PYTHONPATH=src python3 benchmarks/gpu.py --device cuda --out gpu.md

It needs numpy, numba, torch, rich (and typer only for the ``hecnn`` command). Where the
``threadpoolctl`` package is missing, a no-op stand-in is used: it only limits the BLAS threads
of the numpy CPU baseline.
"""

import argparse
import contextlib
import importlib.util
import sys
import types
from pathlib import Path


def _threadpoolctl_stand_in() -> None:
    if importlib.util.find_spec("threadpoolctl") is not None:
        return
    mod = types.ModuleType("threadpoolctl")
    mod.threadpool_limits = lambda *a, **k: contextlib.nullcontext()
    sys.modules["threadpoolctl"] = mod
    print("note: threadpoolctl missing; the CPU baseline's BLAS threads are not limited")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:<i> or cpu")
    ap.add_argument("--quick", action="store_true", help="small insecure ring, one model")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown tables here")
    ap.add_argument("--models", default="", help="comma-separated models (default: all)")
    ap.add_argument("--cpu-threads", type=int, default=2, help="threads of the CPU baseline")
    ap.add_argument("--no-cpu-baseline", action="store_true", help="skip the CPU model runs")
    ap.add_argument("--time-limit", type=float, default=480, help="start no model after (s)")
    args = ap.parse_args()
    _threadpoolctl_stand_in()
    from hecnn.benchmarks.gpu import main

    failures = main(
        device=args.device,
        quick=args.quick,
        out=args.out,
        model_names=tuple(m for m in args.models.split(",") if m) or None,
        cpu_threads=args.cpu_threads,
        cpu_baseline=not args.no_cpu_baseline,
        time_limit_s=args.time_limit,
    )
    sys.exit(1 if failures else 0)
