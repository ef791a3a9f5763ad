"""Statistical tests of the samplers (chi-square / moment checks at generous significance)."""

import numpy as np
from scipy import stats

from hecnn.ckks.sampling import SIGMA, TAIL, Prng


def test_seeded_streams_are_reproducible_and_unseeded_differ():
    a = Prng(b"0123456789abcdef0123").random_bytes(64)
    b = Prng(b"0123456789abcdef0123").random_bytes(64)
    assert a == b
    assert Prng().random_bytes(32) != Prng().random_bytes(32)


def test_ternary_is_uniform():
    s = Prng().ternary((300_000,))
    counts = np.bincount(s + 1, minlength=3)
    assert set(np.unique(s)) == {-1, 0, 1}
    assert stats.chisquare(counts).pvalue > 1e-4


def test_uniform_mod_q_is_uniform():
    q = 1073643521
    u = Prng().uniform_mod(q, (400_000,))
    assert u.min() >= 0 and u.max() < q
    hist, _ = np.histogram(u, bins=64, range=(0, q))
    assert stats.chisquare(hist).pvalue > 1e-4


def test_gaussian_moments_and_tail():
    e = Prng().gaussian((500_000,))
    assert abs(e.mean()) < 0.03
    assert abs(e.std() - SIGMA) < 0.03
    assert np.abs(e).max() <= TAIL
    # discrete Gaussian shape: compare the histogram of |e| ≤ 8 with the exact pmf
    support = np.arange(-TAIL, TAIL + 1)
    pmf = np.exp(-(support**2) / (2 * SIGMA**2))
    pmf /= pmf.sum()
    counts = np.bincount(e + TAIL, minlength=len(support))
    core = slice(TAIL - 8, TAIL + 9)
    expected = pmf[core] * len(e)
    observed = counts[core]
    chi = ((observed - expected) ** 2 / expected).sum()
    assert chi < stats.chi2.ppf(1 - 1e-4, df=len(expected))
