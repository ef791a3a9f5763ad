import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hecnn.ckks.context import CkksContext
from hecnn.ckks.params import CkksParameters
from hecnn.ckks.primes import primitive_root_of_unity


@pytest.fixture(scope="module")
def tiny():
    return CkksContext(CkksParameters.create(depth=2, n=32, allow_insecure_test_only=True))


def _negacyclic(a, b, q):
    n = len(a)
    full = np.convolve(a.astype(object), b.astype(object))
    out = full[:n].copy()
    out[: n - 1] -= full[n:]
    return np.array([int(v) % q for v in out], dtype=np.int64)


def _random_residues(ctx, idx, seed, lead=()):
    g = np.random.default_rng(seed)
    return np.stack(
        [g.integers(0, int(ctx.primes[i]), (*lead, ctx.n)) for i in idx], axis=-2
    ).astype(np.int32)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_ntt_roundtrip_and_negacyclic_product(tiny, seed):
    idx = tiny.qp_idx(2)
    a = _random_residues(tiny, idx, seed, (2,))
    b = _random_residues(tiny, idx, seed + 1, (2,))
    fa, fb = tiny.ntt(a.copy(), idx), tiny.ntt(b.copy(), idx)
    assert np.array_equal(tiny.intt(fa.copy(), idx), a)
    prod = tiny.intt(tiny.mul(fa, fb, idx), idx)
    for p in range(2):
        for k, i in enumerate(idx):
            assert np.array_equal(prod[p, k], _negacyclic(a[p, k], b[p, k], int(tiny.primes[i])))


def test_ntt_slot_is_evaluation_at_odd_root_power(tiny):
    idx = tiny.data_idx(0)
    a = _random_residues(tiny, idx, 7)
    fa = tiny.ntt(a.copy(), idx)
    q = int(tiny.primes[0])
    psi = primitive_root_of_unity(2 * tiny.n, q)
    for k in (0, 1, 5, tiny.n - 1):
        e = 2 * int(tiny.bit_reverse[k]) + 1
        direct = sum(int(c) * pow(psi, e * i, q) for i, c in enumerate(a[0])) % q
        assert fa[0, k] == direct


def test_automorphism_permutation_matches_coefficient_map(tiny):
    idx = tiny.data_idx(1)
    a = _random_residues(tiny, idx, 3)
    g = 5
    n = tiny.n
    coeff = np.zeros_like(a)
    for i in range(n):
        d = i * g % (2 * n)
        sign = 1 if d < n else -1
        coeff[:, d % n] = (coeff[:, d % n] + sign * a[:, i]) % tiny.moduli_column(idx)[:, 0]
    via_ntt = tiny.intt(
        np.ascontiguousarray(tiny.ntt(a.copy(), idx)[:, tiny.automorphism_perm(g)]), idx
    )
    assert np.array_equal(via_ntt, coeff)


def test_base_conversion_is_exact_up_to_source_multiple(tiny):
    src = np.array([0, 1])
    dst = np.array([2, 3])
    qs = [int(tiny.primes[i]) for i in range(4)]
    big = qs[0] * qs[1]
    g = np.random.default_rng(0)
    vals = [int(v) for v in g.integers(0, 2**60, tiny.n)]
    vals = [v % big for v in vals]
    x = np.array([[[v % qs[0] for v in vals], [v % qs[1] for v in vals]]], dtype=np.int32)
    out = tiny.base_convert(x, src, dst)
    for t, qi in zip(range(2), qs[2:], strict=True):
        for j in range(0, tiny.n, 7):
            diff = (int(out[0, t, j]) - vals[j]) % qi
            assert any(diff == (u * big) % qi for u in range(len(src)))


def test_nested_parallel_calls_run_inline_on_pool_threads(tiny):
    import threading

    checked = []

    def outer(lo: int, hi: int) -> None:
        names: list[str] = []
        tiny.parallel(8, lambda a, b: names.append(threading.current_thread().name))
        me = threading.current_thread().name
        if me.startswith("hecnn-ckks"):
            # from a pool thread the inner call must not go back to the pool
            assert set(names) == {me}
            checked.append(me)

    for _ in range(5):
        tiny.parallel(4, outer)
    assert checked  # the outer call did reach pool threads
