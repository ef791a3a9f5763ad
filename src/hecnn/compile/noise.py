"""What CKKS precision does to a plan, predicted in float64 before anything is encrypted.

:func:`simulate_ckks` runs the plan with its encodings rounded and Gaussian noise where
encryption and rescales add it; :func:`predicted_agreement` turns the simulated logit errors
into the expected share of images whose label survives encryption. The compiler uses both to
refuse a scale that is too small for the network (``compile_model(min_agreement=…)``);
``hecnn check`` prints the simulation beside the encrypted run.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

from hecnn.compile.chebyshev import evaluate as chebyshev_values
from hecnn.compile.ir import (
    AddNode,
    AffineNode,
    ConcatNode,
    InputNode,
    MulNode,
    Plan,
    PolyNode,
)


def simulate_ckks(plan: Plan, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """The plan in float64 with CKKS precision simulated.

    Simulated: inputs, weights, biases and polynomial coefficients rounded to their fixed-point
    encoding at the scale Δ, and, as Gaussian slot errors, the rounding noise of encryption
    (public-key encryption ends with a division by the special primes, so its noise is that
    rounding) and of every rescale. A rescale rounds each of the k components c_i, and
    decryption multiplies c_i's rounding by s^i (ternary s: coefficient variance
    (2N/3)^i / N), so per slot σ² ≈ N·Σ_{i<k} (2N/3)^i / 12 / Δ² — which is why rescaling a
    3-component product costs ~√(2N/3) times more precision than a relinearized one. Not
    simulated: key-switching noise (divided by the special primes) and the exact per-term
    encoding scales (within a factor 2 of Δ); the simulation is an estimate, the encrypted run
    is the measurement.
    """
    rng = np.random.default_rng(seed)
    n, delta = plan.params.n, float(plan.params.scale)
    q = 1.0 / delta

    deferred_w = 2.0 ** math.floor(2 * math.log2(delta) / 3)

    def rnd(a: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(a, dtype=np.float64) * delta) * q

    def sd_rescale(components: int) -> float:
        return math.sqrt(n * sum((2 * n / 3) ** i for i in range(components)) / 12) / delta

    def noisy(v: np.ndarray, sd: float) -> np.ndarray:
        return v + rng.normal(0.0, sd, v.shape)

    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1).T
    vals: dict[str, np.ndarray] = {}
    for nd in plan.nodes:
        if isinstance(nd, InputNode):
            vals[nd.name] = noisy(rnd(x), sd_rescale(2))
        elif isinstance(nd, AffineNode):
            v = vals[nd.inputs[0]]
            out = np.zeros((nd.weights.out_features, v.shape[1]))
            # a head deferring its rescale, and the layer dividing by its three primes, encode
            # their weights at ~Δ^(2/3) (see executor.deferred_head_weight_scale)
            w_scale = deferred_w if nd.defer_rescale or nd.owed_rescales == 2 else delta
            for b in nd.weights.blocks:
                out[b.out_idx] += np.round(b.weights * w_scale) / w_scale @ v[b.in_idx]
            out += rnd(nd.bias)[:, None]
            rescaled = nd.rescale and not nd.defer_rescale
            vals[nd.name] = noisy(out, sd_rescale(nd.components)) if rescaled else out
        elif isinstance(nd, PolyNode) and nd.chebyshev:
            # every T_k is a product tree rescaled at each step; the terms' noise adds up
            v = vals[nd.inputs[0]] / nd.radius
            out = chebyshev_values(rnd(nd.coeffs), v)
            vals[nd.name] = noisy(out, sd_rescale(2) * math.sqrt(max(nd.products, 1)))
        elif isinstance(nd, PolyNode):
            # each power x^k is a product tree of depth ceil(log2 k), every product rescaled,
            # then Σ c_k x^k (one more rescale): the power's noise is weighted by its c_k
            v = vals[nd.inputs[0]]
            coeffs = rnd(nd.coeffs)
            acc = np.repeat(coeffs[0][:, None], v.shape[1], axis=1)
            sd = sd_rescale(max(nd.components, 2)) if nd.rescale else 0.0
            for k in range(1, len(coeffs)):
                power = v**k
                if k > 1 and sd:
                    power = noisy(power, sd * math.sqrt(math.ceil(math.log2(k))))
                acc = acc + coeffs[k][:, None] * power
            # a deferred last rescale rounds after the consumer's sums (its noise is there)
            vals[nd.name] = noisy(acc, sd) if sd and not nd.defer_rescale else acc
        elif isinstance(nd, AddNode):
            vals[nd.name] = vals[nd.inputs[0]] + vals[nd.inputs[1]]
        elif isinstance(nd, MulNode):
            out = vals[nd.inputs[0]] * vals[nd.inputs[1]]
            vals[nd.name] = noisy(out, sd_rescale(nd.components)) if nd.rescale else out
        elif isinstance(nd, ConcatNode):
            vals[nd.name] = np.concatenate([vals[i] for i in nd.inputs])
    return vals[plan.output].T


def predicted_agreement(plan: Plan, images: np.ndarray, reference: np.ndarray) -> float:
    """Expected label agreement (per cent) of the encrypted plan with the plaintext logits
    ``reference`` on ``images``, from one seeded :func:`simulate_ckks` run.

    A few hundred calibration images cannot show a 0.1 % flip rate directly, so the rate is
    modelled: the error of the top-1 − top-2 logit difference is taken as Gaussian with the
    RMS σ the simulation shows over all images, and image i flips with probability
    Φ(−m_i/σ), m_i its plaintext margin. At scale 2^26 the trained ishiyama_cifar predicts
    99.4 % (99.7 % measured encrypted over 8,192 images); σ halves with each bit of scale.
    """
    return margin_agreement(reference, simulate_ckks(plan, images) - reference)


def margin_agreement(reference: np.ndarray, error: np.ndarray, shrink: float = 1.0) -> float:
    """The agreement model of :func:`predicted_agreement` for logit errors ``error`` scaled
    by ``shrink`` (the effect of a larger scale, without simulating it again)."""
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[1] < 2:
        return 100.0
    rows = np.arange(len(ref))
    order = np.argsort(ref, axis=1)
    top1, top2 = order[:, -1], order[:, -2]
    margin = ref[rows, top1] - ref[rows, top2]
    sigma = float(np.sqrt(np.mean((error[rows, top1] - error[rows, top2]) ** 2))) * shrink
    if sigma == 0.0:
        return 100.0
    return float(100.0 * (1.0 - norm.sf(margin / sigma).mean()))
