"""Encrypted Chebyshev-basis evaluation: equal to the float value up to CKKS noise, exactly
⌈log2(d+1)⌉ levels, and composite sign chains precise to 2^-α at a 2^30 scale."""

import math

import numpy as np
import pytest

from hecnn.approx.composite import composite_sign
from hecnn.ckks.context import CkksContext
from hecnn.ckks.encryption import decrypt, encrypt
from hecnn.ckks.keys import KeyGenerator
from hecnn.ckks.params import CkksParameters
from hecnn.compile.chebyshev import to_chebyshev
from hecnn.errors import LevelError
from hecnn.runtime.chebyshev import evaluate_chebyshev

SLOTS = 2048


@pytest.fixture(scope="module")
def setup():
    # 15 levels of a 2^12 ring: below 128-bit security, tests only
    params = CkksParameters.create(
        depth=15, n=1 << 12, scale_bits=30, allow_insecure_test_only=True
    )
    ctx = CkksContext(params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    return ctx, sk, kg.public_key(sk), kg.evaluation_keys(sk)


@pytest.mark.parametrize("degree", [2, 7, 15, 27])
def test_random_polynomial_matches_float(setup, degree):
    ctx, sk, pk, evk = setup
    rng = np.random.default_rng(degree)
    c = rng.uniform(-1, 1, degree + 1)
    x = rng.uniform(-1, 1, (2, SLOTS))
    ct = encrypt(ctx, x, pk)
    y = evaluate_chebyshev(ct, c, 1.0, evk)
    assert y.level == ct.level - math.ceil(math.log2(degree + 1))
    assert y.components == 2 and y.scale == pytest.approx(ctx.params.scale, rel=1e-9)
    got = decrypt(ctx, y, sk, slots=SLOTS)
    ref = np.polynomial.chebyshev.chebval(x, c)
    # the input's encryption noise (~4e-6, random with the keys) is amplified by up to
    # |p'| ≤ Σ k²|c_k|: measured 0.3–1.2e-3 at degree 15; a wrong schedule gives O(1) errors
    assert np.abs(got - ref).max() < 2e-5 * max(1, degree) ** 2


def test_per_ciphertext_coefficients_and_radius(setup):
    """(degree + 1, B) coefficients: one polynomial per ciphertext; radius r reads x/r."""
    ctx, sk, pk, evk = setup
    rng = np.random.default_rng(7)
    c = rng.uniform(-1, 1, (6, 3))
    x = rng.uniform(-3, 3, (3, SLOTS))
    ct = encrypt(ctx, x, pk, scale=ctx.params.scale / 3.0)  # lands at Δ/r: T_k keep scale ≈ Δ
    got = decrypt(ctx, evaluate_chebyshev(ct, c, 3.0, evk), sk, slots=SLOTS)
    for j in range(3):
        ref = np.polynomial.chebyshev.chebval(x[j] / 3.0, c[:, j])
        assert np.abs(got[j] - ref).max() < 1e-3


@pytest.mark.parametrize("alpha", [10, 14])
def test_composite_relu_reaches_its_precision(setup, alpha):
    """The whole composite chain, each stage landing at Δ/r of the next: ReLU error ≈ 2^-α·B
    with exactly Σ⌈log2(d_i + 1)⌉ levels (α = 14 is (15, 27, 29): 14 levels)."""
    ctx, sk, pk, evk = setup
    s = composite_sign(alpha)
    bound, delta = 2.0, ctx.params.scale
    radii = [bound] + [(1 + e) * 1.01 for e in s.stage_errors[:-1]]
    x = np.random.default_rng(alpha).uniform(-bound, bound, (2, SLOTS))
    y = encrypt(ctx, x, pk, scale=delta / bound)
    top = y.level
    for i, comp in enumerate(s.components):
        cheb = to_chebyshev(np.asarray(comp), 1.0 if i == 0 else radii[i])
        nxt = delta / radii[i + 1] if i + 1 < len(radii) else delta
        y = evaluate_chebyshev(y, cheb, radii[i], evk, target_scale=nxt)
    assert top - y.level == s.depth
    sign = decrypt(ctx, y, sk, slots=SLOTS)
    relu = x * (1 + sign) / 2
    # the approximation itself reaches 0.99·2^-α·B; the encryption noise (fresh keys, 14
    # levels of a 2^30 scale) adds to it — at α = 14, over 40 runs: median 0.2, max 0.64 of
    # 2^-α·B; the old single bound (1.25·2^-α·B on the sum) failed ~1 run in 12 — so the two
    # are checked apart: exact composite vs ReLU, encrypted vs the exact composite
    exact = x * (1 + s.eval(x / bound)) / 2
    assert np.abs(exact - np.maximum(x, 0)).max() < 1.1 * bound * 2.0**-alpha
    assert np.abs(relu - exact).max() < bound * 2.0**-alpha


def test_too_few_levels_is_a_level_error(setup):
    ctx, _sk, pk, evk = setup
    ct = encrypt(ctx, np.zeros((1, SLOTS)), pk, level=2)
    with pytest.raises(LevelError):
        evaluate_chebyshev(ct, np.ones(8), 1.0, evk)  # degree 7 needs 3 levels
