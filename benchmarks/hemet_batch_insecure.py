"""Batch-packed ``hemet_squeezenet`` at an *insecure* small ring (``python
benchmarks/hemet_batch_insecure.py [RING]``, default 4096): the trained model's full plan
shape, streamed as one segment, on RING/2 CIFAR-10 test images, checked against the plaintext
model. Cost per image in batch packing hardly depends on N (work ∝ N, images ∝ N), so this
previews the 128-bit run (N = 2^15, ~95 min on 2 cores) in ~12 minutes. Not a 128-bit figure.
"""

import sys
import time

from hecnn.benchmarks.models import bench_row

if __name__ == "__main__":
    ring = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    t = time.time()
    row = bench_row(
        "hemet_squeezenet",
        batch=ring // 2,
        insecure_ring_for_tests=ring,
        seal_reps=1,
        time_limit=3000,
        memory_budget=3 * 2**30,
    )
    print(row)
    print("wall", time.time() - t)
