"""Files the client and server roles share: object files, key directories, image sets.

Used by the file-based commands (``hecnn keygen|encrypt|infer|decrypt``) and by the HTTP
service (``hecnn serve``, ``hecnn client``), so both read and write the same formats and apply
the same checks.

A key directory holds ``spec.json`` (what the keys are for), ``params.hecnn``, ``public.hecnn``,
``eval.hecnn`` (the only server-bound file) and ``secret.hecnn`` (mode 0600, client only).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hecnn.ckks import serialize
from hecnn.ckks.context import CkksContext
from hecnn.ckks.keys import EvaluationKeys, KeyGenerator, PublicKey, SecretKey
from hecnn.ckks.params import CkksParameters
from hecnn.errors import HecnnError, SecurityError, SerializationError, ShapeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".pgm")


def read_object(path: Path, ctx: CkksContext | None = None, **kw):
    """Load one serialized object from ``path`` (see :func:`hecnn.ckks.serialize.loads`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise HecnnError(f"cannot read {path}: {exc.strerror}") from None
    return serialize.loads(data, ctx, **kw)


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write via a temporary file and rename: readers see the old or the new file, never half.

    With ``mode`` the file is created with those permissions (no window where a secret is
    world-readable).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def require_secure(params: CkksParameters, *, allow_insecure_test_only: bool = False) -> None:
    """Server-side (and client-side) guard: refuse parameter sets below 128-bit security.

    ``CkksParameters`` already enforces the bound unless built with the test-only switch; this
    refuses such test-only sets too, unless the caller was itself started in test-only mode.
    """
    if params.insecure_test_only and not allow_insecure_test_only:
        raise SecurityError(
            f"refusing parameters below 128-bit security ({params.describe()}); they exist for "
            "unit tests only"
        )


@dataclass(frozen=True)
class KeySet:
    """A client's keys for one parameter set. Never send ``secret`` anywhere."""

    params: CkksParameters
    ctx: CkksContext
    secret: SecretKey
    public: PublicKey
    evaluation: EvaluationKeys


def generate_keys(
    params: CkksParameters, *, rotations: tuple[int, ...] = (), ctx: CkksContext | None = None
) -> KeySet:
    """Fresh secret, public and evaluation keys (randomness from the OS CSPRNG)."""
    ctx = ctx or CkksContext(params)
    kg = KeyGenerator(ctx)
    sk = kg.secret_key()
    return KeySet(params, ctx, sk, kg.public_key(sk), kg.evaluation_keys(sk, rotations=rotations))


def write_key_dir(out: Path, keys: KeySet, spec: dict) -> None:
    """Write a key directory; ``spec`` says what the keys are for (model, batch, server …)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "fingerprint": keys.params.fingerprint}
    write_atomic(out / "spec.json", json.dumps(spec, indent=1).encode())
    write_atomic(out / "params.hecnn", serialize.dumps(keys.params))
    write_atomic(out / "public.hecnn", serialize.dumps(keys.public))
    write_atomic(out / "eval.hecnn", serialize.dumps(keys.evaluation))
    write_atomic(out / "secret.hecnn", serialize.dumps(keys.secret), mode=0o600)


def read_spec(keys: Path) -> dict:
    try:
        spec = json.loads((Path(keys) / "spec.json").read_text())
    except (OSError, ValueError) as exc:
        raise HecnnError(f"{keys}/spec.json missing or malformed: {exc}") from None
    if not isinstance(spec, dict):
        raise HecnnError(f"{keys}/spec.json is not a JSON object")
    return spec


def load_key_dir(keys: Path, params: CkksParameters | None = None) -> KeySet:
    """Load a client key directory; with ``params``, refuse keys made for another parameter set."""
    keys = Path(keys)
    stored = read_object(keys / "params.hecnn", expect=serialize.Kind.PARAMS)
    if params is not None and stored.fingerprint != params.fingerprint:
        raise SerializationError(
            f"the keys in {keys} were made for parameters {stored.fingerprint}, not "
            f"{params.fingerprint}: use another key directory"
        )
    ctx = CkksContext(stored)
    sk = read_object(
        keys / "secret.hecnn", ctx, expect=serialize.Kind.SECRET_KEY, allow_secret=True
    )
    pk = read_object(keys / "public.hecnn", ctx, expect=serialize.Kind.PUBLIC_KEY)
    evk = read_object(keys / "eval.hecnn", ctx, expect=serialize.Kind.EVALUATION_KEYS)
    return KeySet(stored, ctx, sk, pk, evk)


def load_images(path: Path, input_shape: tuple[int, ...] | None = None):
    """Images and (when known) labels from an ``.npz`` (``x`` [, ``y``]) or a folder of images.

    Returns ``(x, y)``: ``x`` as stored (uint8 images stay uint8 for the caller's
    preprocessing), ``y`` an int64 array or ``None``. A folder's images are read in name order,
    converted to the channels of ``input_shape`` and resized to its height and width.
    """
    path = Path(path)
    if path.is_dir():
        return _load_folder(path, input_shape), None
    try:
        with np.load(path, allow_pickle=False) as d:
            x = np.asarray(d["x"])
            y = np.asarray(d["y"]).astype(np.int64) if "y" in d.files else None
    except (OSError, KeyError, ValueError, EOFError) as exc:
        raise HecnnError(f"cannot read images from {path}: {exc}") from None
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise ShapeError(f"{path}: images must be uint8 or float, got {x.dtype}")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        if x.ndim == len(input_shape) and input_shape[0] == 1 and x.shape[1:] == input_shape[1:]:
            x = x[:, None]  # (N, H, W) grayscale
        else:
            raise ShapeError(f"{path}: images have shape {x.shape[1:]}, expected {input_shape}")
    if y is not None and len(y) != len(x):
        raise ShapeError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y


def _load_folder(path: Path, input_shape: tuple[int, ...] | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise HecnnError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    if input_shape is None or len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise ShapeError(f"image folders need a (1|3, H, W) model input, not {input_shape}")
    c, h, w = input_shape
    out = np.empty((len(files), c, h, w), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("L" if c == 1 else "RGB").resize((w, h)))
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise HecnnError(f"cannot read image {f}: {exc}") from None
        out[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return out


def prepare_images(x: np.ndarray, preprocess: str = "mnist") -> np.ndarray:
    """uint8 images → the model's float inputs (``hecnn.nn.data.to_float`` with the named
    dataset's normalization, the one used in training); float images pass through unchanged."""
    if x.dtype != np.uint8:
        return np.asarray(x, dtype=np.float64)
    from hecnn.nn.data import to_float

    return np.asarray(to_float(x, preprocess), dtype=np.float64)
