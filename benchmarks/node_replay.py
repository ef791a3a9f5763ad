"""Node-by-node encrypted replay of the composite end-to-end plan, decrypting every node.

The tool that found the N = 2^16 failure of ``composite_e2e.py`` (relinearization after the
rescale): each node of the compiled plan is run on ciphertexts (the executor's own node
functions, unstreamed, polynomials 8 features at a time), every output is decrypted (all
slots) and compared with the plan's plaintext simulation of the same node. For each
Chebyshev node it also prints the largest |x|/r entering it, decrypted and in plaintext: a
value above 1 is a slot outside the polynomial's interval.

    python benchmarks/node_replay.py --insecure-ring 32768        # N = 2^15, ~10 min
    python benchmarks/node_replay.py                              # N = 2^16, 128-bit, ~25 min

One line per node: level, components, scale, max error (and where), its 99.99th percentile and
median, the largest |reference|.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import hecnn
from composite_e2e import WEIGHTS, ShallowReluNet, load_mnist12
from hecnn.ckks.context import CkksContext
from hecnn.ckks.encryption import decrypt
from hecnn.ckks.keys import KeyGenerator
from hecnn.compile import compile_model
from hecnn.compile.ir import AddNode, AffineNode, InputNode, PolyNode
from hecnn.runtime import encrypt_images
from hecnn.runtime import executor as ex
from hecnn.runtime.simulate import simulate_nodes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alpha", type=int, default=10)
    ap.add_argument("--insecure-ring", type=int, default=None, help="tests only: below 128-bit")
    ap.add_argument("--batch", type=int, default=None, help="default: every slot")
    ap.add_argument("--encrypt-with", choices=["secret", "public"], default="public")
    args = ap.parse_args()
    ex.POLY_CHUNK = 8  # unstreamed: bound the Chebyshev temporaries
    xtr, _, xte, _ = load_mnist12()
    model = ShallowReluNet()
    model.load_state_dict(torch.load(WEIGHTS))
    model.eval()
    calib = xtr[:1024]
    approx = hecnn.approximate(model, alpha=args.alpha, calib=calib, margin=1.5).eval()
    ring = args.insecure_ring
    probe = compile_model(approx, (1, 12, 12), batch=1, calib=calib, insecure_ring_for_tests=ring)
    batch = args.batch or probe.params.slots
    plan = compile_model(
        approx, (1, 12, 12), batch=batch, calib=calib, insecure_ring_for_tests=ring
    )
    print(plan.params.describe(), flush=True)
    images = xte.repeat(-(-batch // len(xte)), 1, 1, 1)[:batch].numpy()
    ref = simulate_nodes(plan, images)
    ctx = CkksContext(plan.params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    evk = kg.evaluation_keys(sk)
    key = sk if args.encrypt_with == "secret" else kg.public_key(sk)
    remaining = {n.name: sum(n.name in m.inputs for m in plan.nodes) for n in plan.nodes}
    vals, dec = {}, {}
    for n in plan.nodes:
        t = time.perf_counter()
        if isinstance(n, InputNode):
            out = encrypt_images(plan, ctx, key, images)
        elif isinstance(n, AffineNode):
            out = ex._affine_pieces(n, vals[n.inputs[0]], evk)
        elif isinstance(n, PolyNode):
            out = ex._poly(n, vals[n.inputs[0]], evk)
        elif isinstance(n, AddNode):
            out = ex._add(vals[n.inputs[0]], vals[n.inputs[1]])
        else:
            out = ex._mul(n, vals[n.inputs[0]], vals[n.inputs[1]], evk)
        if n.relin_after and out.components > 2:
            out = out.relinearize(evk)
        vals[n.name] = out
        low = min(out.level, 3)  # decrypting at a few limbs is cheap and exact for small values
        dec[n.name] = np.concatenate(
            [
                decrypt(ctx, out[s : s + 8].drop_to(low), sk, slots=batch)
                for s in range(0, len(out), 8)
            ]
        )
        err = np.abs(dec[n.name] - ref[n.name])
        f, s = np.unravel_index(np.argmax(err), err.shape)
        extra = ""
        if isinstance(n, PolyNode) and n.chebyshev:
            u = np.abs(dec[n.inputs[0]]).max() / n.radius
            u_ref = np.abs(ref[n.inputs[0]]).max() / n.radius
            extra = f"  max|x|/r {u:.4f} (plaintext {u_ref:.4f})"
        print(
            f"{n.name:12s} level {out.level:2d} c{out.components} scale 2^{np.log2(out.scale):.2f}"
            f"  err {err.max():.3e} at ({f},{s})  p99.99 {np.quantile(err, 0.9999):.2e}"
            f"  median {np.median(err):.2e}  max|ref| {np.abs(ref[n.name]).max():.3f}{extra}"
            f"  {time.perf_counter() - t:.1f}s",
            flush=True,
        )
        for i in n.inputs:
            remaining[i] -= 1
            if remaining[i] == 0:
                vals.pop(i, None)
                dec.pop(i, None)


if __name__ == "__main__":
    main()
