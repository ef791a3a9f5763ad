"""Where the batch-packed ``hemet_squeezenet`` spends its time and memory: the trained model
at an *insecure* small ring, run under cProfile, with the time per node, the check against the
plaintext model, and the resident set (VmRSS / RssAnon / RssFile from ``/proc`` every 50 ms,
each peak with the chunk it happened at, beside the executor's count of held ciphertexts).

    python benchmarks/hemet_profile.py [--ring 4096] [--budget-gib 1.63] [--chunk 32]
        [--no-lazy-rescale] [--seconds S] [--no-profile]

Per-image cost in batch packing hardly depends on N (work ∝ N, images ∝ N/2), so a 10-minute
run at N = 2^12 ranks the costs of the 80-minute 128-bit run (N = 2^15). ``--budget-gib``
scales the 128-bit memory budget by the ring (13 GiB × 2^12/2^15 ≈ 1.63 GiB gives the same
8-feature chunks); ``--chunk`` forces a chunk size instead. cProfile sees the main thread only:
the time it waits for the pool's other thread shows as ``acquire``. ``--seconds`` stops the
run after S seconds and reports the profile so far (``--ring 32768``: the 128-bit ring's own
profile of the first layers, without the hour-long run). ``--no-profile``: no cProfile, for
timings to compare. Not a 128-bit figure otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from hecnn.benchmarks.models import (
    CALIBRATION_IMAGES,
    _encrypt_to_file,
    _plain_logits,
    load_images,
    load_model,
)
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import KeyGenerator
from hecnn.compile import compile_model
from hecnn.runtime import decrypt_outputs
from hecnn.runtime.executor import RunReport, run
from hecnn.runtime.memory import release_free_heap


class _StopError(Exception):
    """Raised from the progress callback when ``--seconds`` have passed."""


class _RssSampler:
    """Peaks of the resident-set fields of /proc/self/status (GiB), each with where the run
    was (Linux; nothing elsewhere)."""

    FIELDS = ("VmRSS", "RssAnon", "RssFile")

    def __init__(self, where: list[str]) -> None:
        self.where, self.peaks = where, {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    @classmethod
    def now(cls) -> dict[str, float]:
        try:
            with open("/proc/self/status") as f:
                rows = [line.partition(":") for line in f]
        except OSError:
            return {}
        return {k: int(v.split()[0]) / 2**20 for k, _, v in rows if k in cls.FIELDS}

    def _loop(self) -> None:
        while not self.done.is_set():
            for key, value in self.now().items():
                if value > self.peaks.get(key, (0.0, ""))[0]:
                    self.peaks[key] = (value, self.where[0])
            time.sleep(0.05)

    def __enter__(self) -> _RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ring", type=int, default=4096)
    ap.add_argument("--budget-gib", type=float, default=1.63)
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument("--no-lazy-rescale", action="store_true")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    batch = args.ring // 2
    model, dataset, _ = load_model("hemet_squeezenet")
    calib, _ = load_images(dataset, CALIBRATION_IMAGES)
    plan = compile_model(
        model,
        tuple(calib.shape[1:]),
        batch=batch,
        calib=calib,
        insecure_ring_for_tests=args.ring,
        lazy_rescale=not args.no_lazy_rescale,
    )
    print(f"N={plan.params.n}, {plan.params.max_level} levels, depth {plan.levels}, batch {batch}")
    for d in plan.decisions:
        print("decision:", d)
    ctx = CkksContext(plan.params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    pk, evk = kg.public_key(sk), kg.evaluation_keys(sk)
    images, _ = load_images(dataset, batch)
    report = RunReport()
    with tempfile.TemporaryDirectory(prefix="hecnn-profile-") as tmp:
        ct = _encrypt_to_file(plan, ctx, pk, images, Path(tmp) / "inputs.npy")
        release_free_heap()  # as ``hecnn bench models`` does: encryption's freed heap
        print(
            "before the run:", ", ".join(f"{k} {v:.2f} GiB" for k, v in _RssSampler.now().items())
        )
        profile = cProfile.Profile()
        t0 = time.perf_counter()
        where = [""]

        def progress(node: str, i: int, total: int) -> None:
            where[0] = node
            if args.seconds is not None and time.perf_counter() - t0 > args.seconds:
                raise _StopError

        out = None
        if not args.no_profile:
            profile.enable()
        with _RssSampler(where) as rss, contextlib.suppress(_StopError):
            out = run(
                plan,
                ct,
                evk,
                report=report,
                memory_budget=int(args.budget_gib * 2**30),
                chunk=args.chunk,
                progress=progress,
            )
        profile.disable()
        server = time.perf_counter() - t0
    if not args.no_profile:
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(20)
        print(text.getvalue())
    for key, (value, at) in rss.peaks.items():
        print(f"peak {key} {value:.2f} GiB at {at}")
    for t in report.timings:
        print(f"node {t.name:18s} {t.seconds:8.1f} s  {t.ciphertexts:7d} cts")
    if out is None:
        print(f"stopped after {server:.0f} s at {where[0]}")
        return
    logits = decrypt_outputs(ctx, sk, out, batch)
    ref = _plain_logits(model, images)
    seg = ", ".join(f"{s.nodes[0]}…{s.nodes[-1]} by {s.chunk}" for s in report.schedule.segments)
    agree = 100 * float(np.mean(logits.argmax(1) == ref.argmax(1)))
    how = "" if args.no_profile else ", under cProfile"
    print(
        f"server {server:.1f} s ({1000 * server / batch:.1f} ms/image{how}); "
        f"streamed {seg}; held {report.peak_held / 2**30:.2f} GiB (estimate "
        f"{report.schedule.peak / 2**30:.2f}), peak RSS {report.peak_rss / 2**30:.2f} GiB "
        f"({report.rss_at_start / 2**30:.2f} at the start); agreement {agree:.2f} %, max logit "
        f"error {np.abs(logits - ref).max():.2e}"
    )


if __name__ == "__main__":
    main()
