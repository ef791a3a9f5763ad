"""Client side of batch packing: images → feature ciphertexts, output ciphertexts → logits.

Ciphertext f holds feature f (a pixel, in row-major (C, H, W) order) of every image of the batch,
one image per slot.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.context import CkksContext
from hecnn.ckks.encryption import decrypt, encrypt
from hecnn.ckks.keys import PublicKey, SecretKey
from hecnn.ckks.params import CkksParameters
from hecnn.errors import ShapeError


class InputSpec(Protocol):
    """What packing needs to know of a plan: a :class:`~hecnn.compile.ir.Plan`, or the
    description a server publishes (the client never sees the model's weights)."""

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def params(self) -> CkksParameters: ...


def pack(plan: InputSpec, images: np.ndarray) -> np.ndarray:
    """(B, *input_shape) float images → (features, B) slot matrix."""
    x = np.asarray(images, dtype=np.float64)
    if tuple(x.shape[1:]) != plan.input_shape:
        raise ShapeError(
            f"images have shape {tuple(x.shape[1:])}, the plan expects {plan.input_shape}"
        )
    if not 1 <= len(x) <= plan.params.slots:
        raise ShapeError(f"a batch holds 1..{plan.params.slots} images, got {len(x)}")
    return np.ascontiguousarray(x.reshape(len(x), -1).T)


def encrypt_images(
    plan: InputSpec, ctx: CkksContext, key: PublicKey | SecretKey, images: np.ndarray
) -> CiphertextBatch:
    return encrypt(ctx, pack(plan, images), key)


def decrypt_outputs(
    ctx: CkksContext, sk: SecretKey, outputs: CiphertextBatch, count: int
) -> np.ndarray:
    """Encrypted outputs (classes ciphertexts) → (count, classes) logits."""
    return decrypt(ctx, outputs, sk, slots=count).T
