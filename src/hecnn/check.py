"""Bring your own model: will it run under encryption, how accurately, how fast?

:func:`load` reads a user's model (an ``.onnx`` file or ``path/to/file.py:Factory``),
:func:`prepare` replaces what CKKS cannot evaluate by polynomials calibrated on the user's
images (composite minimax for ReLU and max-pool via :func:`hecnn.approximate`, Chebyshev
least-squares fits for SiLU/GELU/Sigmoid via :mod:`hecnn.approx.smooth`) and measures each
approximation's error on those images, and :func:`check` runs the three modes —

* ``clear``: the original model (float32 PyTorch);
* ``simulate``: the compiled plan in float64 with CKKS precision simulated
  (:func:`simulate_ckks`): the polynomial approximations, BN folding, inputs / weights /
  coefficients rounded to their fixed-point encodings, and Gaussian noise of the size of fresh
  encryption and of each rescale's rounding — seconds, no keys;
* ``encrypted``: keygen, encryption, the server run, decryption —

and compares both with ``clear`` (label agreement and max logit error). ``hecnn check`` is
the command-line face of :func:`check`.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.nn import functional as F  # noqa: N812 - torch convention

from hecnn.compile.noise import simulate_ckks
from hecnn.errors import HecnnError, ShapeError

__all__ = [
    "Approximation",
    "CheckResult",
    "check",
    "load",
    "load_images",
    "load_onnx",
    "prepare",
    "simulate_ckks",
]

# --------------------------------------------------------------------------- loading


def load(spec: str | Path, weights: str | Path | None = None) -> nn.Module:
    """A user model: ``model.onnx`` or ``path/to/file.py:Factory`` (a callable returning the
    module; ``weights`` a ``state_dict`` file for it). Returned in eval mode."""
    spec = str(spec)
    if spec.lower().endswith(".onnx"):
        if weights is not None:
            raise HecnnError("--weights is for .py:Factory models; an .onnx file has its weights")
        return load_onnx(spec)
    path, sep, factory = spec.rpartition(":")
    if not sep or not path.endswith(".py") or not factory:
        raise HecnnError(f"model {spec!r}: give an .onnx file or path/to/file.py:Factory")
    if not Path(path).is_file():
        raise HecnnError(f"model file {path!r} does not exist")
    mod_name = f"hecnn_user_model_{abs(hash(Path(path).resolve()))}"
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    if module_spec is None or module_spec.loader is None:
        raise HecnnError(f"cannot import {path!r}")
    mod = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = mod  # dataclasses / pickling look modules up by name
    module_spec.loader.exec_module(mod)
    fn = getattr(mod, factory, None)
    if not callable(fn):
        raise HecnnError(f"{path!r} has no callable {factory!r}")
    model = fn()
    if not isinstance(model, nn.Module):
        raise HecnnError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model.load_state_dict(state)
    return model.eval()


def load_onnx(path: str | Path) -> nn.Module:
    """An ``.onnx`` file → ``nn.Module`` (see :mod:`hecnn.onnx_import` for the op table)."""
    from hecnn.onnx_import import load_onnx as _load

    return _load(path)


def load_images(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(x float32 N×C×H×W, y int64 or None) from an ``.npz`` (``x``, optional ``y``; uint8
    scaled to [0, 1]) or an image folder (class subfolders give labels, sorted by name)."""
    p = Path(path)
    if p.is_dir():
        return _image_folder(p)
    if not p.is_file():
        raise HecnnError(f"images {str(p)!r}: no such file or folder")
    with np.load(p) as data:
        if "x" not in data:
            raise HecnnError(f"{p}: the .npz needs an array 'x' (N×C×H×W), has {list(data)}")
        x = data["x"]
        y = data["y"].astype(np.int64) if "y" in data else None
    return _to_float(x, p), y


def _to_float(x: np.ndarray, where: Path) -> np.ndarray:
    if x.ndim == 3:  # N×H×W grey images
        x = x[:, None]
    if x.ndim != 4:
        raise ShapeError(f"{where}: x has shape {x.shape}, expected N×C×H×W")
    if x.dtype == np.uint8:
        return (x.astype(np.float32) / 255.0).astype(np.float32)
    return x.astype(np.float32)


def _image_folder(root: Path) -> tuple[np.ndarray, np.ndarray | None]:
    from PIL import Image

    exts = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".tif", ".tiff"}
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    files: list[tuple[Path, int]] = []
    if classes:
        for label, d in enumerate(classes):
            files += [(f, label) for f in sorted(d.iterdir()) if f.suffix.lower() in exts]
    else:
        files = [(f, -1) for f in sorted(root.iterdir()) if f.suffix.lower() in exts]
    if not files:
        raise HecnnError(f"{root}: no images found")
    arrays = []
    for f, _ in files:
        img = Image.open(f)
        img = img.convert("L" if img.mode in ("L", "1", "I", "I;16", "P") else "RGB")
        a = np.asarray(img)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    if len({a.shape for a in arrays}) != 1:
        raise ShapeError(f"{root}: images differ in size; resize them to one size first")
    y = np.array([lab for _, lab in files], dtype=np.int64) if classes else None
    return _to_float(np.stack(arrays), root), y


# --------------------------------------------------------------------------- approximation


@dataclass
class Approximation:
    """One replaced layer: what it got and how far it is from the exact function on the
    calibration data (``max_error``, measured on the inputs that layer actually sees)."""

    layer: str
    original: str
    method: str
    bound: float
    depth: int
    max_error: float = 0.0


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from hecnn.approx.modules import CompositeMaxPool2d, CompositeReLU
        from hecnn.nn.activations import PolyActivation

        return isinstance(
            m, (PolyActivation, CompositeReLU, CompositeMaxPool2d)
        ) or super().is_leaf_module(m, qualname)


_SMOOTH_FUNCS: dict[Any, type[nn.Module]] = {
    F.silu: nn.SiLU,
    F.gelu: nn.GELU,
    torch.sigmoid: nn.Sigmoid,
    F.sigmoid: nn.Sigmoid,
}
_SMOOTH_METHODS = {"sigmoid": nn.Sigmoid}


def _smooth_functionals_to_modules(model: nn.Module) -> nn.Module:
    """``F.silu(x)`` / ``torch.sigmoid(x)`` / ``F.gelu(x)`` → modules, so each call gets its
    own calibrated fit. Models without such calls are returned unchanged."""
    try:
        gm = fx.GraphModule(model, _LeafTracer().trace(model))
    except Exception:  # untraceable: only modules are replaced (the compiler will say why)
        return model
    count = 0
    for node in list(gm.graph.nodes):
        kind = None
        if node.op == "call_function" and node.target in _SMOOTH_FUNCS:
            kind = _SMOOTH_FUNCS[node.target]
        elif node.op == "call_method" and node.target in _SMOOTH_METHODS:
            kind = _SMOOTH_METHODS[node.target]
        if kind is None:
            continue
        # GELU's tanh form is within 1e-3 of the erf form: the fit targets erf GELU either way,
        # and the end-to-end error vs the clear model is measured, not assumed
        name = f"hecnn_smooth_{count}"
        count += 1
        gm.add_submodule(name, kind())
        with gm.graph.inserting_after(node):
            repl = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(repl)
        gm.graph.erase_node(node)
    if not count:
        return model
    gm.graph.lint()
    gm.recompile()
    return gm


def _max_abs_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, float]:
    seen: dict[str, float] = {}
    handles = []
    for name in names:

        def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
            seen[name] = max(seen.get(name, 0.0), float(args[0].detach().abs().max()))

        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _exact(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from hecnn.approx.modules import CompositeMaxPool2d, CompositeReLU
    from hecnn.approx.smooth import FittedPoly

    if isinstance(m, CompositeReLU):
        return F.relu(x)
    if isinstance(m, CompositeMaxPool2d):
        return F.max_pool2d(x, m.kernel_size, m.stride, m.padding)
    assert isinstance(m, FittedPoly)
    return m.exact(x)


def prepare(
    model: nn.Module,
    calib: np.ndarray | torch.Tensor,
    *,
    alpha: int = 8,
    degree: int = 7,
    margin: float = 1.5,
) -> tuple[nn.Module, list[Approximation]]:
    """A copy of ``model`` the compiler accepts, and what each replaced layer got.

    ReLU / max-pool → composite minimax sign polynomials of precision ``alpha``
    (:func:`hecnn.approximate`); SiLU / GELU / Sigmoid → degree-``degree`` Chebyshev
    least-squares fits on ``[−B, B]``, ``B = margin · max|input|`` over ``calib``. Errors are
    measured per layer on ``calib`` (exact function vs approximation on that layer's inputs).
    """
    import hecnn
    from hecnn.approx.modules import CompositeMaxPool2d, CompositeReLU
    from hecnn.approx.smooth import FittedPoly, smooth_name

    x = torch.as_tensor(np.asarray(calib), dtype=torch.float32)
    work = _smooth_functionals_to_modules(copy.deepcopy(model).eval())
    needs_composite = any(
        isinstance(m, (nn.ReLU, nn.MaxPool2d)) for m in work.modules()
    ) or _has_relu_functionals(work)
    if needs_composite:
        work = hecnn.approximate(work, alpha=alpha, calib=x, margin=margin).eval()
    smooth = [(n, smooth_name(m)) for n, m in work.named_modules() if smooth_name(m)]
    seen = _max_abs_inputs(work, [n for n, _ in smooth], x)
    for name, kind in smooth:
        bound = margin * seen.get(name, 0.0) or 1.0
        _set(work, name, FittedPoly(kind, bound, degree))
    if isinstance(work, fx.GraphModule):
        work.recompile()
    out: list[Approximation] = []
    errs: dict[str, float] = {}
    layers = {
        n: m
        for n, m in work.named_modules()
        if isinstance(m, (CompositeReLU, CompositeMaxPool2d, FittedPoly))
    }
    handles = []
    for name, m in layers.items():

        def hook(mod: nn.Module, args: tuple, result: torch.Tensor, name: str = name) -> None:
            e = float((result.double() - _exact(mod, args[0]).double()).abs().max())
            errs[name] = max(errs.get(name, 0.0), e)

        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            work(x)
    finally:
        for h in handles:
            h.remove()
    for name, m in layers.items():
        if isinstance(m, FittedPoly):
            method = f"Chebyshev least-squares deg {m.degree}"
            original, depth = m.function, math.ceil(math.log2(m.degree + 1))
        else:
            original = "ReLU" if isinstance(m, CompositeReLU) else f"MaxPool {m.kernel_size}"
            method = f"composite minimax α={m.sign.alpha} degrees {m.sign.degrees}"
            rounds = len(m.round_bounds) if isinstance(m, CompositeMaxPool2d) else 1
            depth = rounds * (m.sign.depth + 1)
        out.append(Approximation(name, original, method, m.bound, depth, errs.get(name, 0.0)))
    return work, out


def _has_relu_functionals(model: nn.Module) -> bool:
    from hecnn.approx.convert import _has_functionals

    try:
        return _has_functionals(fx.symbolic_trace(copy.deepcopy(model)))
    except Exception:
        return False


# --------------------------------------------------------------------------- check


@dataclass
class ModeResult:
    mode: str
    logits: np.ndarray
    seconds: float
    accuracy: float | None = None
    agreement: float = 100.0
    max_err: float = 0.0


@dataclass
class CheckResult:
    """Everything ``hecnn check`` prints."""

    plan: Any
    approximations: list[Approximation]
    modes: dict[str, ModeResult]
    stages: list[tuple[str, float]] = field(default_factory=list)
    images: int = 0
    calib_images: int = 0

    @property
    def agreement(self) -> float:
        return self.modes["encrypted"].agreement

    @property
    def max_err(self) -> float:
        return self.modes["encrypted"].max_err

    def approximation_table(self) -> str:
        if not self.approximations:
            return "approximations: none (the model is polynomial already)"
        lines = [
            f"approximations (bounds B and errors measured on {self.calib_images} "
            "calibration images):"
        ]
        for a in self.approximations:
            lines.append(
                f"  {a.layer:<24} {a.original:<16} → {a.method:<40} B={a.bound:<8.3g} "
                f"depth {a.depth:<3} max err {a.max_error:.2e}"
            )
        return "\n".join(lines)

    def table(self) -> str:
        from io import StringIO

        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"{self.images} images, N={self.plan.params.n}, depth {self.plan.levels}")
        for col in (
            "mode",
            "accuracy",
            "agreement vs clear",
            "max logit err",
            "seconds",
            "ms/image",
        ):
            t.add_column(col, justify="left" if col == "mode" else "right")
        for r in self.modes.values():
            acc = "—" if r.accuracy is None else f"{r.accuracy:.2f}%"
            t.add_row(
                r.mode,
                acc,
                f"{r.agreement:.2f}%",
                f"{r.max_err:.2e}",
                f"{r.seconds:.2f}",
                f"{1e3 * r.seconds / max(self.images, 1):.3f}",
            )
        s = Table(title="stages")
        s.add_column("stage")
        s.add_column("seconds", justify="right")
        for name, sec in self.stages:
            s.add_row(name, f"{sec:.2f}")
        console = Console(width=120, record=True, file=StringIO())
        console.print(t)
        console.print(s)
        return console.export_text()

    def last_line(self) -> str:
        return f"agreement={self.agreement:.2f} max_err={self.max_err:.3e}"


def check(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    n: int = 64,
    alpha: int = 8,
    degree: int = 7,
    calib: int = 256,
    insecure_ring_for_tests: int | None = None,
    log: Any = None,
) -> CheckResult:
    """Compile ``model`` for the first ``n`` images and run clear, simulate and encrypted.

    Calibration (approximation bounds, the output bound of the modulus) uses the first
    ``calib`` images of the file (the checked images are among them when ``calib ≥ n``).
    ``log`` (e.g. ``print``) receives the plan summary and approximations as soon as known.
    """
    from hecnn.ckks.context import CkksContext
    from hecnn.ckks.keys import KeyGenerator
    from hecnn.compile import compile_model
    from hecnn.runtime import decrypt_outputs, encrypt_images, run

    images = np.asarray(images, dtype=np.float32)
    if n < 1:
        raise ShapeError(f"n must be ≥ 1, got {n}")
    x = images[:n]
    y = None if labels is None else np.asarray(labels)[:n]
    cal = images[: max(calib, 1)]
    try:
        with torch.no_grad():
            model.eval()(torch.as_tensor(x[:1]))
    except Exception as exc:  # wrong channels / size: say so before any compiling
        raise ShapeError(
            f"the model does not run on images of shape {tuple(x.shape[1:])}: {exc}"
        ) from exc
    stages: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    approx_model, approximations = prepare(model, cal, alpha=alpha, degree=degree)
    stages.append(("approximate + measure", time.perf_counter() - t0))
    t0 = time.perf_counter()
    plan = compile_model(
        approx_model,
        tuple(x.shape[1:]),
        batch=len(x),
        calib=cal,
        insecure_ring_for_tests=insecure_ring_for_tests,
    )
    plan.model_name = type(model).__name__
    stages.append(("compile", time.perf_counter() - t0))
    result = CheckResult(plan, approximations, {}, stages, len(x), len(cal))
    if log is not None:
        log(plan.summary())
        log(result.approximation_table())

    t0 = time.perf_counter()
    with torch.no_grad():
        clear = model.eval()(torch.as_tensor(x)).double().numpy()
    modes = {"clear": ModeResult("clear", clear, time.perf_counter() - t0)}
    t0 = time.perf_counter()
    modes["simulate"] = ModeResult("simulate", simulate_ckks(plan, x), time.perf_counter() - t0)

    t0 = time.perf_counter()
    ctx = CkksContext(plan.params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    pk, evk = kg.public_key(sk), kg.evaluation_keys(sk)
    stages.append(("keygen (client)", time.perf_counter() - t0))
    t0 = time.perf_counter()
    ct = encrypt_images(plan, ctx, pk, x)
    stages.append(("encrypt (client)", time.perf_counter() - t0))
    t0 = time.perf_counter()
    out = run(plan, ct, evk)
    t_run = time.perf_counter() - t0
    stages.append(("encrypted inference (server)", t_run))
    t0 = time.perf_counter()
    enc = decrypt_outputs(ctx, sk, out, len(x))
    stages.append(("decrypt (client)", time.perf_counter() - t0))
    modes["encrypted"] = ModeResult("encrypted", enc, t_run)
    ref = clear.argmax(1)
    for r in modes.values():
        if y is not None:
            r.accuracy = 100.0 * float(np.mean(r.logits.argmax(1) == y))
        r.agreement = 100.0 * float(np.mean(r.logits.argmax(1) == ref))
        r.max_err = float(np.abs(r.logits - clear).max())
    result.modes = modes
    return result
