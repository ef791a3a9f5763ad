"""Array backends: where residue arrays live and which code runs the ring arithmetic.

hecnn has one CKKS code path with two array backends, chosen per context
(``CkksContext(params, backend=..., device=...)``):

- ``"numpy"`` (default): int32 numpy arrays and the numba kernels of :mod:`hecnn.ckks.kernels`.
- ``"torch"``: int32 torch tensors on ``device`` (``"cpu"`` or ``"cuda[:i]"``), with every
  primitive — NTT/INTT, basis conversion, modular linear combination, key switching, rescale,
  automorphisms — written as exact torch operations (see :mod:`hecnn.ckks.torch_ring`). The CPU
  device runs the very same code as CUDA, which is how CI tests it without a GPU.

Design:

- The context holds the backend *name* and builds the backend object lazily (``ctx.backend``),
  so that importing :mod:`hecnn.ckks` — or using a numpy context — never imports torch.
- ``CiphertextBatch(ctx, data, scale)`` on a torch context builds a
  :class:`~hecnn.ckks.torch_batch.TorchCiphertextBatch` (the one dispatch point in ``batch.py``):
  the same API and maths, its methods written with torch. Numpy data handed to it moves to the
  device — that is how encryption and deserialization, which stay on the CPU, hand over.
- Key generation, encryption, decryption and noise sampling stay in numpy on the CPU (the
  SHAKE-256 CSPRNG is the single source of randomness), so the same seeds give bit-identical
  keys and ciphertexts whatever the backend; evaluation keys are copied to the device on first
  use (and cached per key object on the backend).
- Every modular operation is exact, so both backends produce bit-identical residues from the
  same inputs; the tests compare them bit for bit.
- :func:`to_backend` moves keys and ciphertext batches between contexts of the same parameters
  without re-encryption; serialization converts to numpy first, so the bytes are identical.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from hecnn.errors import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from hecnn.ckks.context import CkksContext

BACKENDS = ("numpy", "torch")


def check_backend(backend: str, device: str) -> tuple[str, str]:
    """Validate a (backend, device) choice; returns them normalized (lower case)."""
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise ParameterError(f"unknown array backend {backend!r}; choose one of {BACKENDS}")
    backend = backend.lower()
    device = str(device).lower()
    if backend == "numpy" and device != "cpu":
        raise ParameterError(
            f"the numpy backend runs on the CPU only (device {device!r} asked): "
            "use backend='torch' for a GPU"
        )
    if device != "cpu" and not (device == "cuda" or device.startswith("cuda:")):
        raise ParameterError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:<index>'")
    return backend, device


def make_backend(ctx: CkksContext, backend: str, device: str) -> Any:
    """The backend object of ``ctx``: None for numpy, a TorchRing (imports torch) otherwise."""
    if backend == "numpy":
        return None
    from hecnn.ckks.torch_ring import TorchRing

    return TorchRing(ctx, device)


def is_torch_tensor(x: object) -> bool:
    """True for a torch.Tensor, without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array of ``x`` (a numpy array is returned as is; a tensor is copied to the host)."""
    if isinstance(x, np.ndarray):
        return x
    if is_torch_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_backend(obj: Any, ctx: CkksContext) -> Any:
    """The same key or ciphertext batch with its arrays on ``ctx``'s backend and device.

    Accepts :class:`CiphertextBatch`, :class:`EvaluationKeys`, :class:`SwitchingKey` and
    :class:`PublicKey` made for ``ctx``'s parameters; residues are copied, never re-encrypted.
    Secret keys are not moved: they stay with the client, in numpy.
    """
    from hecnn.ckks.batch import CiphertextBatch
    from hecnn.ckks.keys import EvaluationKeys, PublicKey, SwitchingKey

    params = getattr(obj, "params", None)
    if params is None or getattr(params, "fingerprint", None) != ctx.params.fingerprint:
        raise ParameterError(f"{type(obj).__name__} does not belong to this context's parameters")

    def move(a: Any) -> Any:
        if ctx.backend_name == "numpy":
            return np.ascontiguousarray(to_numpy(a))
        return ctx.backend.to_device(a)

    if isinstance(obj, CiphertextBatch):
        return CiphertextBatch(ctx, move(obj.data), obj.scale)
    if isinstance(obj, SwitchingKey):
        return SwitchingKey(obj.params, move(obj.data))
    if isinstance(obj, PublicKey):
        return PublicKey(obj.params, move(obj.data))
    if isinstance(obj, EvaluationKeys):
        relin = None if obj.relin is None else to_backend(obj.relin, ctx)
        galois = {g: to_backend(k, ctx) for g, k in obj.galois.items()}
        return EvaluationKeys(obj.params, relin, galois)
    raise ParameterError(f"cannot move a {type(obj).__name__} between backends")
