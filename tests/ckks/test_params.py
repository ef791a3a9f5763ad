import math

import pytest

from hecnn.ckks.params import CkksParameters
from hecnn.ckks.primes import is_prime, ntt_primes, primitive_root_of_unity
from hecnn.ckks.security import MAX_LOG_QP_128, check_security
from hecnn.errors import HecnnError, ParameterError, SecurityError


def test_ntt_primes_are_ntt_friendly():
    n = 1 << 14
    for q in ntt_primes(30, n, 5):
        assert is_prime(q) and q % (2 * n) == 1 and q.bit_length() == 30


def test_primitive_root_has_exact_order():
    n = 1 << 10
    q = ntt_primes(30, n, 1)[0]
    psi = primitive_root_of_unity(2 * n, q)
    assert pow(psi, 2 * n, q) == 1 and pow(psi, n, q) == q - 1


def test_default_parameters_are_128_bit_secure():
    for depth in (2, 6, 10, 20):
        p = CkksParameters.create(depth=depth)
        assert p.log_qp <= MAX_LOG_QP_128[p.n]
        assert not p.insecure_test_only
        assert p.depth == depth


def test_ring_degree_grows_with_depth():
    small = CkksParameters.create(depth=2)
    big = CkksParameters.create(depth=30)
    assert big.n > small.n


def test_insecure_set_is_refused_without_switch():
    with pytest.raises(SecurityError, match="128-bit"):
        CkksParameters.create(depth=10, n=4096)
    with pytest.raises(SecurityError):
        CkksParameters.create(depth=1, n=1024)
    p = CkksParameters.create(depth=10, n=4096, allow_insecure_test_only=True)
    assert p.insecure_test_only and "INSECURE" in p.describe()


def test_security_table_matches_he_standard():
    assert MAX_LOG_QP_128 == {
        1024: 27,
        2048: 54,
        4096: 109,
        8192: 218,
        16384: 438,
        32768: 881,
        65536: 1761,
    }
    check_security(16384, 438)
    with pytest.raises(SecurityError):
        check_security(16384, 438.5)


def test_bad_parameters_raise_hecnn_errors():
    with pytest.raises(ParameterError):
        CkksParameters(n=1000, moduli=(12289,), special_moduli=(40961,), scale=2.0**20)
    with pytest.raises(ParameterError, match="not a prime"):
        CkksParameters(
            n=1024,
            moduli=(2049 * 2,),
            special_moduli=(12289,),
            scale=2.0**20,
            insecure_test_only=True,
        )
    with pytest.raises(HecnnError):
        CkksParameters.create(depth=-1)
    with pytest.raises(HecnnError):
        CkksParameters.create(depth=2, scale_bits=40)


def test_multi_prime_base_modulus():
    p = CkksParameters.create(depth=4, scale_bits=28, first_prime_bits=60)
    assert p.base_primes == 2 and p.min_level == 1 and p.depth == 4
    assert math.isclose(sum(math.log2(q) for q in p.moduli[:2]), 60, abs_tol=0.1)


def test_fingerprint_distinguishes_parameter_sets():
    a = CkksParameters.create(depth=3)
    b = CkksParameters.create(depth=3)
    c = CkksParameters.create(depth=4)
    assert a.fingerprint == b.fingerprint != c.fingerprint
