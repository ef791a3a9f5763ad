"""An op-count estimate of what Microsoft SEAL would take to run a plan.

SEAL (seal-python, one thread) is driven the way a user drives it: one library call per
ciphertext operation. Running a whole CIFAR plan op by op in SEAL would take hours, so its
time is *estimated*: each operation is timed on a few ciphertexts at the plan's own parameters
(same N, same primes) at every level the plan uses, and multiplied by how many times the plan
performs it (:func:`plan_op_counts`). Costs of ciphertexts with more than two components are
scaled from the measured two-component ones (a multiply-accumulate or rescale costs in
proportion to the components, a product in proportion to the component pairs). The estimate
leaves out encoding the weights as plaintexts (SEAL would encode one per weight; we do not
count it), so it favours SEAL.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from hecnn.benchmarks.isolated import in_own_process
from hecnn.ckks.params import CkksParameters
from hecnn.compile.chebyshev import chebyshev_schedule, t_depth, t_factors
from hecnn.compile.ir import AddNode, AffineNode, Plan, PolyNode
from hecnn.compile.polyeval import feeding_powers, power_factors, schedule

#: operations counted and timed: a ciphertext-by-scalar multiply-accumulate
#: (multiply_plain + add_inplace), an addition, a ciphertext-by-scalar product, a square, a
#: product of two ciphertexts, a relinearization, a rescale
OPS = ("mac", "add", "mul_scalar", "square", "mul", "relin", "rescale")


class SealSession:
    """SEAL objects on our primes, ciphertexts at our top level.

    SEAL takes the last prime of its chain as its (single) special prime, so it gets our data
    primes followed by our special primes; fresh SEAL ciphertexts are then switched down to our
    top data level, so both libraries operate on ciphertexts modulo the very same primes.
    """

    def __init__(self, params: CkksParameters) -> None:
        import seal

        self.seal = seal
        parms = seal.EncryptionParameters(seal.scheme_type.ckks)
        parms.set_poly_modulus_degree(params.n)
        parms.set_coeff_modulus([seal.Modulus(q) for q in params.moduli + params.special_moduli])
        sec = seal.sec_level_type.none if params.insecure_test_only else seal.sec_level_type.tc128
        self.context = seal.SEALContext(parms, True, sec)
        kg = seal.KeyGenerator(self.context)
        self.sk = kg.secret_key()
        self.pk = kg.create_public_key()
        self.rk = kg.create_relin_keys()
        self.gk = seal.GaloisKeys()
        kg.create_galois_keys([1], self.gk)  # seal-python takes rotation steps here
        self.encoder = seal.CKKSEncoder(self.context)
        self.encryptor = seal.Encryptor(self.context, self.pk)
        self.decryptor = seal.Decryptor(self.context, self.sk)
        self.evaluator = seal.Evaluator(self.context)
        self.scale = params.scale
        self.last_prime = float(params.moduli[-1])
        self.extra_levels = len(params.special_moduli) - 1
        self.max_level = params.max_level

    def encrypt(self, values: np.ndarray, level: int | None = None):
        """Encrypt at our top data level, or lower (``level``) by switching the modulus down."""
        ct = self.encryptor.encrypt(self.encoder.encode(values.tolist(), self.scale))
        drops = self.extra_levels + (0 if level is None else self.max_level - level)
        for _ in range(drops):
            self.evaluator.mod_switch_to_next_inplace(ct)
        return ct

    def scalar(self, value: float, ct):
        pt = self.encoder.encode(value, self.last_prime)
        self.evaluator.mod_switch_to_inplace(pt, ct.parms_id())
        return pt

    def decrypt(self, ct, count: int) -> np.ndarray:
        return np.array(self.encoder.decode(self.decryptor.decrypt(ct)))[:count]


def seal_op_seconds(
    params: CkksParameters, levels: list[int], reps: int = 4, seed: int = 0
) -> dict[tuple[str, int], float]:
    """SEAL's seconds per operation (:data:`OPS`) on two-component ciphertexts at each level.

    Mean over ``reps`` operations on distinct ciphertexts, after one untimed operation of each
    kind: the first allocation of each size pages in SEAL's memory pool, a one-off cost a long
    run never pays again (in a fresh process it made the first square ~5× the later ones). A
    rescale needs a level below, so at level 0 it is not timed (the plan never rescales there).
    """
    s = SealSession(params)
    rng = np.random.default_rng(seed)  # benchmark data, not key material
    out: dict[tuple[str, int], float] = {}
    for lvl in sorted(set(levels)):
        cts = [s.encrypt(rng.uniform(-1, 1, 64), lvl) for _ in range(reps + 1)]  # +1: warm-up
        pts = [s.scalar(float(rng.uniform(-1, 1)), c) for c in cts]
        for op, sec in _time_level(s, cts, pts, lvl > 0).items():
            out[(op, lvl)] = sec
    return out


def _time_level(s: SealSession, cts: list, pts: list, can_rescale: bool) -> dict[str, float]:
    ev, reps = s.evaluator, len(cts) - 1  # the last ciphertext is the warm-up's

    def timed(fn) -> float:
        fn(reps)  # untimed: pages in the pool's buffers for this operation
        t0 = time.perf_counter()
        for i in range(reps):
            fn(i)
        return (time.perf_counter() - t0) / reps

    t_mulp = timed(lambda i: ev.multiply_plain(cts[i], pts[i]))
    acc = s.seal.Ciphertext(cts[0])  # same scale as the others
    t_add = timed(lambda i: ev.add_inplace(acc, cts[i]))
    # results are dropped or overwritten in place, so the pool reuses its buffers: a result
    # kept in fresh memory pays its page faults (~10 µs each here, 3,300 for one 13 MB
    # ciphertext), which a long run amortizes — the figures below favour SEAL
    t_sq = timed(lambda i: ev.square(cts[i]))
    t_mul = timed(lambda i: ev.multiply(cts[i], cts[(i + 1) % reps]))
    sq = [ev.square(c) for c in cts]
    t_relin = timed(lambda i: ev.relinearize_inplace(sq[i], s.rk))
    t_rescale = timed(lambda i: ev.rescale_to_next_inplace(sq[i])) if can_rescale else 0.0
    return {
        "mac": t_mulp + t_add,
        "add": t_add,
        "mul_scalar": t_mulp,
        "square": t_sq,
        "mul": t_mul,
        "relin": t_relin,
        "rescale": t_rescale,
    }


@dataclass
class _Counter:
    counts: Counter

    def add(self, op: str, level: int, times: float) -> None:
        self.counts[(op, max(level, 0))] += times


def _product_weight(ca: int, cb: int) -> float:
    """Cost of a (ca ⊗ cb)-component product relative to 2 ⊗ 2 (component pairs)."""
    return ca * cb / 4


def _square_weight(c: int) -> float:
    """Cost of squaring a c-component ciphertext relative to c = 2 (distinct pairs)."""
    return c * (c + 1) / 2 / 3


def node_op_counts(plan: Plan) -> dict[str, Counter]:
    """Per node: how many SEAL-equivalent operations (op, level) it performs, each weighted by
    its components relative to two (a 3-component multiply-accumulate counts 1.5)."""
    comps = {n.name: n.components for n in plan.nodes}
    out: dict[str, Counter] = {}
    for n in plan.nodes:
        c = _Counter(Counter())
        cin = max((comps[i] for i in n.inputs), default=2)
        if isinstance(n, AffineNode):
            lvl = n.level_in
            c.add("mac", lvl, n.macs * cin / 2)
            if n.bias is not None:
                c.add("add", lvl, n.features / 2)  # a constant touches c0 only
            # as ``relinearize_then_rescale``: the relinearization before the rescales, or
            # after the first two of three
            rescales = n.depth if n.rescale else 0
            relin_at = n.rescales_before_relin
            cout = cin
            for k in range(max(rescales, relin_at + 1)):
                if k == relin_at and n.relin_after and cin > 2:
                    c.add("relin", lvl - k, n.features)
                    cout = 2
                if k < rescales:  # its own rescale and the input's deferred ones
                    c.add("rescale", lvl - k, n.features * cout / 2)
        elif isinstance(n, PolyNode):
            _poly_ops(c, n, cin)
        elif isinstance(n, AddNode):
            c.add("add", n.level_out, n.features * n.components / 2)
        out[n.name] = c.counts
    return out


def plan_op_counts(plan: Plan) -> Counter:
    """The whole plan's operation counts (see :func:`node_op_counts`)."""
    total: Counter = Counter()
    for counts in node_op_counts(plan).values():
        total.update(counts)
    return total


def _chebyshev_ops(c: _Counter, n: PolyNode, cin: int) -> None:
    """Mirror of :mod:`hecnn.runtime.chebyshev` (per feature, times the features)."""
    f, top = n.features, n.level_in
    if cin > 2:
        c.add("relin", top, f)
    sch = chebyshev_schedule(n.coeffs)
    for k in sch.powers:  # T_k = 2·T_a·T_b − T_c
        a, b, cc = t_factors(k)
        at = top - t_depth(a)
        c.add("square" if a == b else "mul", at, f)
        c.add("add", at, f * 1.5)
        c.add("relin", at, f)
        c.add("rescale", at, f)
        if cc:
            c.add("mul_scalar", top - t_depth(cc), f)
            c.add("rescale", top - t_depth(cc), f)
            c.add("add", at - 1, f)

    def walk(node, level: int) -> None:
        if node is None:
            return
        if not node.giant:
            lvls = {top - t_depth(k) for k in node.terms}
            for k in node.terms:
                c.add("mul_scalar", top - t_depth(k), f)
            for lv in lvls:
                c.add("rescale", lv, f)
            c.add("add", level, f * max(len(node.terms) - 1, 0))
            return
        if node.quotient is None:
            c.add("mul_scalar", top - t_depth(node.giant), f)
            c.add("rescale", top - t_depth(node.giant), f)
        else:
            walk(node.quotient, level + 1)
            c.add("mul", level + 1, f)
            c.add("relin", level + 1, f)
            c.add("rescale", level + 1, f)
        walk(node.remainder, level)
        c.add("add", level, f)

    walk(sch.tree, top - sch.depth)


def _poly_ops(c: _Counter, n: PolyNode, cin: int) -> None:
    """Mirror of the executor's polynomial evaluation (per feature, times the features)."""
    if n.chebyshev:
        _chebyshev_ops(c, n, cin)
        return
    f = n.features
    lvl = n.level_in
    sch = schedule(n.coeffs, n.fold_leading)
    if n.rescale and cin > 2:
        c.add("relin", lvl, f)
        cin = 2
    if not sch.terms:
        c.add("mul_scalar", lvl, f)
        return
    if not n.rescale:  # the rescale-free tail: plain products, scalars on each term
        cmp = {1: cin}
        for k in sch.powers:
            if k > 1:
                a, b = power_factors(k)
                if a == b:
                    c.add("square", lvl, f * _square_weight(cmp[a]))
                else:
                    c.add("mul", lvl, f * _product_weight(cmp[a], cmp[b]))
                cmp[k] = cmp[a] + cmp[b] - 1
        for t in sch.terms[1 if n.fold_leading else 0 :]:
            c.add("mul_scalar", lvl, f * cmp[t.power] / 2)
        c.add("add", lvl, f * (len(sch.terms) - 1) * n.components / 2)
        return
    if n.fold_leading and sch.depth == 1 and max(sch.powers) == 2:
        c.add("square", lvl, f)
        c.add("mul_scalar", lvl, f * (len(sch.terms) - 1))
        c.add("add", lvl, f * (len(sch.terms) - 1) * 1.5)
        if not n.defer_rescale:  # else its affine consumers rescale (after their sums)
            c.add("rescale", lvl, f * 1.5)
        return
    feeding = feeding_powers(sch)
    lv, cmp = {1: lvl}, {1: 2}
    for k in sch.powers:
        if k == 1:
            continue
        a, b = power_factors(k)
        at = min(lv[a], lv[b])
        if a == b:
            c.add("square", at, f * _square_weight(cmp[a]))
        else:
            c.add("mul", at, f * _product_weight(cmp[a], cmp[b]))
        k_comps = cmp[a] + cmp[b] - 1
        if k in feeding:
            c.add("relin", at, f)
            k_comps = 2
        c.add("rescale", at, f * k_comps / 2)
        lv[k], cmp[k] = at - 1, k_comps
    rest = sch.terms[1:] if n.fold_leading else sch.terms
    for t in rest:
        p = t.split or t.power
        c.add("mul_scalar", lv[p], f * cmp[p] / 2)
        c.add("rescale", lv[p], f * cmp[p] / 2)
        if t.split:
            partner = t.power - t.split
            at = min(lv[p] - 1, lv[partner])
            c.add("mul", at, f * _product_weight(cmp[p], cmp[partner]))
            c.add("rescale", at, f * (cmp[p] + cmp[partner] - 1) / 2)
    c.add("add", n.level_out, f * max(len(rest) - (0 if n.fold_leading else 1), 0) * 1.5)


@dataclass
class SealEstimate:
    """Estimated SEAL seconds for a plan: in all, per operation kind, per node."""

    seconds: float
    by_kind: dict[str, float]
    by_node: dict[str, float]
    per_op: dict[tuple[str, int], float]


def seal_estimate(plan: Plan, reps: int = 4, *, own_process: bool = True) -> SealEstimate:
    """Time SEAL's operations at the plan's parameters and levels; weight them by the plan's
    operation counts.

    ``own_process``: time SEAL in a short-lived child process. SEAL's memory pool keeps what
    it allocated (keys of ~0.2 GB each at N = 2^15, its ciphertexts) until the process ends,
    which would otherwise sit beside the benchmark's own encrypted run and count in its peak
    resident set."""
    per_node = node_op_counts(plan)
    levels = sorted({lvl for counts in per_node.values() for _, lvl in counts})
    args = (plan.params, levels or [plan.params.max_level], reps)
    per_op = in_own_process(seal_op_seconds, *args) if own_process else seal_op_seconds(*args)
    by_kind: dict[str, float] = dict.fromkeys(OPS, 0.0)
    by_node: dict[str, float] = {}
    for name, counts in per_node.items():
        by_node[name] = 0.0
        for (op, lvl), times in counts.items():
            by_kind[op] += times * per_op[(op, lvl)]
            by_node[name] += times * per_op[(op, lvl)]
    return SealEstimate(sum(by_kind.values()), by_kind, by_node, per_op)
