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
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
from typing import Any

import numpy as np

from hecnn.ckks.backend import to_numpy
from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import EvaluationKeys, PublicKey, SecretKey, SwitchingKey
from hecnn.ckks.params import CkksParameters
from hecnn.errors import HecnnError, ParameterError, SerializationError

MAGIC = b"HECN"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sHH16sIQ32s")
MAX_META = 1 << 20
MAX_BODY = 1 << 36  # 64 GiB: far above any real object, below anything absurd


class Kind(enum.IntEnum):
    PARAMS = 1
    PUBLIC_KEY = 2
    EVALUATION_KEYS = 3
    CIPHERTEXT_BATCH = 4
    SECRET_KEY = 5


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
    try:
        return CkksParameters(
            n=int(meta["n"]),
            moduli=tuple(int(q) for q in meta["moduli"]),
            special_moduli=tuple(int(q) for q in meta["special_moduli"]),
            scale=float(meta["scale"]),
            base_primes=int(meta.get("base_primes", 1)),
            insecure_test_only=bool(meta.get("insecure_test_only", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, HecnnError):
            raise
        raise SerializationError(f"malformed parameter description: {exc}") from None


def _pack(kind: Kind, params: CkksParameters, meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    body = bytearray()
    table = []
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        table.append(
            {"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": len(body)}
        )
        body += a.tobytes()
    meta = {**meta, "params": _params_meta(params), "arrays": table}
    mbytes = json.dumps(meta, separators=(",", ":")).encode()
    digest = hashlib.sha256(mbytes + bytes(body)).digest()
    head = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        int(kind),
        params.fingerprint.encode(),
        len(mbytes),
        len(body),
        digest,
    )
    return head + mbytes + bytes(body)


def _residues(arr: np.ndarray) -> np.ndarray:
    return to_numpy(arr).astype(np.uint32)  # host bytes whatever the backend


def dumps(obj: CkksParameters | PublicKey | EvaluationKeys | CiphertextBatch | SecretKey) -> bytes:
    """Serialize a parameter set, a key or a ciphertext batch."""
    if isinstance(obj, CkksParameters):
        return _pack(Kind.PARAMS, obj, {}, {})
    if isinstance(obj, PublicKey):
        return _pack(Kind.PUBLIC_KEY, obj.params, {}, {"data": _residues(obj.data)})
    if isinstance(obj, EvaluationKeys):
        arrays = {}
        if obj.relin is not None:
            arrays["relin"] = _residues(obj.relin.data)
        for g, key in sorted(obj.galois.items()):
            arrays[f"galois_{g}"] = _residues(key.data)
        return _pack(Kind.EVALUATION_KEYS, obj.params, {}, arrays)
    if isinstance(obj, CiphertextBatch):
        return _pack(
            Kind.CIPHERTEXT_BATCH, obj.params, {"scale": obj.scale}, {"data": _residues(obj.data)}
        )
    if isinstance(obj, SecretKey):
        return _pack(Kind.SECRET_KEY, obj.params, {}, {"coeffs": obj.coeffs.astype(np.int8)})
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
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SerializationError(f"malformed metadata: {exc}") from None
    if not isinstance(meta, dict):
        raise SerializationError("malformed metadata: not an object")
    try:
        fp = fprint.decode("ascii")
    except UnicodeDecodeError:
        raise SerializationError("malformed fingerprint") from None
    return kind, fp, meta, rest[mlen:]


def _arrays(meta: dict, payload: memoryview) -> dict[str, np.ndarray]:
    out = {}
    table = meta.get("arrays")
    if not isinstance(table, list):
        raise SerializationError("malformed metadata: missing array table")
    for entry in table:
        try:
            name, dtype = str(entry["name"]), np.dtype(entry["dtype"])
            shape = tuple(int(s) for s in entry["shape"])
            off = int(entry["offset"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SerializationError(f"malformed array entry: {exc}") from None
        if dtype.str not in ("<u4", "|i1") or any(s < 0 for s in shape) or off < 0:
            raise SerializationError(f"array {name!r}: unsupported dtype or shape")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if off + nbytes > len(payload):
            raise SerializationError(f"array {name!r} extends past the payload")
        out[name] = np.frombuffer(payload[off : off + nbytes], dtype=dtype).reshape(shape)
    return out


def _check_residues(
    ctx: CkksContext, arr: np.ndarray, limb_primes: np.ndarray, what: str
) -> np.ndarray:
    if arr.shape[-1] != ctx.n or arr.shape[-2] != len(limb_primes):
        raise SerializationError(f"{what}: shape {arr.shape} does not match the parameters")
    q = ctx.primes[limb_primes].astype(np.int64)
    if arr.size and np.any(arr.max(axis=-1).astype(np.int64) >= q):
        raise SerializationError(f"{what}: residue out of range for its prime")
    return np.ascontiguousarray(arr, dtype=np.int32)


def loads(
    data: bytes,
    ctx: CkksContext | None = None,
    *,
    expect: Kind | None = None,
    allow_secret: bool = False,
):
    """Deserialize; objects other than parameters need the matching context ``ctx``."""
    kind, fp, meta, payload = read_header(data)
    if expect is not None and kind != expect:
        raise SerializationError(f"expected a {expect.name.lower()}, got a {kind.name.lower()}")
    if kind == Kind.SECRET_KEY and not allow_secret:
        raise SerializationError("refusing to load a secret key here (client-side only)")
    params = params_from_meta(meta.get("params", {}))
    if params.fingerprint != fp:
        raise SerializationError("parameter fingerprint does not match the embedded parameters")
    if kind == Kind.PARAMS:
        return params
    if ctx is None:
        ctx = CkksContext(params)
    if ctx.params.fingerprint != fp:
        raise ParameterError(
            f"object was made for parameters {fp}, not for this context ({ctx.params.fingerprint})"
        )
    arrays = _arrays(meta, payload)
    lvl = ctx.params.max_level
    if kind == Kind.PUBLIC_KEY:
        d = _check_residues(ctx, _need(arrays, "data", 3), ctx.qp_idx(lvl), "public key")
        if d.shape[0] != 2:
            raise SerializationError("public key must have 2 components")
        return PublicKey(ctx.params, d)
    if kind == Kind.EVALUATION_KEYS:
        relin = None
        galois = {}
        for name, arr in arrays.items():
            key = _switching_key(ctx, arr, name)
            if name == "relin":
                relin = key
            elif name.startswith("galois_") and name[7:].isdigit():
                galois[int(name[7:])] = key
            else:
                raise SerializationError(f"unknown evaluation key {name!r}")
        return EvaluationKeys(ctx.params, relin, galois)
    if kind == Kind.CIPHERTEXT_BATCH:
        raw = _need(arrays, "data", 4)
        if not 1 <= raw.shape[2] <= ctx.num_data:
            raise SerializationError(f"ciphertext batch has {raw.shape[2]} limbs")
        d = _check_residues(ctx, raw, ctx.data_idx(raw.shape[2] - 1), "ciphertext batch")
        try:
            scale = float(meta["scale"])
        except (KeyError, TypeError, ValueError):
            raise SerializationError("ciphertext batch without a valid scale") from None
        return CiphertextBatch(ctx, d, scale)
    if kind == Kind.SECRET_KEY:
        c = _need(arrays, "coeffs", 1)
        if c.shape != (ctx.n,) or np.any(np.abs(c.astype(np.int64)) > 1):
            raise SerializationError("secret key must be N ternary coefficients")
        return SecretKey(ctx.params, c.astype(np.int64))
    raise SerializationError(f"unsupported kind {kind}")  # pragma: no cover


def _need(arrays: dict[str, np.ndarray], name: str, ndim: int) -> np.ndarray:
    if name not in arrays or arrays[name].ndim != ndim:
        raise SerializationError(f"missing or malformed array {name!r}")
    return arrays[name]


def _switching_key(ctx: CkksContext, arr: np.ndarray, name: str) -> SwitchingKey:
    from hecnn.ckks.keys import digits

    lvl = ctx.params.max_level
    if arr.ndim != 4 or arr.shape[0] != len(digits(ctx.params, lvl)) or arr.shape[1] != 2:
        raise SerializationError(f"evaluation key {name!r} has shape {arr.shape}")
    return SwitchingKey(ctx.params, _check_residues(ctx, arr, ctx.qp_idx(lvl), name))
