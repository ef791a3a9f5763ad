"""Compile the numba kernels before anything is timed.

numba compiles a kernel on its first call (and caches it on disk): on a fresh install the first
encrypted run pays seconds of compilation inside whatever stage calls the kernel first. Running
the executor's operations once on a couple of ciphertexts at the real parameters (same dtypes,
same array layouts, so the same compiled signatures) moves that cost into a stage of its own.
"""

from __future__ import annotations

import numpy as np

from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.context import CkksContext
from hecnn.ckks.encryption import decrypt, encrypt
from hecnn.ckks.keys import EvaluationKeys, PublicKey, SecretKey
from hecnn.ckks.linear import BlockSparseWeights, WeightBlock


def compile_kernels(
    ctx: CkksContext, pk: PublicKey, sk: SecretKey, keys: EvaluationKeys | None = None
) -> None:
    """Exercise encryption, affine layers (2 and 3 components), constants, squares, uneven
    sums, products up to 5 components, rescales, relinearization and decryption once.

    Only the CPU kernels: another array backend (torch) compiles nothing ahead."""
    if ctx.backend is not None or ctx.params.max_level < 2:
        return
    x = encrypt(ctx, np.full((2, 4), 0.5), pk)
    blk = WeightBlock(np.arange(2), np.arange(2), np.array([[0.5, 0.25], [0.25, 0.5]]))
    w = BlockSparseWeights(2, 2, (blk,))
    y = x.linear_combination(w, bias=np.array([0.1, 0.2])).rescale()  # 2 components
    sq = y.square()
    y.square_plus_scaled(np.array([0.5, -0.25]))  # a folded quadratic's one pass
    if x.level - 2 >= ctx.params.min_level:  # an affine layer owing a deferred rescale
        x.mul_scalar(0.5).rescale_twice()
    z = (sq + y.mul_scalar(1.0, scale=y.scale)).add_const(0.5)  # uneven sum, 3 components
    z3 = z.linear_combination(w, bias=np.array([0.1, 0.2])).rescale()  # affine on 3
    decrypt(ctx, z3, sk)
    # the rescale-free tail's products of 3-component ciphertexts (5 components); the scale is
    # only metadata here — nothing of it is decrypted
    small = CiphertextBatch(ctx, z3.data, 2.0**8)
    tail = small.mul(small)
    _ = tail + tail.mul_scalar(1.0, scale=1.0) + small.square()
    if keys is not None and keys.relin is not None:
        r = z.relinearize(keys).rescale()
        decrypt(ctx, CiphertextBatch.stack([r, r]), sk)
