"""Shared small-ring fixtures. N=2^12 with few primes is below 128-bit security: tests only,
through the explicit ``allow_insecure_test_only`` switch."""

from __future__ import annotations

import numpy as np
import pytest

from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import KeyGenerator
from hecnn.ckks.params import CkksParameters
from hecnn.ckks.sampling import Prng


@pytest.fixture(scope="session")
def small_params() -> CkksParameters:
    return CkksParameters.create(depth=4, n=1 << 12, scale_bits=26, allow_insecure_test_only=True)


@pytest.fixture(scope="session")
def ctx(small_params) -> CkksContext:
    return CkksContext(small_params)


@pytest.fixture(scope="session")
def keys(ctx):
    kg = KeyGenerator(ctx, Prng(b"hecnn-test-seed-0123456789abcdef"))
    sk = kg.secret_key()
    pk = kg.public_key(sk)
    evk = kg.evaluation_keys(sk, rotations=[1, 2, 5, -1])
    return sk, pk, evk


@pytest.fixture()
def rng() -> np.random.Generator:
    # test data only (never key material): a seeded generator keeps failures reproducible
    return np.random.default_rng(1234)
