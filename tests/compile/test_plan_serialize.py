"""Compiled plans serialize without pickle, round-trip exactly, and malformed plans — corrupted,
truncated, extended, or re-checksummed with a doctored graph — raise only hecnn errors."""

import hashlib
import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from hecnn.ckks import serialize as envelope
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import KeyGenerator
from hecnn.compile import compile_model
from hecnn.compile.serialize import dumps_plan, load_plan, loads_plan, save_plan
from hecnn.errors import HecnnError, SerializationError
from hecnn.nn.activations import Square, SwishPoly4, TrainablePoly
from hecnn.runtime import decrypt_outputs, encrypt_images, run, simulate

HEAD = struct.Struct("<4sHH16sIQ32s")


class Branchy(nn.Module):
    """Every node kind: conv, poly (folded and not), concat, residual add, linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, padding=1)
        self.a1 = SwishPoly4(4)
        self.c2a = nn.Conv2d(2, 2, 1)
        self.c2b = nn.Conv2d(2, 2, 3, padding=1)
        self.a2 = TrainablePoly(2, "element", shape=(4, 4, 4))
        self.c3 = nn.Conv2d(4, 4, 1)
        self.a3 = Square()
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        y = self.a1(self.c1(x))
        y = self.a2(torch.cat([self.c2a(y), self.c2b(y)], dim=1))
        y = y + self.a3(self.c3(y))
        return self.fc(torch.flatten(y, 1))


@pytest.fixture(scope="module")
def small_plan():
    torch.manual_seed(0)
    model = Branchy().eval()
    x = torch.randn(8, 1, 4, 4)
    plan = compile_model(model, (1, 4, 4), batch=8, calib=x, insecure_ring_for_tests=1 << 11)
    return model, x, plan


def _split(blob: bytes) -> tuple[tuple, dict, bytes]:
    head = HEAD.unpack_from(blob)
    mlen = head[4]
    meta = json.loads(blob[HEAD.size : HEAD.size + mlen])
    return head, meta, blob[HEAD.size + mlen :]


def _reseal(head: tuple, meta_bytes: bytes, body: bytes) -> bytes:
    """Re-checksum doctored content so that it reaches the validation behind the digest."""
    digest = hashlib.sha256(meta_bytes + body).digest()
    magic, version, kind, fprint = head[:4]
    return (
        HEAD.pack(magic, version, kind, fprint, len(meta_bytes), len(body), digest)
        + meta_bytes
        + body
    )


def test_round_trip_is_exact_and_runs_encrypted(small_plan, tmp_path):
    model, x, plan = small_plan
    blob = dumps_plan(plan)
    assert b"pickle" not in blob and blob[:4] == b"HECN"
    back = loads_plan(blob)
    assert dumps_plan(back) == blob
    assert back.params == plan.params and back.input_shape == plan.input_shape
    assert [type(n) for n in back.nodes] == [type(n) for n in plan.nodes]
    np.testing.assert_array_equal(simulate(back, x.numpy()), simulate(plan, x.numpy()))
    save_plan(plan, tmp_path / "p.hecnn")
    assert dumps_plan(load_plan(tmp_path / "p.hecnn")) == blob
    # the loaded plan runs encrypted and agrees with the plaintext model
    ctx = CkksContext(back.params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    ct = encrypt_images(back, ctx, kg.public_key(sk), x.numpy())
    got = decrypt_outputs(ctx, sk, run(back, ct, kg.evaluation_keys(sk)), len(x))
    with torch.no_grad():
        ref = model(x).double().numpy()
    assert np.abs(got - ref).max() < 1e-2 * max(1.0, np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_bundled_plan_round_trip():
    from hecnn.nn import bundled

    images, _ = bundled.sample_images()
    x = np.asarray(bundled.to_float(images[::100]), dtype=np.float32)
    plan = compile_model(bundled.load_model("ishiyama_mnist_poly_element_kd"), (1, 28, 28), calib=x)
    back = loads_plan(dumps_plan(plan))
    np.testing.assert_array_equal(simulate(back, x), simulate(plan, x))
    assert not back.params.insecure_test_only and back.params.n == 1 << 14


def test_plans_are_not_other_kinds(small_plan):
    _, _, plan = small_plan
    blob = dumps_plan(plan)
    with pytest.raises(SerializationError, match="load it with"):
        envelope.loads(blob)
    with pytest.raises(SerializationError, match="expected a plan"):
        loads_plan(envelope.dumps(plan.params))
    with pytest.raises(SerializationError):
        dumps_plan("not a plan")


def test_doctored_graphs_are_refused_with_clear_messages(small_plan):
    _, _, plan = small_plan
    head, meta, body = _split(dumps_plan(plan))

    def doctor(fn) -> str:
        m = json.loads(json.dumps(meta))
        fn(m["plan"])
        with pytest.raises(SerializationError) as err:
            loads_plan(_reseal(head, json.dumps(m).encode(), body))
        return str(err.value)

    nodes = meta["plan"]["nodes"]
    aff = next(i for i, n in enumerate(nodes) if n["op"] == "affine")
    assert "undefined input" in doctor(lambda p: p["nodes"][1].update(inputs=["nope"]))
    assert "repeated" in doctor(lambda p: p["nodes"][2].update(name=p["nodes"][1]["name"]))
    assert "levels" in doctor(lambda p: p["nodes"][aff].update(level_out=0))
    assert "weight shape" in doctor(lambda p: p["nodes"][aff].update(in_features=3))
    assert "output" in doctor(lambda p: p.update(output="missing"))
    assert "batch" in doctor(lambda p: p.update(batch=10**9))
    assert "known op" in doctor(lambda p: p["nodes"][0].update(op="eval"))
    # a block table whose dimensions do not add up to the stored arrays
    table = meta["arrays"]
    dims = next(a for a in table if a["name"] == f"n{aff}.dims")
    raw = bytearray(body)
    struct.pack_into("<q", raw, dims["offset"], 1 << 40)
    with pytest.raises(SerializationError, match="block dimensions"):
        loads_plan(_reseal(head, json.dumps(meta).encode(), bytes(raw)))
    # non-finite weights
    w = next(a for a in table if a["name"] == f"n{aff}.weights")
    raw = bytearray(body)
    struct.pack_into("<d", raw, w["offset"], float("nan"))
    with pytest.raises(SerializationError, match="non-finite"):
        loads_plan(_reseal(head, json.dumps(meta).encode(), bytes(raw)))


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=12,
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_plans_only_raise_hecnn_errors(small_plan, data):
    _, _, plan = small_plan
    base = dumps_plan(plan)
    head, meta, body = _split(base)
    mode = data.draw(st.sampled_from(["bytes", "truncate", "extend", "json", "payload"]))
    if mode == "bytes":
        pos = data.draw(st.integers(0, len(base) - 1))
        blob = base[:pos] + bytes([base[pos] ^ data.draw(st.integers(1, 255))]) + base[pos + 1 :]
    elif mode == "truncate":
        blob = base[: data.draw(st.integers(0, len(base) - 1))]
    elif mode == "extend":
        blob = base + data.draw(st.binary(min_size=1, max_size=64))
    elif mode == "json":  # valid checksum, doctored metadata: reaches the graph validation
        paths = list(_paths(meta))[1:]
        path = data.draw(st.sampled_from(paths))
        m = json.loads(json.dumps(meta))
        target = m
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = data.draw(_json)
        blob = _reseal(head, json.dumps(m).encode(), body)
    else:  # valid checksum, doctored arrays
        raw = bytearray(body)
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] = data.draw(st.integers(0, 255))
        blob = _reseal(head, json.dumps(meta).encode(), bytes(raw))
    try:
        back = loads_plan(blob)
    except HecnnError:
        return
    # accepted: must be a well-formed plan that simulates to finite values
    out = simulate(back, np.zeros((2, *back.input_shape)))
    assert out.shape == (2, back.num_classes)
