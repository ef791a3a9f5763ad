"""NTT-friendly primes and roots of unity.

A negacyclic NTT of length N modulo q needs a primitive 2N-th root of unity ψ, which exists iff
q ≡ 1 (mod 2N). All primes are below 2^31 so that a product of two residues fits in a signed
64-bit integer (< 2^62) and every modular operation in numpy/numba/torch is exact.
"""

from __future__ import annotations

from hecnn.errors import ParameterError

MAX_PRIME_BITS = 31


def is_prime(n: int) -> bool:
    """Deterministic Miller–Rabin for n < 3.3·10^24 (bases are the first 13 primes)."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for p in small:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def ntt_primes(bits: int, n: int, count: int, *, exclude: set[int] | None = None) -> list[int]:
    """``count`` distinct primes q ≡ 1 (mod 2n) with bit length ``bits``, closest to 2^bits first.

    Searching downward from 2^bits keeps each prime close to the scale 2^bits, so a rescale by it
    changes the scale by a factor within (1 − 2^{-bits+log2(2n)}) of 2^bits.
    """
    if not 2 <= bits <= MAX_PRIME_BITS:
        raise ParameterError(f"prime size {bits} bits outside [2, {MAX_PRIME_BITS}]")
    m = 2 * n
    exclude = exclude or set()
    out: list[int] = []
    q = (1 << bits) + 1 - m  # largest candidate ≡ 1 mod m below 2^bits
    while len(out) < count and q > (1 << (bits - 1)):
        if q not in exclude and is_prime(q):
            out.append(q)
        q -= m
    if len(out) < count:
        raise ParameterError(f"only {len(out)} primes of {bits} bits are ≡ 1 mod 2N={m}")
    return out


def _factorize(n: int) -> list[int]:
    factors, d = [], 2
    while d * d <= n:
        if n % d == 0:
            factors.append(d)
            while n % d == 0:
                n //= d
        d += 1
    if n > 1:
        factors.append(n)
    return factors


def primitive_root_of_unity(order: int, q: int) -> int:
    """The smallest primitive ``order``-th root of unity mod prime q (order | q − 1)."""
    if (q - 1) % order:
        raise ParameterError(f"{order} does not divide q-1 for q={q}")
    phi_factors = _factorize(q - 1)
    # find a generator g of Z_q^*, then g^((q-1)/order) has exact order `order`
    for g in range(2, q):
        if all(pow(g, (q - 1) // f, q) != 1 for f in phi_factors):
            root = pow(g, (q - 1) // order, q)
            break
    else:  # pragma: no cover - impossible for a prime q
        raise ParameterError(f"no generator found mod {q}")
    # the smallest primitive root (the odd powers of `root`, order a power of two): deterministic
    if order & (order - 1):
        return root
    best, x, step = root, root, root * root % q
    for _ in range(order // 2 - 1):
        x = x * step % q
        best = min(best, x)
    return best
