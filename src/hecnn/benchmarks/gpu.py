"""``hecnn bench gpu``: the torch backend on a GPU against the numpy backend on the CPU.

Three parts, each printed as a markdown table and written to ``--out``:

1. **Bit identity** — the same ciphertexts through NTT, basis conversion, relinearization,
   rescale, rotation and a 576→64 linear layer on both backends; every residue must match.
2. **Kernels** — NTT per 2^14 limb (batch of 1024 limbs), key switch per ciphertext
   (relinearization of a batch), modular GEMM throughput (64×576 layer over 2·L·N residues),
   on the device and on the CPU (numpy, ``cpu_threads`` threads).
3. **Encrypted inference at full batch** — per model: total and amortized ms/image on the CPU
   (numpy) and on the device (torch), their ratio, peak device memory, whether the encrypted
   outputs of both backends are bit-identical, and the label agreement with the plaintext model.
   Bundled models run with their trained weights; the others with random weights whose
   BatchNorm statistics are calibrated on random inputs (timing only — agreement is still
   checked). A model whose ciphertexts cannot fit the device is reported as such, not run.

Each row runs in its own ``try``: a failure prints its error and the run goes on. ``quick``
uses a small insecure ring and one model, to check the script end to end in a minute or two —
its numbers are not for reporting.
"""

from __future__ import annotations

import math
import os
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

from hecnn.ckks.backend import to_backend, to_numpy
from hecnn.ckks.batch import CiphertextBatch
from hecnn.ckks.context import CkksContext
from hecnn.ckks.encryption import encrypt
from hecnn.ckks.keys import KeyGenerator
from hecnn.ckks.params import CkksParameters

BUNDLED = ("ishiyama_mnist_poly_element_kd", "ishiyama_mnist_swish4")
#: (model, activation, input shape) of the models without bundled weights
RANDOM_INIT = {
    "cryptonets_mnist": ("cryptonets_mnist", "square", (1, 28, 28)),
    "ishiyama_cifar": ("ishiyama_cifar", "poly_channel", (3, 32, 32)),
    "hemet_squeezenet": ("hemet_squeezenet", "poly_channel", (3, 32, 32)),
}
DEFAULT_MODELS = (*BUNDLED, *RANDOM_INIT)
#: models whose CPU baseline fits the benchmark's time (the CIFAR ones take hours on 2 threads)
CPU_BASELINE = (*BUNDLED, "cryptonets_mnist")
#: share of the device memory the ciphertexts of a plan may take (the rest: temporaries)
FIT_FRACTION = 0.8


@dataclass
class Report:
    """Markdown sections, kept in order; printed as they come and rewritten to ``out`` after
    every line, so a run stopped part-way (time limit, crash) still leaves what it measured."""

    out: Path | None = None
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)
        if self.out is not None:
            self.out.write_text("\n".join(self.lines) + "\n")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.add("| " + " | ".join(header) + " |")
        self.add("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
        for r in rows:
            self.add("| " + " | ".join(r) + " |")
        self.add()

    def fail(self, what: str, exc: BaseException) -> str:
        msg = f"{type(exc).__name__}: {exc}"
        self.failures.append(f"{what}: {msg}")
        print(f"!! {what} failed — {msg}", flush=True)
        traceback.print_exc()
        return f"failed ({type(exc).__name__})"


def _best(fn: Callable[[], object], sync: Callable[[], None], repeat: int) -> float:
    """Best wall time of ``repeat`` calls (after one warm-up call), device work included."""
    fn()
    sync()
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def _ratio(t_cpu: float | None, t_dev: float | None) -> str:
    """CPU time over device time, as a speed-up."""
    if t_cpu is None or not t_dev:
        return "—"
    r = t_cpu / t_dev
    return f"{r:.0f}×" if r >= 10 else f"{r:.2g}×"


def _environment(device: str) -> str:
    import torch

    gpu = "none"
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    return (
        f"{date.today().isoformat()} — {platform.machine()} host, {os.cpu_count()} cores; "
        f"device `{device}` ({gpu}); torch {torch.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}"
    )


# -- 1. bit identity --------------------------------------------------------------------------
def _kernel_setup(n: int, data_primes: int, insecure: bool):
    params = CkksParameters.create(
        depth=data_primes - 1, n=n, scale_bits=26, allow_insecure_test_only=insecure
    )
    ctx = CkksContext(params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    pk = kg.public_key(sk)
    evk = kg.evaluation_keys(sk, rotations=[1])
    return params, ctx, sk, pk, evk


def bit_identity(report: Report, setup, device: str) -> bool:
    params, ctx, _, pk, evk = setup
    tctx = CkksContext(params, backend="torch", device=device)
    ring = tctx.backend
    rng = np.random.default_rng(0)  # benchmark data, not key material
    a = encrypt(ctx, rng.uniform(-1, 1, (16, 64)), pk)
    b = to_backend(a, tctx)
    idx = a.idx
    w = rng.normal(size=(64, 576)) / 24
    wide = CiphertextBatch(ctx, np.ascontiguousarray(np.tile(a.data, (36, 1, 1, 1))), a.scale)

    def ntt_pair(inverse: bool = False):
        x = np.ascontiguousarray(a.data[:, 0])
        t = ring.to_device(x, ring_int64())
        if inverse:
            return ctx.intt(x.copy(), idx), ring.intt(t, idx)
        return ctx.ntt(x.copy(), idx), ring.ntt(t, idx)

    def convert_pair():
        src, dst = ctx.special_idx, idx
        x = np.ascontiguousarray(a.data[:, 0, : len(src)])
        return (
            ctx.base_convert(x, src, dst, exact=True),
            ring.base_convert(ring.to_device(x, ring_int64()), src, dst, exact=True),
        )

    checks: list[tuple[str, Callable[[], tuple]]] = [
        ("NTT (16 polys × all limbs)", ntt_pair),
        ("INTT", lambda: ntt_pair(inverse=True)),
        ("exact basis conversion P → Q", convert_pair),
        (
            "square + relinearize",
            lambda: (a.square().relinearize(evk), b.square().relinearize(evk)),
        ),
        ("rescale", lambda: (a.mul_scalar(0.5).rescale(), b.mul_scalar(0.5).rescale())),
        ("rotate by 1", lambda: (a.rotate(1, evk), b.rotate(1, evk))),
        (
            "linear 576→64",
            lambda: (wide.linear_combination(w), to_backend(wide, tctx).linear_combination(w)),
        ),
    ]
    rows, ok_all = [], True
    for name, fn in checks:
        try:
            want, got = fn()
            if isinstance(want, CiphertextBatch):
                want, got = want.data, got.data
            same = np.array_equal(np.asarray(want, dtype=np.int64), to_numpy(got).astype(np.int64))
            ok_all &= same
            rows.append([name, "**yes**" if same else "**NO**"])
        except Exception as exc:
            ok_all = False
            rows.append([name, report.fail(f"bit identity: {name}", exc)])
    report.add(f"### Bit identity, torch on `{device}` vs numpy (N={params.n}, {len(idx)} limbs)")
    report.add()
    report.table(["operation", "bit-identical"], rows)
    return ok_all


def ring_int64():
    import torch

    return torch.int64


# -- 2. kernels -------------------------------------------------------------------------------
def kernels(report: Report, setup, device: str, cpu_threads: int, quick: bool) -> bool:
    """Print the kernel table; True when the torch.compile'd NTT is bit-identical and at least
    20 % faster than the plain-torch one (then worth a model run)."""
    import torch

    params, ctx, _, pk, evk = setup
    n = params.n
    cpu = CkksContext(params, threads=cpu_threads)
    tctx = CkksContext(params, backend="torch", device=device)
    ring = tctx.backend
    rng = np.random.default_rng(1)
    base = encrypt(ctx, rng.uniform(-1, 1, (8, 64)), pk)
    limbs = base.level + 1
    repeat = 1 if quick else 3
    rows: list[list[str]] = []

    def timed(what: str, fn, sync, per: float) -> float | None:
        """Seconds per item, or None (reported) on failure."""
        try:
            return _best(fn, sync, repeat) / per
        except Exception as exc:
            report.fail(what, exc)
            return None

    def line(name: str, t_cpu, t_dev, scale: float, unit: str, note: str = "") -> None:
        ratio = _ratio(t_cpu, t_dev)
        fmt = lambda t: "—" if t is None else f"{t * scale:.3f} {unit}"  # noqa: E731
        rows.append([name, fmt(t_cpu), fmt(t_dev), ratio, note])

    def cpu_sync() -> None:
        return None

    # NTT: ~1024 limbs (polys × limbs) at N, reported per 2^14 limb
    polys = max(1, 1024 // limbs)
    x = np.ascontiguousarray(np.tile(base.data[:, 0], (polys // 8 + 1, 1, 1))[:polys])
    xt = ring.to_device(x, torch.int64)
    per_limb = polys * limbs * n / (1 << 14)  # in 2^14-coefficient limbs
    for name, f_cpu, f_dev in (
        ("NTT", lambda: cpu.ntt(x.copy(), base.idx), lambda: ring.ntt(xt.clone(), base.idx)),
        ("INTT", lambda: cpu.intt(x.copy(), base.idx), lambda: ring.intt(xt.clone(), base.idx)),
    ):
        with ring.threads_limited():
            t_dev = timed(f"{name} {device}", f_dev, ring.synchronize, per_limb)
        line(
            f"{name} per 2^14 limb (batch of {polys * limbs} limbs)",
            timed(f"{name} cpu", f_cpu, cpu_sync, per_limb),
            t_dev,
            1e6,
            "µs",
        )
    # the same NTT with its butterfly stages fused by torch.compile (Triton kernels on CUDA)
    fused_better = False
    if quick and device == "cpu":
        rows.append(["NTT, torch.compile'd stages", "—", "skipped", "—", "--quick on the CPU"])
    else:
        fctx = CkksContext(params, backend="torch", device=device)
        fring = fctx.backend
        fring.fused_ntt = True
        note = ""
        try:
            t0 = time.perf_counter()
            got = fring.ntt(xt.clone(), base.idx)
            fring.synchronize()
            same = np.array_equal(to_numpy(got), cpu.ntt(x.copy(), base.idx).astype(np.int64))
            note = f"compile {time.perf_counter() - t0:.0f} s; bit-identical: {'yes' if same else 'NO'}"
            if not same:
                report.failures.append("fused NTT not bit-identical")
            t_f = timed(
                "fused NTT", lambda: fring.ntt(xt.clone(), base.idx), fring.synchronize, per_limb
            )
            t_plain = _parse_us(rows[0][2])
            fused_better = (
                same and t_f is not None and t_plain is not None and t_f * 1e6 < 0.8 * t_plain
            )
            line("NTT per 2^14 limb, torch.compile'd stages", None, t_f, 1e6, "µs", note)
        except Exception as exc:
            rows.append(
                ["NTT, torch.compile'd stages", "—", report.fail("fused NTT", exc), "—", note]
            )
    # key switching: relinearization of a batch of three-component ciphertexts
    ks_batch = 64 if quick else 256
    sq = CiphertextBatch(
        cpu, np.ascontiguousarray(np.tile(base.data, (ks_batch // 8, 1, 1, 1))), base.scale
    ).square()
    sq_dev = to_backend(sq, tctx)
    cpu_sq = sq[: 16 if quick else 64]
    line(
        f"key switch (relinearize) per ciphertext, batch {ks_batch}",
        timed("relinearize cpu", lambda: cpu_sq.relinearize(evk), cpu_sync, len(cpu_sq)),
        timed(f"relinearize {device}", lambda: sq_dev.relinearize(evk), ring.synchronize, ks_batch),
        1e3,
        "ms",
        f"CPU timed on {len(cpu_sq)} ciphertexts",
    )
    two = to_backend(cpu_sq.relinearize(evk), tctx)
    two = CiphertextBatch.stack([two] * (ks_batch // len(two)))
    line(
        f"rotate by 1 per ciphertext, batch {ks_batch}",
        None,
        timed(f"rotate {device}", lambda: two.rotate(1, evk), ring.synchronize, len(two)),
        1e3,
        "ms",
    )
    # modular GEMM: a 64×576 layer over 2 components × L limbs × N residues
    k_in, k_out = 576, 64
    wide = CiphertextBatch(
        cpu, np.ascontiguousarray(np.tile(base.data, (k_in // 8, 1, 1, 1))), base.scale
    )
    wide_dev = to_backend(wide, tctx)
    w = rng.normal(size=(k_out, k_in)) / 24
    macs = k_out * k_in * 2 * limbs * n
    t_cpu = timed("modular GEMM cpu", lambda: wide.linear_combination(w), cpu_sync, macs)
    t_dev = timed(
        f"modular GEMM {device}", lambda: wide_dev.linear_combination(w), ring.synchronize, macs
    )
    rows.append(
        [
            f"modular GEMM {k_out}×{k_in} over 2·{limbs}·2^{int(math.log2(n))} residues",
            "—" if t_cpu is None else f"{1e-9 / t_cpu:.1f} G MAC/s",
            "—" if t_dev is None else f"{1e-12 / t_dev:.3f} T MAC/s",
            _ratio(t_cpu, t_dev),
            "exact modular multiply-accumulates per second",
        ]
    )
    report.add(
        f"### Kernels, numpy on {cpu_threads} CPU threads vs torch on `{device}` "
        f"(N={n}, {limbs} limbs, {len(params.special_moduli)} special primes)"
    )
    report.add()
    report.table(["kernel", "CPU", device, "speed-up", "note"], rows)
    return fused_better


def _parse_us(cell: str) -> float | None:
    try:
        return float(cell.split()[0])
    except (ValueError, IndexError):
        return None


# -- 3. models --------------------------------------------------------------------------------
def _load(name: str, quick: bool):
    """(model, images, calibration images, labels or None)."""
    import torch

    from hecnn.nn import bundled

    if name in BUNDLED:
        images, labels = bundled.sample_images()
        x = np.asarray(bundled.to_float(images), dtype=np.float32)
        return bundled.load_model(name), x, x[:256], labels
    if name not in RANDOM_INIT:
        raise ValueError(f"unknown model {name!r}; choose from {DEFAULT_MODELS}")
    from hecnn.nn.models import build_model

    arch, act, shape = RANDOM_INIT[name]
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model(arch, act)
    x = torch.rand((512 if not quick else 128, *shape), generator=gen)
    model.train()
    with torch.no_grad():  # calibrate the BatchNorm statistics on the inputs
        for _ in range(3):
            model(x)
    model.eval()
    xs = x.numpy().astype(np.float32)
    return model, xs, xs[:256], None


def _device_memory(device: str) -> int | None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    return None


def run_model(
    report: Report,
    name: str,
    device: str,
    cpu_threads: int,
    cpu_baseline: bool,
    quick: bool,
    fused: bool = False,
) -> list[str]:
    import torch

    from hecnn.compile import compile_model
    from hecnn.runtime import decrypt_outputs, encrypt_images, run

    model, x_all, calib, _ = _load(name, quick)
    ring_n = 1 << 12 if quick else None
    probe = compile_model(
        model, x_all.shape[1:], batch=1, calib=calib, insecure_ring_for_tests=ring_n
    )
    batch = probe.params.slots
    plan = compile_model(
        model, x_all.shape[1:], batch=batch, calib=calib, insecure_ring_for_tests=ring_n
    )
    est = plan.memory_estimate()
    dev_mem = _device_memory(device)
    where = f"N=2^{int(math.log2(plan.params.n))}, {plan.params.max_level + 1} limbs"
    if dev_mem is not None and est > FIT_FRACTION * dev_mem:
        why = (
            f"not run: {est / 2**30:.0f} GiB of ciphertexts at peak, device holds "
            f"{dev_mem / 2**30:.0f} GiB (needs host streaming of layers)"
        )
        print(f"-- {name}: {why}", flush=True)
        return [name, f"{batch}", where, "—", "—", "—", "—", "—", "—", "—", why]
    x = np.concatenate([x_all] * (-(-batch // len(x_all))))[:batch]
    t0 = time.perf_counter()
    ctx = CkksContext(plan.params)  # client side (untimed): all cores
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    pk = kg.public_key(sk)
    evk = kg.evaluation_keys(sk)
    ct = encrypt_images(plan, ctx, pk, x)
    t_client = time.perf_counter() - t0
    print(f"-- {name}: {plan.params.describe()}; keygen+encrypt {t_client:.1f} s", flush=True)
    with torch.no_grad():
        ref = model(torch.as_tensor(x)).double().numpy()

    tctx = CkksContext(plan.params, backend="torch", device=device)
    ring = tctx.backend
    ring.fused_ntt = fused
    if fused:
        name = f"{name} (fused NTT)"
        for rows, limbs in ((1, 1), (2, 1), (1, 2), (2, 2)):  # compile outside the timing
            idx = tctx.data_idx(limbs - 1)
            z = torch.zeros((rows, limbs, tctx.n), dtype=torch.int64, device=ring.device)
            ring.intt(ring.ntt(z, idx), idx)
    ct_dev = to_backend(ct, tctx)
    evk_dev = to_backend(evk, tctx)
    ring.synchronize()
    ring.reset_peak()
    t0 = time.perf_counter()
    out_dev = run(plan, ct_dev, evk_dev)
    ring.synchronize()
    t_dev = time.perf_counter() - t0
    peak = ring.peak_bytes()
    logits = decrypt_outputs(tctx, sk, out_dev, batch)
    agree = 100.0 * float(np.mean(logits.argmax(1) == ref.argmax(1)))
    err = float(np.abs(logits - ref).max())
    print(f"-- {name}: {device} {t_dev:.2f} s, agreement {agree:.2f} %", flush=True)
    del ct_dev

    t_cpu = None
    identical = "—"
    if cpu_baseline and name not in CPU_BASELINE:
        identical = "— (no CPU run: hours on 2 threads)"
    elif cpu_baseline:
        try:
            ct_cpu = CiphertextBatch(
                CkksContext(plan.params, threads=cpu_threads), ct.data, ct.scale
            )
            t0 = time.perf_counter()
            out_cpu = run(plan, ct_cpu, evk)
            t_cpu = time.perf_counter() - t0
            same = np.array_equal(out_cpu.data, to_numpy(out_dev.data))
            identical = "**yes**" if same else "**NO**"
            if not same:
                report.failures.append(f"{name}: encrypted outputs differ between backends")
            print(f"-- {name}: CPU {t_cpu:.2f} s, bit-identical {same}", flush=True)
        except Exception as exc:
            identical = report.fail(f"{name} CPU baseline", exc)
    del out_dev
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return [
        name,
        f"{batch}",
        where,
        "—" if t_cpu is None else f"{t_cpu:.2f} s",
        "—" if t_cpu is None else f"{1e3 * t_cpu / batch:.3f}",
        f"{t_dev:.2f} s",
        f"{1e3 * t_dev / batch:.4f}",
        _ratio(t_cpu, t_dev),
        "—" if peak is None else f"{peak / 2**30:.1f} GiB",
        identical,
        f"{agree:.2f} % (max logit err {err:.1e})",
    ]


MODEL_HEADER = [
    "model",
    "batch",
    "ring",
    "CPU total",
    "CPU ms/image",
    "device total",
    "device ms/image",
    "speed-up",
    "peak GPU memory",
    "bit-identical",
    "label agreement vs plaintext",
]


def models(
    report: Report,
    names: tuple[str, ...],
    device: str,
    cpu_threads: int,
    cpu_baseline: bool,
    quick: bool,
    fused_too: bool = False,
    deadline: float = math.inf,
) -> None:
    """One table row per model, written as soon as it is measured."""
    import torch

    report.add(
        f"### Encrypted inference at full batch: numpy on {cpu_threads} CPU threads vs torch "
        f"on `{device}`"
    )
    report.add()
    report.add("| " + " | ".join(MODEL_HEADER) + " |")
    report.add("|" + "|".join("---" if i == 0 else "---:" for i in range(len(MODEL_HEADER))) + "|")
    runs = [(name, False) for name in names]
    if fused_too and names:  # the first model once more, NTT stages fused
        runs.insert(1, (names[0], True))
    for name, fused in runs:
        label = f"{name} (fused NTT)" if fused else name
        if time.perf_counter() > deadline:
            row = [label, *["—"] * 9, "not run: benchmark time limit reached"]
        else:
            try:
                row = run_model(
                    report, name, device, cpu_threads, cpu_baseline and not fused, quick, fused
                )
            except Exception as exc:
                row = [label, *["—"] * 9, report.fail(f"model {label}", exc)]
            finally:
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
        report.add("| " + " | ".join(row) + " |")
    report.add()


def main(
    *,
    device: str = "cuda",
    quick: bool = False,
    out: Path | None = None,
    model_names: tuple[str, ...] | None = None,
    cpu_threads: int = 2,
    cpu_baseline: bool = True,
    skip_kernels: bool = False,
    time_limit_s: float = 480.0,
) -> int:
    """Run all parts; returns the number of failures (0: every check passed).

    No model run starts after ``time_limit_s`` (the rest are listed as not run).
    """
    report = Report(out=out)
    names = model_names or (("ishiyama_mnist_poly_element_kd",) if quick else DEFAULT_MODELS)
    t_start = time.perf_counter()
    fused_too = False
    report.add(f"## GPU benchmark (`hecnn bench gpu`{' --quick' if quick else ''})")
    report.add()
    try:
        report.add(_environment(device))
    except Exception as exc:
        report.add(report.fail("environment", exc))
    if quick:
        report.add()
        report.add("**--quick: small insecure ring (N=2^12), figures not for reporting.**")
    report.add()
    try:
        setup = _kernel_setup(1 << 12 if quick else 1 << 14, 5 if quick else 10, quick)
        if not bit_identity(report, setup, device):
            report.failures.append("bit identity")
        if not skip_kernels:
            fused_too = kernels(report, setup, device, cpu_threads, quick)
    except Exception as exc:
        report.add(report.fail("kernel setup", exc))
    models(
        report, names, device, cpu_threads, cpu_baseline, quick, fused_too, t_start + time_limit_s
    )
    report.add(f"Total benchmark time {time.perf_counter() - t_start:.0f} s.")
    if report.failures:
        report.add()
        report.add("Failures: " + "; ".join(report.failures))
    if out is not None:
        print(f"written to {out}")
    print(f"gpu_bench_failures={len(report.failures)}")
    return len(report.failures)
