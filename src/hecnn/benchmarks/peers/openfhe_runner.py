"""A feed-forward network with degree-≤2 activations, batch-packed, written directly against
OpenFHE's Python API — the way a competent user would, with no hecnn code.

Runs in its own interpreter (the ``openfhe`` wheel on PyPI holds a CPython 3.10 binary), so this
file imports only the standard library, numpy and openfhe. Usage::

    python openfhe_runner.py NET.npz OUT.npz RESULT.json

``NET.npz`` holds ``images`` (B × features, float), ``kinds`` (``"affine"``/``"poly"`` per layer),
``W<i>``/``b<i>`` (dense out × in matrix and bias) for affine layers and ``C<i>`` ((degree + 1) ×
features, ascending powers) for polynomial layers, and the parameters ``ring_dim``,
``scale_bits``, ``first_mod_bits`` and ``security`` (``"128"`` or ``"insecure_test_only"``, the latter for
small test rings only). ``OUT.npz`` gets the decrypted ``logits`` (B × classes); ``RESULT.json``
the parameters, the stage times and the peak resident memory.

Packing: one ciphertext per feature, slot j = image j. An affine layer is, per output,
``EvalLinearWSum`` over the inputs with a non-zero weight (convolutions stay sparse) plus the
bias; a polynomial a·x² + b·x + c is written a·(x + b/2a)² + (c − b²/4a), so the activation is
one ``EvalSquare`` of a shifted input and a and the constant fold into the next layer's weights —
one level per activation, the smallest depth that fits. Scaling is FIXEDMANUAL (explicit
rescales, as OpenFHE's docs recommend for hand-tuned circuits); ``EvalLinearWSum`` rescales its
result there, so a rescale is issued only when a product is left at scale degree 2.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import numpy as np


def _fold(kinds, mats):
    """Rewrite every poly layer as (x + shift)² and fold its leading coefficient and constant
    into the following affine layer. Returns [("affine", W, b) | ("square", shift) |
    ("identity",)]."""
    out = []
    i = 0
    pending = None  # (scale per feature, constant per feature) to fold into the next affine
    while i < len(kinds):
        if kinds[i] == "affine":
            W, b = mats[f"W{i}"].astype(np.float64), mats[f"b{i}"].astype(np.float64)
            if pending is not None:
                scale, const = pending
                b = b + W @ const
                W = W * scale[None, :]
                pending = None
            out.append(("affine", W, b))
        elif kinds[i] == "poly":
            C = mats[f"C{i}"].astype(np.float64)
            if C.shape[0] > 3:
                raise SystemExit(f"layer {i}: degree {C.shape[0] - 1} > 2 is not supported")
            C = np.vstack([C, np.zeros((3 - C.shape[0], C.shape[1]))])
            c0, c1, c2 = C
            if i + 1 >= len(kinds) or kinds[i + 1] != "affine":
                raise SystemExit(f"layer {i}: a polynomial must be followed by an affine layer")
            if np.all(c2 != 0):
                shift = c1 / (2 * c2)
                pending = (c2, c0 - c1 * c1 / (4 * c2))
                out.append(("square", shift))
            elif np.all(c2 == 0):
                pending = (c1, c0)
                out.append(("identity",))
            else:
                raise SystemExit(f"layer {i}: mixed zero and non-zero x² coefficients")
        else:
            raise SystemExit(f"layer {i}: unknown kind {kinds[i]!r}")
        i += 1
    return out


def _depth(layers) -> int:
    return sum(1 for layer in layers if layer[0] in ("affine", "square", "identity"))


def _context(ring_dim: int, depth: int, scale_bits: int, first_bits: int, security: str):
    import openfhe as fhe  # here, so the folding above can be checked without OpenFHE

    p = fhe.CCParamsCKKSRNS()
    p.SetMultiplicativeDepth(depth)
    p.SetScalingModSize(scale_bits)
    p.SetFirstModSize(first_bits)
    p.SetScalingTechnique(fhe.ScalingTechnique.FIXEDMANUAL)
    p.SetRingDim(ring_dim)
    p.SetBatchSize(ring_dim // 2)
    if security == "insecure_test_only":  # tiny rings in unit tests only
        p.SetSecurityLevel(fhe.SecurityLevel.HEStd_NotSet)
    elif security == "128":
        p.SetSecurityLevel(fhe.SecurityLevel.HEStd_128_classic)
    else:
        raise ValueError(f"security must be '128' or 'insecure_test_only', got {security!r}")
    cc = fhe.GenCryptoContext(p)
    cc.Enable(fhe.PKESchemeFeature.PKE)
    cc.Enable(fhe.PKESchemeFeature.KEYSWITCH)
    cc.Enable(fhe.PKESchemeFeature.LEVELEDSHE)
    cc.Enable(fhe.PKESchemeFeature.ADVANCEDSHE)  # EvalLinearWSum
    return cc


def _peak_rss() -> int:
    """Peak resident bytes of this process: ``VmHWM`` (per address space). Not ``ru_maxrss``:
    Linux carries the parent's high-water mark across fork + exec into it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu() -> float:
    """CPU seconds of this process, all threads (the shared machine's load does not count)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _version() -> str:
    from importlib.metadata import version

    return version("openfhe")


def evaluate_clear(layers, x: np.ndarray) -> np.ndarray:
    """The folded layers evaluated in the clear (B × features → B × outputs): the exact
    computation the ciphertexts undergo, without the encryption."""
    for layer in layers:
        if layer[0] == "affine":
            x = x @ layer[1].T + layer[2]
        elif layer[0] == "square":
            x = (x + layer[1]) ** 2
    return x


def _rescaled(cc, ct):
    return cc.Rescale(ct) if ct.GetNoiseScaleDeg() > 1 else ct


def _affine(cc, cts, W, b):
    out = []
    for r in range(W.shape[0]):
        nz = np.flatnonzero(W[r])
        if len(nz) == 0:
            raise SystemExit("an output with no inputs (all-zero weight row) is not supported")
        if len(nz) == 1:
            ct = cc.EvalMult(cts[nz[0]], float(W[r, nz[0]]))
        else:
            ct = cc.EvalLinearWSum([cts[j] for j in nz], [float(w) for w in W[r, nz]])
        ct = _rescaled(cc, ct)
        out.append(cc.EvalAdd(ct, float(b[r])))
    return out


def _square(cc, cts, shift):
    out = []
    for ct, s in zip(cts, shift, strict=True):
        x = cc.EvalAdd(ct, float(s)) if s != 0 else ct
        out.append(cc.Rescale(cc.EvalSquare(x)))
    return out


def main(net_path: str, out_path: str, result_path: str) -> None:
    t_all = time.perf_counter()
    net = np.load(net_path, allow_pickle=False)
    kinds = [str(k) for k in net["kinds"]]
    images = net["images"].astype(np.float64)
    batch = len(images)
    ring_dim = int(net["ring_dim"])
    scale_bits, first_bits = int(net["scale_bits"]), int(net["first_mod_bits"])
    security = str(net["security"])
    if batch > ring_dim // 2:
        raise SystemExit(f"batch {batch} exceeds the {ring_dim // 2} slots of N={ring_dim}")
    layers = _fold(kinds, net)
    depth = _depth(layers)
    stages = {}

    t0 = time.perf_counter()
    cc = _context(ring_dim, depth, scale_bits, first_bits, security)
    keys = cc.KeyGen()
    cc.EvalMultKeyGen(keys.secretKey)
    stages["keygen"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cts = [
        cc.Encrypt(keys.publicKey, cc.MakeCKKSPackedPlaintext(images[:, f].tolist()))
        for f in range(images.shape[1])
    ]
    stages["encrypt"] = time.perf_counter() - t0

    t0, cpu0 = time.perf_counter(), _cpu()
    per_layer = []
    for layer in layers:
        t1 = time.perf_counter()
        if layer[0] == "affine":
            cts = _affine(cc, cts, layer[1], layer[2])
        elif layer[0] == "square":
            cts = _square(cc, cts, layer[1])
        else:  # identity: spend the level the other features' squares take
            cts = [cc.Rescale(cc.EvalMult(ct, 1.0)) for ct in cts]
        per_layer.append([layer[0], len(cts), time.perf_counter() - t1])
    stages["inference"] = time.perf_counter() - t0
    inference_cpu = _cpu() - cpu0

    t0 = time.perf_counter()
    logits = np.empty((batch, len(cts)))
    for k, ct in enumerate(cts):
        pt = cc.Decrypt(ct, keys.secretKey)
        pt.SetLength(batch)
        logits[:, k] = np.asarray(pt.GetRealPackedValue())[:batch]
    stages["decrypt"] = time.perf_counter() - t0

    np.savez(out_path, logits=logits)
    result = {
        "system": "openfhe",
        "version": _version(),
        "ring_dim": int(cc.GetRingDimension()),
        "depth": depth,
        "towers": depth + 1,
        "scale_bits": scale_bits,
        "first_mod_bits": first_bits,
        "security": security,
        "batch": batch,
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
        "stages": stages,
        "inference_cpu_s": inference_cpu,
        "layers": per_layer,
        "total_s": time.perf_counter() - t_all,
        "peak_rss": _peak_rss(),
    }
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
