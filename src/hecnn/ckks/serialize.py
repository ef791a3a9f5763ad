"""Versioned, self-describing binary format for parameters, keys and ciphertext batches.

Layout (little endian)::

    magic    4 bytes  b"HECN"
    version  u16      FORMAT_VERSION
    kind     u16      Kind
    fprint   16 bytes parameter-set fingerprint (ASCII hex)
    meta_len u32      length of the JSON metadata
    body_len u64      length of the array payload
    digest   32 bytes SHA-256 of metadata ‖ payload
    metadata JSON: parameters or scale/level, and each array's name, dtype, shape, offset
    payload  raw arrays (residues < 2^31 stored as uint32)

Loading validates everything (magic, version, kind, lengths, digest, JSON, array shapes against
the parameters, every residue below its prime) before building any object, and caps sizes, so
truncated, corrupted, oversized or foreign input raises :class:`SerializationError` /
:class:`ParameterError` and never allocates more than the bytes it was given.

The secret key has its own kind. :func:`loads` refuses it unless ``allow_secret=True``, which
only client-side code passes; no server-bound object (public key, evaluation keys, batch) can
hold one.

Compiled plans (:attr:`Kind.PLAN`) share the envelope (:func:`pack`, :func:`read_header`,
:func:`arrays`) but are built by :mod:`hecnn.compile.serialize`: this layer knows nothing of
plans.
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
from typing import Any

import numpy as np

from hecnn.ckks.backend import to_numpy
from hecnn.ckks.batch import MAX_COMPONENTS, CiphertextBatch
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import EvaluationKeys, PublicKey, SecretKey, SwitchingKey
from hecnn.ckks.params import CkksParameters
from hecnn.errors import HecnnError, ParameterError, SerializationError

MAGIC = b"HECN"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sHH16sIQ32s")
MAX_META = 1 << 20
MAX_BODY = 1 << 36  # 64 GiB: far above any real object, below anything absurd
#: parameter descriptions beyond these are refused before any table is built from them
MAX_RING_DEGREE = 1 << 17
MAX_PRIMES = 64
#: residue arrays (parameters, keys, ciphertexts) are stored as these dtypes only
RESIDUE_DTYPES = frozenset({"<u4", "|i1"})


class Kind(enum.IntEnum):
    PARAMS = 1
    PUBLIC_KEY = 2
    EVALUATION_KEYS = 3
    CIPHERTEXT_BATCH = 4
    SECRET_KEY = 5
    PLAN = 6


def _params_meta(p: CkksParameters) -> dict[str, Any]:
    return {
        "n": p.n,
        "moduli": list(p.moduli),
        "special_moduli": list(p.special_moduli),
        "scale": p.scale,
        "base_primes": p.base_primes,
        "insecure_test_only": p.insecure_test_only,
    }


def params_from_meta(meta: dict[str, Any]) -> CkksParameters:
    """Parameters from their JSON description; sizes are capped before any prime is tested."""
    if not isinstance(meta, dict):
        raise SerializationError("malformed parameter description: not an object")
    try:
        n = int(meta["n"])
        if not isinstance(meta["moduli"], list) or not isinstance(meta["special_moduli"], list):
            raise TypeError("moduli must be lists")
        if not 0 < n <= MAX_RING_DEGREE:
            raise SerializationError(f"ring degree {n} outside (0, {MAX_RING_DEGREE}]")
        if len(meta["moduli"]) + len(meta["special_moduli"]) > MAX_PRIMES:
            raise SerializationError(f"more than {MAX_PRIMES} primes in the parameter set")
        return CkksParameters(
            n=n,
            moduli=tuple(int(q) for q in meta["moduli"]),
            special_moduli=tuple(int(q) for q in meta["special_moduli"]),
            scale=float(meta["scale"]),
            base_primes=int(meta.get("base_primes", 1)),
            insecure_test_only=bool(meta.get("insecure_test_only", False)),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, HecnnError):
            raise
        raise SerializationError(f"malformed parameter description: {exc}") from None


def pack(kind: Kind, params: CkksParameters, meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """The envelope around ``meta`` (JSON-able) and ``arrays`` (stored raw, little endian).

    The digest is computed over the arrays in place and the envelope is assembled with one
    copy of each array: a ciphertext batch is hundreds of megabytes, and every extra copy
    costs a pass over it and as much fresh memory.
    """
    parts = []
    table = []
    offset = 0
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        table.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": offset})
        parts.append(memoryview(a).cast("B"))
        offset += a.nbytes
    meta = {**meta, "params": _params_meta(params), "arrays": table}
    mbytes = json.dumps(meta, separators=(",", ":")).encode()
    digest = hashlib.sha256(mbytes)
    for part in parts:
        digest.update(part)
    head = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        int(kind),
        params.fingerprint.encode(),
        len(mbytes),
        offset,
        digest.digest(),
    )
    return b"".join([head, mbytes, *parts])


def _residues(arr: np.ndarray) -> np.ndarray:
    return to_numpy(arr).astype(np.uint32)  # host bytes whatever the backend


def dumps(obj: CkksParameters | PublicKey | EvaluationKeys | CiphertextBatch | SecretKey) -> bytes:
    """Serialize a parameter set, a key or a ciphertext batch."""
    if isinstance(obj, CkksParameters):
        return pack(Kind.PARAMS, obj, {}, {})
    if isinstance(obj, PublicKey):
        return pack(Kind.PUBLIC_KEY, obj.params, {}, {"data": _residues(obj.data)})
    if isinstance(obj, EvaluationKeys):
        arrays = {}
        if obj.relin is not None:
            arrays["relin"] = _residues(obj.relin.data)
        for g, key in sorted(obj.galois.items()):
            arrays[f"galois_{g}"] = _residues(key.data)
        return pack(Kind.EVALUATION_KEYS, obj.params, {}, arrays)
    if isinstance(obj, CiphertextBatch):
        return pack(
            Kind.CIPHERTEXT_BATCH, obj.params, {"scale": obj.scale}, {"data": _residues(obj.data)}
        )
    if isinstance(obj, SecretKey):
        return pack(Kind.SECRET_KEY, obj.params, {}, {"coeffs": obj.coeffs.astype(np.int8)})
    raise SerializationError(f"cannot serialize objects of type {type(obj).__name__}")


def read_header(data: bytes) -> tuple[Kind, str, dict, memoryview]:
    """Validate the envelope; return (kind, fingerprint, metadata, payload view)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SerializationError(f"expected bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    if len(view) < _HEADER.size:
        raise SerializationError(f"truncated input: {len(view)} bytes, header needs {_HEADER.size}")
    magic, version, kind, fprint, mlen, blen, digest = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise SerializationError("not a hecnn object (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise SerializationError(f"unsupported format version {version} (this is {FORMAT_VERSION})")
    try:
        kind = Kind(kind)
    except ValueError:
        raise SerializationError(f"unknown object kind {kind}") from None
    if mlen > MAX_META or blen > MAX_BODY:
        raise SerializationError("declared sizes exceed the format's limits")
    if len(view) != _HEADER.size + mlen + blen:
        raise SerializationError(
            f"length mismatch: header declares {_HEADER.size + mlen + blen} bytes, got {len(view)}"
        )
    rest = view[_HEADER.size :]
    if hashlib.sha256(rest).digest() != digest:
        raise SerializationError("checksum mismatch: the data is corrupted")
    try:
        meta = json.loads(bytes(rest[:mlen]).decode())
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, absurd nesting or numbers
        raise SerializationError(f"malformed metadata: {str(exc)[:200]}") from None
    if not isinstance(meta, dict):
        raise SerializationError("malformed metadata: not an object")
    try:
        fp = fprint.decode("ascii")
    except UnicodeDecodeError:
        raise SerializationError("malformed fingerprint") from None
    return kind, fp, meta, rest[mlen:]


def arrays(
    meta: dict, payload: memoryview, dtypes: frozenset[str] = RESIDUE_DTYPES
) -> dict[str, np.ndarray]:
    """Read-only views of the payload's arrays, each checked to lie inside it (no copy)."""
    out = {}
    table = meta.get("arrays")
    if not isinstance(table, list):
        raise SerializationError("malformed metadata: missing array table")
    for entry in table:
        try:
            name, dtype = str(entry["name"]), np.dtype(entry["dtype"])
            shape = tuple(int(s) for s in entry["shape"])
            off = int(entry["offset"])
        except (KeyError, TypeError, ValueError, SyntaxError, OverflowError) as exc:
            raise SerializationError(f"malformed array entry: {str(exc)[:200]}") from None
        if name in out:
            raise SerializationError(f"array {name!r} appears twice")
        if dtype.str not in dtypes or any(s < 0 for s in shape) or off < 0 or len(shape) > 8:
            raise SerializationError(f"array {name!r}: unsupported dtype or shape")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if off + nbytes > len(payload):
            raise SerializationError(f"array {name!r} extends past the payload")
        out[name] = np.frombuffer(payload[off : off + nbytes], dtype=dtype).reshape(shape)
    return out


def _check_residues(
    params: CkksParameters, arr: np.ndarray, limb_primes: list[int], what: str
) -> None:
    """Shape against the parameters, then every residue below its prime (no copy, no context)."""
    if arr.shape[-1] != params.n or arr.shape[-2] != len(limb_primes):
        raise SerializationError(f"{what}: shape {arr.shape} does not match the parameters")
    q = np.array(limb_primes, dtype=np.int64)
    if arr.size and np.any(arr.max(axis=-1).astype(np.int64) >= q):
        raise SerializationError(f"{what}: residue out of range for its prime")


def _qp_primes(params: CkksParameters) -> list[int]:
    return list(params.moduli) + list(params.special_moduli)


def loads(
    data: bytes,
    ctx: CkksContext | None = None,
    *,
    expect: Kind | None = None,
    allow_secret: bool = False,
):
    """Deserialize; objects other than parameters are bound to ``ctx`` (built when ``None``).

    Order of checks: envelope and digest; the expected kind; secret keys refused unless
    ``allow_secret``; the fingerprint against ``ctx`` (before the embedded parameters are even
    parsed); the parameters; every array's shape and residues. Only then is a context built (when
    none was given) and the data copied into the object.
    """
    kind, fp, meta, payload = read_header(data)
    if expect is not None and kind != expect:
        raise SerializationError(f"expected a {expect.name.lower()}, got a {kind.name.lower()}")
    if kind == Kind.SECRET_KEY and not allow_secret:
        raise SerializationError("refusing to load a secret key here (client-side only)")
    if kind == Kind.PLAN:
        raise SerializationError("a compiled plan: load it with hecnn.compile.serialize")
    if ctx is not None and ctx.params.fingerprint != fp:
        raise ParameterError(
            f"object was made for parameters {fp}, not for this context ({ctx.params.fingerprint})"
        )
    params = params_from_meta(meta.get("params", {}))
    if params.fingerprint != fp:
        raise SerializationError("parameter fingerprint does not match the embedded parameters")
    if kind == Kind.PARAMS:
        return params
    arrs = arrays(meta, payload)
    qp = _qp_primes(params)
    if kind == Kind.PUBLIC_KEY:
        d = _need(arrs, "data", 3)
        _check_residues(params, d, qp, "public key")
        if d.shape[0] != 2:
            raise SerializationError("public key must have 2 components")
        ctx = ctx or CkksContext(params)
        return PublicKey(ctx.params, _int32(d))
    if kind == Kind.EVALUATION_KEYS:
        for name, arr in arrs.items():
            _check_switching_key(params, arr, name)
        ctx = ctx or CkksContext(params)
        relin = None
        galois = {}
        for name, arr in arrs.items():
            key = SwitchingKey(ctx.params, _int32(arr))
            if name == "relin":
                relin = key
            else:
                galois[_galois_element(name)] = key
        return EvaluationKeys(ctx.params, relin, galois)
    if kind == Kind.CIPHERTEXT_BATCH:
        raw = _need(arrs, "data", 4)
        if not 1 <= raw.shape[2] <= len(params.moduli):
            raise SerializationError(f"ciphertext batch has {raw.shape[2]} limbs")
        if not 2 <= raw.shape[1] <= MAX_COMPONENTS:
            raise SerializationError(
                f"a ciphertext has 2 to {MAX_COMPONENTS} components, got {raw.shape[1]}"
            )
        _check_residues(params, raw, list(params.moduli[: raw.shape[2]]), "ciphertext batch")
        scale = meta.get("scale")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool):
            raise SerializationError("ciphertext batch without a valid scale")
        ctx = ctx or CkksContext(params)
        return CiphertextBatch(ctx, _int32(raw), float(scale))
    if kind == Kind.SECRET_KEY:
        c = _need(arrs, "coeffs", 1)
        if c.dtype != np.int8 or c.shape != (params.n,) or np.any(np.abs(c.astype(np.int64)) > 1):
            raise SerializationError("secret key must be N ternary coefficients")
        return SecretKey((ctx.params if ctx else params), c.astype(np.int64))
    raise SerializationError(f"unsupported kind {kind}")  # pragma: no cover


def _galois_element(name: str) -> int | None:
    digits = name.removeprefix("galois_")
    if digits == name or not (digits.isascii() and digits.isdigit()) or len(digits) > 12:
        return None
    return int(digits)


def _int32(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr, dtype=np.int32)


def _need(arrs: dict[str, np.ndarray], name: str, ndim: int) -> np.ndarray:
    if name not in arrs or arrs[name].ndim != ndim:
        raise SerializationError(f"missing or malformed array {name!r}")
    if arrs[name].dtype != np.uint32 and name != "coeffs":
        raise SerializationError(f"array {name!r} must hold uint32 residues")
    return arrs[name]


def _check_switching_key(params: CkksParameters, arr: np.ndarray, name: str) -> None:
    from hecnn.ckks.keys import digits

    if name != "relin":
        g = _galois_element(name)
        if g is None:
            raise SerializationError(f"unknown evaluation key {name[:40]!r}")
        if not 1 <= g < 2 * params.n or g % 2 == 0:
            raise SerializationError(f"Galois element {g} is not an odd number in [1, 2N)")
    if arr.dtype != np.uint32:
        raise SerializationError(f"evaluation key {name!r} must hold uint32 residues")
    k = len(params.special_moduli)
    level = arr.shape[2] - k - 1 if arr.ndim == 4 else -1  # a key may serve levels ≤ ℓ < L
    if not 0 <= level <= params.max_level:
        raise SerializationError(f"evaluation key {name!r} has shape {arr.shape}")
    dnum = len(digits(params, level))
    if arr.shape[0] != dnum or arr.shape[1] != 2:
        raise SerializationError(f"evaluation key {name!r} has shape {arr.shape}")
    primes = list(params.moduli[: level + 1]) + list(params.special_moduli)
    _check_residues(params, arr, primes, name)
