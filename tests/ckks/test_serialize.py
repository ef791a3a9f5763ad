import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hecnn.ckks import serialize
from hecnn.ckks.context import CkksContext
from hecnn.ckks.encryption import decrypt, encrypt
from hecnn.ckks.keys import EvaluationKeys, PublicKey, SecretKey
from hecnn.ckks.params import CkksParameters
from hecnn.errors import HecnnError, ParameterError, SerializationError


def test_roundtrip_of_every_kind(ctx, keys, rng):
    sk, pk, evk = keys
    x = rng.uniform(-1, 1, (2, 16))
    c = encrypt(ctx, x, pk)
    p2 = serialize.loads(serialize.dumps(ctx.params))
    assert p2 == ctx.params and p2.fingerprint == ctx.params.fingerprint
    pk2 = serialize.loads(serialize.dumps(pk), ctx)
    assert isinstance(pk2, PublicKey) and np.array_equal(pk2.data, pk.data)
    evk2 = serialize.loads(serialize.dumps(evk), ctx)
    assert isinstance(evk2, EvaluationKeys) and set(evk2.galois) == set(evk.galois)
    assert np.array_equal(evk2.relin.data, evk.relin.data)
    c2 = serialize.loads(serialize.dumps(c), ctx)
    assert np.array_equal(c2.data, c.data) and c2.scale == c.scale
    # a batch serialized after operations keeps level and scale and still decrypts
    r = serialize.loads(serialize.dumps(c.square().relinearize(evk).rescale()), ctx)
    assert np.abs(decrypt(ctx, r, sk, slots=16) - x * x).max() < 1e-2


def test_envelope_layout_is_header_metadata_then_raw_arrays(ctx, keys, rng):
    """The layout the module doc states, byte for byte (the packer avoids copies; the bytes
    must not change): header, JSON metadata, each array's little-endian residues in order, and
    the SHA-256 of metadata ‖ payload."""
    import hashlib
    import json

    _, _, evk = keys
    c = encrypt(ctx, rng.uniform(-1, 1, (3, 16)), keys[1])
    for obj, arrays in (
        (c, [c.data]),
        (evk, [evk.relin.data, *(evk.galois[g].data for g in sorted(evk.galois))]),
    ):
        blob = serialize.dumps(obj)
        head = serialize._HEADER.unpack_from(blob)
        meta_len, body_len, digest = head[4], head[5], head[6]
        mbytes = blob[serialize._HEADER.size : serialize._HEADER.size + meta_len]
        body = b"".join(a.astype("<u4").tobytes() for a in arrays)
        assert len(blob) == serialize._HEADER.size + meta_len + body_len
        assert blob[serialize._HEADER.size + meta_len :] == body
        assert digest == hashlib.sha256(mbytes + body).digest()
        assert [t["offset"] for t in json.loads(mbytes)["arrays"]] == list(
            np.cumsum([0] + [a.nbytes for a in arrays[:-1]])
        )


def test_secret_key_is_refused_unless_explicitly_allowed(ctx, keys):
    sk = keys[0]
    blob = serialize.dumps(sk)
    with pytest.raises(SerializationError, match="secret key"):
        serialize.loads(blob, ctx)
    sk2 = serialize.loads(blob, ctx, allow_secret=True)
    assert isinstance(sk2, SecretKey) and np.array_equal(sk2.coeffs, sk.coeffs)
    assert "coeffs" not in repr(sk2)


def test_expected_kind_is_enforced(ctx, keys):
    with pytest.raises(SerializationError, match="expected a ciphertext_batch"):
        serialize.loads(serialize.dumps(keys[1]), ctx, expect=serialize.Kind.CIPHERTEXT_BATCH)


def test_foreign_parameters_are_refused(ctx, keys):
    other = CkksContext(CkksParameters.create(depth=3, n=1 << 12, allow_insecure_test_only=True))
    with pytest.raises(ParameterError, match="made for parameters"):
        serialize.loads(serialize.dumps(keys[1]), other)


def test_truncated_and_corrupted_input(ctx, keys, rng):
    blob = serialize.dumps(encrypt(ctx, rng.uniform(-1, 1, (1, 4)), keys[1]))
    for cut in (0, 10, len(blob) // 2, len(blob) - 1):
        with pytest.raises(SerializationError):
            serialize.loads(blob[:cut], ctx)
    flipped = bytearray(blob)
    flipped[len(blob) - 100] ^= 0x40
    with pytest.raises(SerializationError, match="checksum"):
        serialize.loads(bytes(flipped), ctx)
    with pytest.raises(SerializationError, match="magic"):
        serialize.loads(b"XXXX" + blob[4:], ctx)
    with pytest.raises(SerializationError):
        serialize.loads("not bytes", ctx)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_input_only_raises_hecnn_errors(ctx, keys, data):
    base = serialize.dumps(keys[1])
    mode = data.draw(st.sampled_from(["random", "mutate", "truncate", "extend"]))
    if mode == "random":
        blob = data.draw(st.binary(max_size=400))
    elif mode == "mutate":
        pos = data.draw(st.integers(0, len(base) - 1))
        blob = base[:pos] + bytes([data.draw(st.integers(0, 255))]) + base[pos + 1 :]
    elif mode == "truncate":
        blob = base[: data.draw(st.integers(0, len(base) - 1))]
    else:
        blob = base + data.draw(st.binary(min_size=1, max_size=64))
    try:
        obj = serialize.loads(blob, ctx)
    except HecnnError:
        return
    assert blob == base and isinstance(obj, PublicKey)


def _reseal(blob: bytes, meta: dict, body: bytes) -> bytes:
    """Doctored metadata/payload with a valid checksum: reaches the checks behind the digest."""
    import hashlib
    import json
    import struct

    head = struct.Struct("<4sHH16sIQ32s")
    magic, version, kind, fprint, *_ = head.unpack_from(blob)
    mb = json.dumps(meta).encode()
    digest = hashlib.sha256(mb + body).digest()
    return head.pack(magic, version, kind, fprint, len(mb), len(body), digest) + mb + body


@pytest.mark.parametrize("which", ["params", "public", "evk", "batch", "secret"])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_every_kind_fuzzed_behind_the_checksum(ctx, keys, which, data):
    import json

    sk, pk, evk = keys
    obj = {
        "params": ctx.params,
        "public": pk,
        "evk": evk,
        "batch": encrypt(ctx, np.ones((2, 8)), pk),
        "secret": sk,
    }[which]
    base = serialize.dumps(obj)
    _, _, meta, payload = serialize.read_header(base)
    body = bytes(payload)
    mode = data.draw(st.sampled_from(["flip", "truncate", "meta", "payload", "header"]))
    if mode == "flip":
        pos = data.draw(st.integers(0, len(base) - 1))
        blob = base[:pos] + bytes([base[pos] ^ 0x5A]) + base[pos + 1 :]
    elif mode == "truncate":
        blob = base[: data.draw(st.integers(0, len(base) - 1))]
    elif mode == "meta":
        m = json.loads(json.dumps(meta))
        section = data.draw(st.sampled_from(["params", "arrays", "scale"]))
        value = data.draw(
            st.none()
            | st.integers(-(2**80), 2**80)
            | st.floats()
            | st.text(max_size=5)
            | st.lists(st.integers(-5, 1 << 20), max_size=4)
        )
        if section == "params":
            m["params"][data.draw(st.sampled_from(sorted(m["params"])))] = value
        elif section == "arrays" and m["arrays"]:
            entry = data.draw(st.sampled_from(m["arrays"]))
            entry[data.draw(st.sampled_from(["name", "dtype", "shape", "offset"]))] = value
        else:
            m["scale"] = value
        blob = _reseal(base, m, body)
    elif mode == "payload" and body:
        raw = bytearray(body)
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
        blob = _reseal(base, meta, bytes(raw))
    else:  # header fields: version, kind, fingerprint, lengths
        field = data.draw(st.integers(4, 63))
        blob = base[:field] + bytes([base[field] ^ 0xFF]) + base[field + 1 :]
    try:
        serialize.loads(blob, ctx, allow_secret=True)
        serialize.loads(blob, allow_secret=True)
    except HecnnError:
        pass
