"""Homomorphic operations on batches: every result is decrypted and compared with numpy."""

import numpy as np
import pytest

from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.context import CkksContext
from hecnn.ckks.encoder import Encoder, galois_element
from hecnn.ckks.encryption import decrypt, encrypt
from hecnn.ckks.keys import KeyGenerator
from hecnn.ckks.params import CkksParameters
from hecnn.errors import (
    HecnnError,
    LevelError,
    MissingKeyError,
    ParameterError,
    ScaleError,
    ShapeError,
)

TOL = 1e-2  # scale 2^26, N=2^12: fresh noise ~1e-4, after a multiplication ~1e-3


def _x(rng, b=3, slots=None, ctx=None):
    return rng.uniform(-1, 1, (b, slots or ctx.params.slots))


def test_encoder_roundtrip(rng):
    enc = Encoder(64)
    z = rng.normal(size=(5, 32))
    assert np.allclose(enc.project(enc.embed(z)).real, z, atol=1e-12)
    with pytest.raises(ShapeError):
        enc.embed(np.zeros(33))
    with pytest.raises(ShapeError):
        enc.embed(np.array([np.nan]))


@pytest.mark.parametrize("which", ["public", "secret"])
def test_encrypt_decrypt(ctx, keys, rng, which):
    sk, pk, _ = keys
    x = _x(rng, ctx=ctx)
    c = encrypt(ctx, x, pk if which == "public" else sk)
    assert c.level == ctx.params.max_level and len(c) == 3
    err = np.abs(decrypt(ctx, c, sk) - x).max()
    assert err < 2e-3
    # a wrong key decrypts to garbage, which fills the modulus: an error, not numbers
    other = KeyGenerator(ctx).secret_key()
    with pytest.raises(ScaleError, match="decryption overflow"):
        decrypt(ctx, c, other)


def test_add_sub_neg_const_plain(ctx, keys, rng):
    sk, pk, _ = keys
    x, y = _x(rng, ctx=ctx), _x(rng, ctx=ctx)
    cx, cy = encrypt(ctx, x, pk), encrypt(ctx, y, pk)
    assert np.abs(decrypt(ctx, cx + cy, sk) - (x + y)).max() < TOL
    assert np.abs(decrypt(ctx, cx - cy, sk) - (x - y)).max() < TOL
    assert np.abs(decrypt(ctx, -cx, sk) + x).max() < TOL
    consts = np.array([0.5, -2.0, 3.25])
    assert np.abs(decrypt(ctx, cx.add_const(consts), sk) - (x + consts[:, None])).max() < TOL
    assert np.abs(decrypt(ctx, cx.add_plain(y), sk) - (x + y)).max() < TOL


def test_add_const_in_place_equals_add_const(ctx, keys, rng):
    """The in-place constant (a layer's bias on its fresh sums) gives add_const's residues bit
    for bit, on 2 and 3 components, changes only c0, and refuses a read-only batch."""
    _sk, pk, _ = keys
    consts = np.array([0.5, -2.0, 3.25])
    for c in (encrypt(ctx, _x(rng, ctx=ctx), pk), encrypt(ctx, _x(rng, ctx=ctx), pk).square()):
        want = c.add_const(consts)
        mine = CiphertextBatch(ctx, c.data.copy(), c.scale)
        got = mine.add_const_in_place(consts)
        assert got is mine and np.array_equal(got.data, want.data)
        assert np.array_equal(got.data[:, 1:], c.data[:, 1:])
        assert not np.array_equal(got.data[:, 0], c.data[:, 0])
    frozen = CiphertextBatch(ctx, c.data.copy(), c.scale)
    frozen.data.flags.writeable = False
    with pytest.raises(ParameterError, match="writable"):
        frozen.add_const_in_place(consts)


def test_scalar_and_plain_multiplication(ctx, keys, rng):
    sk, pk, _ = keys
    x, y = _x(rng, ctx=ctx), _x(rng, ctx=ctx)
    c = encrypt(ctx, x, pk)
    r = c.mul_scalar(-1.75).rescale()
    assert r.level == c.level - 1 and np.isclose(r.scale, c.scale)
    assert np.abs(decrypt(ctx, r, sk) - (-1.75 * x)).max() < TOL
    v = np.array([0.5, 2.0, -3.0])
    r = c.mul_scalar(v).rescale()
    assert np.abs(decrypt(ctx, r, sk) - v[:, None] * x).max() < TOL
    r = c.mul_plain(y).rescale()
    assert np.abs(decrypt(ctx, r, sk) - x * y).max() < TOL


def test_multiply_relinearize_rescale(ctx, keys, rng):
    sk, pk, evk = keys
    x, y = _x(rng, ctx=ctx), _x(rng, ctx=ctx)
    cx, cy = encrypt(ctx, x, pk), encrypt(ctx, y, pk)
    prod = cx.mul(cy)
    assert prod.components == 3
    assert np.abs(decrypt(ctx, prod, sk) - x * y).max() < TOL  # 3-component decryption
    r = prod.relinearize(evk).rescale()
    assert r.components == 2
    assert np.abs(decrypt(ctx, r, sk) - x * y).max() < TOL
    sq = cx.square().relinearize(evk).rescale()
    assert np.abs(decrypt(ctx, sq, sk) - x * x).max() < TOL
    # depth: x^4 then x^8
    x4 = sq.square().relinearize(evk).rescale()
    x8 = x4.square().relinearize(evk).rescale()
    assert np.abs(decrypt(ctx, x8, sk) - x**8).max() < 5 * TOL


def test_unrelinearized_products_grow_components(ctx, keys, rng):
    """(3 comps)·(3 comps) → 5, (3 comps)² → 5, 3⊗2 → 4 decrypt with s..s⁴ to the products.

    Products beyond 3 components are used unrescaled (the rescale-free tail of a plan): the
    rounding of a rescale would meet s⁴ at decryption. A 3-component rescale is fine, its
    rounding meets s² (here, N=2^12 at scale 2^26: errors up to ~1e-2 instead of ~1e-4)."""
    tol = 2 * TOL
    sk, pk, _evk = keys
    x, y, z = _x(rng, ctx=ctx), _x(rng, ctx=ctx), _x(rng, ctx=ctx)
    cx, cy, cz = (encrypt(ctx, v, pk) for v in (x, y, z))
    xy = cx.mul(cy).rescale()
    assert xy.components == 3
    assert np.abs(decrypt(ctx, xy, sk) - x * y).max() < tol
    # a product of two factors each off by up to tol (|values| ≤ 1) is off by up to ~2·tol
    sq = xy.square()
    assert sq.components == 5
    assert np.abs(decrypt(ctx, sq, sk) - (x * y) ** 2).max() < 2 * tol
    zz = cz.mul(cz).rescale()
    xyzz = xy.mul(zz)
    assert xyzz.components == 5
    assert np.abs(decrypt(ctx, xyzz, sk) - x * y * z * z).max() < 2 * tol
    mixed = xy.mul(cz.drop_to(xy.level))  # 3 ⊗ 2 → 4 components
    assert mixed.components == 4
    assert np.abs(decrypt(ctx, mixed, sk) - x * y * z).max() < tol
    # linear maps, scalars and additions work on any component count, without a rescale
    w = np.array([[0.5, -1.0, 0.25], [-2.0, 0.0, 1.0]])
    lin = sq.linear_combination(w, bias=np.array([0.1, -0.2]), weight_scale=2.0**12)
    assert lin.components == 5
    want = w @ ((x * y) ** 2) + np.array([[0.1], [-0.2]])
    assert np.abs(decrypt(ctx, lin, sk) - want).max() < 3 * tol
    total = sq + mixed.mul_scalar(3.0, scale=sq.scale / mixed.scale)
    assert np.abs(decrypt(ctx, total, sk) - ((x * y) ** 2 + 3 * x * y * z)).max() < 3 * tol


@pytest.mark.parametrize("steps", [1, 2, 5, -1])
def test_rotate(ctx, keys, rng, steps):
    sk, pk, evk = keys
    x = _x(rng, ctx=ctx)
    r = encrypt(ctx, x, pk).rotate(steps, evk)
    assert np.abs(decrypt(ctx, r, sk) - np.roll(x, -steps, axis=1)).max() < TOL


def test_hoisted_rotations_equal_single_rotations(ctx, keys, rng):
    """One decomposition, several automorphisms: each result decrypts to the rotated vector,
    like a plain rotation; step 0 is the input itself."""
    sk, pk, evk = keys
    x = _x(rng, ctx=ctx)
    ct = encrypt(ctx, x, pk)
    rots = ct.rotate_hoisted([0, 1, 2, 5, -1, 1], evk)
    assert sorted(rots) == [-1, 0, 1, 2, 5] and rots[0] is ct
    for r in (1, 2, 5, -1):
        got = decrypt(ctx, rots[r], sk)
        assert np.abs(got - np.roll(x, -r, axis=1)).max() < TOL
        assert np.abs(got - decrypt(ctx, ct.rotate(r, evk), sk)).max() < TOL
    with pytest.raises(MissingKeyError):
        ct.rotate_hoisted([3], evk)
    with pytest.raises(ParameterError):
        ct.mul(ct).rotate_hoisted([1], evk)


def test_rescale_onto_base_primes_smaller_than_the_scale(rng):
    """A base modulus split into primes smaller than the scale primes (18 bits under 29-bit
    scale primes) still rescales exactly: the dropped limb is reduced by a true remainder."""
    p = CkksParameters.create(
        3, n=1 << 12, scale_bits=28, first_prime_bits=36, allow_insecure_test_only=True
    )
    assert max(p.moduli[: p.base_primes]) < 2**20 < min(p.moduli[p.base_primes :])
    c = CkksContext(p)
    kg = KeyGenerator(c)
    sk = kg.secret_key()
    x, w = _x(rng, ctx=c), _x(rng, ctx=c)
    y = encrypt(c, x, kg.public_key(sk))
    for _ in range(p.max_level - p.min_level):  # the last rescale lands on the small primes
        y = y.mul_plain(w).rescale()
        x = x * w
    assert y.level == p.min_level
    assert np.abs(decrypt(c, y, sk) - x).max() < TOL


def test_galois_keys_for_a_lower_level_are_smaller_and_rotate_there(ctx, keys, rng):
    """A key generated for level ℓ < L holds only Q_ℓ·P's limbs (and digits): it rotates
    ciphertexts at ℓ and below (plain and hoisted), refuses higher ones, and round-trips
    through the wire format."""
    from hecnn.ckks.serialize import dumps, loads

    sk, pk, _ = keys
    kg = KeyGenerator(ctx)
    lvl = ctx.params.max_level - 2
    low = kg.evaluation_keys(sk, relin=False, rotations=[1, 2], rotation_levels={1: lvl})
    k1, k2 = low.galois_key(galois_element(ctx.n, 1)), low.galois_key(galois_element(ctx.n, 2))
    assert k1.level == lvl and k2.level == ctx.params.max_level
    assert k1.data.nbytes < k2.data.nbytes and k1.dnum <= k2.dnum
    x = _x(rng, ctx=ctx)
    c = encrypt(ctx, x, pk)
    for ct in (c.drop_to(lvl), c.drop_to(lvl - 1)):
        want = np.roll(x, -1, axis=1)
        assert np.abs(decrypt(ctx, ct.rotate(1, low), sk) - want).max() < TOL
        assert np.abs(decrypt(ctx, ct.rotate_hoisted([1], low)[1], sk) - want).max() < TOL
    with pytest.raises(MissingKeyError, match="serves levels"):
        c.rotate(1, low)
    back = loads(dumps(low), ctx)
    assert back.galois_key(galois_element(ctx.n, 1)).level == lvl
    assert np.abs(decrypt(ctx, c.drop_to(lvl).rotate(1, back), sk) - np.roll(x, -1, 1)).max() < TOL


def test_rotate_without_key_is_a_clear_error(ctx, keys, rng):
    _sk, pk, evk = keys
    c = encrypt(ctx, _x(rng, ctx=ctx), pk)
    with pytest.raises(MissingKeyError, match="rotation by 3"):
        c.rotate(3, evk)


def test_slicing_stacking_and_levels(ctx, keys, rng):
    sk, pk, _ = keys
    x = _x(rng, b=4, ctx=ctx)
    c = encrypt(ctx, x, pk)
    assert np.abs(decrypt(ctx, c[1:3], sk) - x[1:3]).max() < TOL
    low = c[:2].mul_scalar(1.0).rescale()
    both = CiphertextBatch.stack([low, c[2:]])
    assert both.level == low.level and len(both) == 4
    assert np.abs(decrypt(ctx, both, sk) - x).max() < TOL
    # adding operands at different levels aligns them by dropping limbs
    s = low + c[:2]
    assert np.abs(decrypt(ctx, s, sk) - 2 * x[:2]).max() < TOL


def test_levels_exhaust_with_clear_error(ctx, keys, rng):
    _sk, pk, _evk = keys
    c = encrypt(ctx, _x(rng, ctx=ctx), pk)
    for _ in range(ctx.params.depth):
        c = c.mul_scalar(1.0).rescale()
    assert c.level == ctx.params.min_level
    with pytest.raises(LevelError, match="exhausted"):
        c.rescale()
    with pytest.raises(ScaleError, match="no room"):
        c.mul_scalar(1.0)


def test_mismatched_operands_raise(ctx, keys, rng):
    _sk, pk, _evk = keys
    c = encrypt(ctx, _x(rng, ctx=ctx), pk)
    with pytest.raises(ScaleError, match="scales differ"):
        c + c.mul_scalar(1.0)
    other = CkksContext(CkksParameters.create(depth=3, n=1 << 12, allow_insecure_test_only=True))
    okg = KeyGenerator(other)
    osk = okg.secret_key()
    foreign = encrypt(other, np.zeros((1, 4)), osk)
    with pytest.raises(ParameterError, match="different parameter"):
        c + foreign
    with pytest.raises(ParameterError):
        decrypt(ctx, c, osk)
    with pytest.raises(ParameterError):
        encrypt(ctx, np.zeros((1, 4)), okg.public_key(osk))
    with pytest.raises(HecnnError, match="components"):
        c.square().square().square()  # 9 components
    with pytest.raises(ParameterError, match="only 3-component"):
        c.square().rescale().square().relinearize(_evk)  # 5 components: no key for s³, s⁴
    with pytest.raises(ShapeError):
        encrypt(ctx, np.zeros((1, ctx.params.slots + 1)), pk)
    with pytest.raises(ShapeError):
        CiphertextBatch(ctx, np.zeros((1, 2, 3), dtype=np.int64), c.scale)


def test_decrypt_at_a_level_beyond_float_range():
    """Q above 2^1024 (N = 2^16, 39 levels): small values still decrypt (no inf·0 = nan)."""
    from hecnn.ckks.primes import ntt_primes
    from hecnn.ckks.rns import centered_to_float

    qs = ntt_primes(31, 1 << 12, 40)
    value = np.array([[5, -7, 0, 123456789]], dtype=np.int64)
    residues = np.stack([value % q for q in qs], axis=-2)  # (1, 40, 4)
    assert np.array_equal(centered_to_float(residues, qs), value.astype(np.float64))


@pytest.mark.parametrize("limbs", [1, 3, 40])
def test_decryption_overflow_is_detected_from_the_top_digit(limbs):
    """Values within 5 bits of Q/2 (garbage of a wrapped computation) raise; values below
    Q/2^6 decode, also where Q exceeds float64's range (40 limbs of 31 bits)."""
    from hecnn.ckks.primes import ntt_primes
    from hecnn.ckks.rns import OVERFLOW_BITS, centered_to_float

    qs = ntt_primes(31, 1 << 12, limbs)
    big = 1
    for q in qs:
        big *= q

    def residues(values: list[int]) -> np.ndarray:
        return np.array([[[v % q for v in values] for q in qs]], dtype=np.int64)

    fine = [big >> (OVERFLOW_BITS + 1), -(big >> (OVERFLOW_BITS + 1)), 3, -3]
    centered_to_float(residues(fine), qs, check_overflow=True)  # no error
    for v in (big >> (OVERFLOW_BITS - 1), -(big >> (OVERFLOW_BITS - 1)), big // 2 - 1):
        with pytest.raises(ScaleError, match="decryption overflow"):
            centered_to_float(residues([1, v]), qs, check_overflow=True)
    centered_to_float(residues([1, big // 2 - 1]), qs)  # unchecked: still decodes


def test_a_product_that_outgrows_the_modulus_raises_at_decryption(ctx, keys, rng):
    """x·c at the lowest level, c an integer (scale 1): the scale is fine, but m·c·Δ outgrows
    q_0 and wraps; decryption says so instead of returning the wrapped numbers."""
    sk, pk, _ = keys
    x = _x(rng, ctx=ctx)
    c = encrypt(ctx, x, pk).drop_to(0)
    assert np.abs(decrypt(ctx, c.mul_scalar(2.0, scale=1.0), sk) - 2 * x).max() < 1e-2
    with pytest.raises(ScaleError, match="decryption overflow"):
        decrypt(ctx, c.mul_scalar(float(2**14), scale=1.0), sk)


def test_sum_of_uneven_component_counts_equals_the_padded_sum(ctx, keys, rng):
    """x² (3 components) + y (2 components, one level higher) in one pass, either order: the
    same residues as padding y with a zero component and adding; constants add to c0 only."""
    from hecnn.ckks.batch import _pad_components

    sk, pk, _ = keys
    x, y = _x(rng, ctx=ctx), _x(rng, ctx=ctx)
    sq = encrypt(ctx, x, pk).square()
    lin = encrypt(ctx, y, pk).mul_scalar(1.0, scale=sq.scale / ctx.params.scale)
    lin = CiphertextBatch(ctx, lin.data, sq.scale)  # same scale (a fresh ct at Δ·Δ)
    padded = ctx.add(sq.data, np.ascontiguousarray(_pad_components(lin.data, 3)), sq.idx)
    for total in (sq + lin, lin + sq):
        assert total.components == 3 and np.array_equal(total.data, padded)
    low, sq_low = lin.drop_to(sq.level - 1), sq.drop_to(sq.level - 1)  # levels differ too
    padded_low = ctx.add(
        sq_low.data, np.ascontiguousarray(_pad_components(low.data, 3)), sq_low.idx
    )
    assert np.array_equal((sq + low).data, padded_low)
    got = decrypt(ctx, (sq + lin).add_const(0.25), sk)
    assert np.abs(got - (x * x + y + 0.25)).max() < 1e-2


def test_one_pass_square_equals_the_general_product(ctx, keys, rng):
    """The fused 2-component square (c0², 2·c0·c1, c1²) gives the residues of c·c exactly."""
    _, pk, _ = keys
    c = encrypt(ctx, _x(rng, ctx=ctx), pk)
    assert np.array_equal(c.square().data, c.mul(c).data)
    low = c.drop_to(1)
    assert np.array_equal(low.square().data, low.mul(low).data)


def test_one_pass_quadratic_equals_square_plus_scalar_product(ctx, keys, rng):
    """x² + c·x in one pass gives the residues of square() + mul_scalar(c, scale=x.scale)
    exactly (per-ciphertext c, negative and zero too), and decrypts to x² + c·x."""
    sk, pk, evk = keys
    x = _x(rng, ctx=ctx)
    c = encrypt(ctx, x, pk)
    v = rng.uniform(-3, 3, len(x))
    v[0] = 0.0
    fused = c.square_plus_scaled(v)
    assert np.array_equal(fused.data, (c.square() + c.mul_scalar(v, scale=c.scale)).data)
    assert fused.scale == c.scale**2 and fused.components == 3
    # relinearized first: a rescaled 3-component product carries ~1e-2 of s²-weighted rounding
    # at this test ring's 2^26 scale, the relinearized one ~3e-4
    got = decrypt(ctx, fused.relinearize(evk).rescale(), sk)
    assert np.abs(got - (x * x + v[:, None] * x)).max() < 2e-3


def test_rescale_twice_is_one_rounding_of_two_rescales(ctx, keys, rng):
    """Dividing by q_ℓ·q_{ℓ−1} at once rounds once: in coefficient form it is within 1 of two
    rescales in a row, at the same level and scale, for 2 and 3 components; it decrypts to the
    message; and it refuses to eat the base primes."""
    sk, pk, _ = keys
    x = _x(rng, ctx=ctx)
    c = encrypt(ctx, x, pk)
    prod = c.square_plus_scaled(np.zeros(len(x)))  # 3 components at scale Δ²
    two_primes = float(ctx.primes[c.level]) * float(ctx.primes[c.level - 1])
    lifted = c.mul_scalar(np.full(len(x), 0.5), scale=two_primes)  # lands on Δ after both
    for y in (lifted, prod):
        once, twice = y.rescale_twice(), y.rescale().rescale()
        assert once.level == twice.level == y.level - 2
        assert once.scale == pytest.approx(twice.scale, rel=1e-12)
        idx = ctx.data_idx(once.level)
        a = ctx.intt(once.data.copy(), idx).astype(np.int64)
        b = ctx.intt(twice.data.copy(), idx).astype(np.int64)
        q = ctx.primes[idx].astype(np.int64)[:, None]
        d = (a - b) % q
        d = np.where(d > q // 2, d - q, d)
        assert np.abs(d).max() <= 1
    once = lifted.rescale_twice()
    assert once.scale == pytest.approx(c.scale, rel=1e-12)
    assert np.abs(decrypt(ctx, once, sk) - 0.5 * x).max() < 1e-3
    low = c.drop_to(ctx.params.min_level + 1)
    with pytest.raises(LevelError):
        low.rescale_twice()


def test_two_prime_lift_matches_big_integers(ctx, rng):
    """The kernel behind rescale_twice: the centered CRT lift of two residues, reduced into
    every other prime, equals Python's big-integer arithmetic — at the ends of the range too."""
    from hecnn.ckks import kernels

    primes = ctx.primes.astype(np.int64)
    q_lo, q_hi, n = int(primes[2]), int(primes[3]), 512
    big = q_lo * q_hi
    vals = [int(v) for v in rng.integers(0, big, size=2 * n)]
    vals[:6] = [0, 1, big - 1, big // 2, big // 2 + 1, big - 2]
    top = np.array(
        [[[v % q_lo for v in row], [v % q_hi for v in row]] for row in (vals[:n], vals[n:])]
    )
    out = np.empty((2, 2, n), dtype=np.int32)
    low = np.array([0, 1])
    inv = np.int64(pow(q_lo, -1, q_hi))
    kernels.rescale_lift2(
        top.astype(np.int32), np.int64(q_lo), np.int64(q_hi), inv, low, primes, out
    )
    want = [
        [[(v - big if v > big // 2 else v) % int(primes[i]) for v in row] for i in low]
        for row in (vals[:n], vals[n:])
    ]
    assert np.array_equal(out, np.array(want))


def test_kernel_warmup_compiles_what_the_executor_uses(ctx, keys):
    """``compile_kernels`` leaves compiled signatures behind for the kernels of affine layers,
    squares, uneven sums, constants, rescales and relinearization."""
    from hecnn.ckks import kernels
    from hecnn.ckks.warmup import compile_kernels

    sk, pk, evk = keys
    compile_kernels(ctx, pk, sk, evk)
    for k in (
        kernels.square2_mod,
        kernels.square2_linear_mod,
        kernels.rescale_lift2,
        kernels.add_mod_rows,
        kernels.add_scalar_mod,
        kernels.add_c0_constants,
        kernels.reduce_digit_products,
        kernels.gather_centered,
        kernels.ntt_forward,
        kernels.ntt_inverse,
    ):
        assert k.signatures, k.py_func.__name__


def test_key_switch_digit_by_digit_equals_decompose_then_switch(ctx, keys, rng):
    """The relinearization's fused key switch (each digit extended and multiplied by the key at
    once) gives the residues of the hoisting path (all digits first, then the inner product)."""
    from hecnn.ckks.keyswitch import decompose, key_switch, switch_decomposed

    _sk, pk, evk = keys
    d = np.ascontiguousarray(encrypt(ctx, _x(rng, ctx=ctx), pk).square().data[:, 2])
    lvl = ctx.params.max_level
    fused = key_switch(ctx, d, lvl, evk.relin_key())
    staged = switch_decomposed(ctx, decompose(ctx, d, lvl), lvl, evk.relin_key())
    for a, b in zip(fused, staged, strict=True):
        assert np.array_equal(a, b)
    with pytest.raises(ParameterError, match="does not match level"):
        key_switch(ctx, d[:, :-1], lvl, evk.relin_key())
