"""OpenFHE's time for a few batch-packed operations with 1 and 2 OpenMP threads.

Run in the OpenFHE environment (``~/.cache/hecnn/peers/openfhe/bin/python``), once per thread
count: ``OMP_NUM_THREADS=1 …/python benchmarks/openfhe_threads.py`` and again with 2. On a
machine whose cores are already busy, OpenMP's barriers wait for descheduled threads; this shows
how much that costs before choosing ``hecnn bench peers --openfhe-threads``. Parameters: those of
the benchmark (N = 2^14, depth 5, scale 2^50, FIXEDMANUAL, 128-bit).
"""

import os
import resource
import time

import openfhe as fhe


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    p = fhe.CCParamsCKKSRNS()
    p.SetMultiplicativeDepth(5)
    p.SetScalingModSize(50)
    p.SetFirstModSize(60)
    p.SetScalingTechnique(fhe.ScalingTechnique.FIXEDMANUAL)
    p.SetRingDim(1 << 14)
    p.SetBatchSize(8192)
    p.SetSecurityLevel(fhe.SecurityLevel.HEStd_128_classic)
    cc = fhe.GenCryptoContext(p)
    for feature in ("PKE", "KEYSWITCH", "LEVELEDSHE", "ADVANCEDSHE"):
        cc.Enable(getattr(fhe.PKESchemeFeature, feature))
    keys = cc.KeyGen()
    cc.EvalMultKeyGen(keys.secretKey)
    cts = [cc.Encrypt(keys.publicKey, cc.MakeCKKSPackedPlaintext([0.1] * 8192)) for _ in range(50)]
    t0, c0 = time.perf_counter(), _cpu()
    for _ in range(10):
        cc.Rescale(cc.EvalLinearWSum(cts, [0.01] * 50))
    t1, c1 = time.perf_counter(), _cpu()
    for ct in cts[:20]:
        cc.Rescale(cc.EvalSquare(ct))
    t2, c2 = time.perf_counter(), _cpu()
    print(
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}: 500 MACs (10 EvalLinearWSum "
        f"of 50) {t1 - t0:.2f} s wall, {c1 - c0:.2f} s CPU; 20 EvalSquare+Rescale "
        f"{t2 - t1:.2f} s wall, {c2 - c1:.2f} s CPU"
    )


if __name__ == "__main__":
    main()
