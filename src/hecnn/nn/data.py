"""Datasets as uint8 numpy arrays: MNIST, Fashion-MNIST, CIFAR-10 and folder-per-class images.

Every loader returns images as ``uint8`` arrays of shape ``(N, C, H, W)`` and labels as ``int64``;
:func:`to_float` turns them into the normalised float tensors the models were trained on (the
same function is used by training, evaluation and the bundled demo, so they cannot drift).

Where files are looked for (first hit wins), see :func:`search_dirs`: the explicit ``data_dir``
argument (CLI ``--data``), ``$HECNN_DATA``, ``~/.cache/hecnn``, then ``../shared/data`` beside the
repository (and beside the working directory). Known files are checked against their SHA-256 (or
the MD5 their publisher lists). :func:`download` fetches the official files for users; nothing in
the tests calls it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)

from hecnn.errors import HecnnError

__all__ = [
    "DATASETS",
    "DatasetError",
    "DatasetNotFoundError",
    "Splits",
    "augment",
    "download",
    "load_dataset",
    "load_image_folder",
    "read_idx",
    "search_dirs",
    "to_float",
    "verify_file",
]

DATASETS = ("mnist", "fashion_mnist", "cifar10")

#: per-channel mean / std on the 0..1 scale (standard values for the official training sets)
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

_IDX = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}

#: file name → accepted digests ``(algorithm, hex)``: the publishers' MD5s of the official files,
#: and the SHA-256 of the copies on the developers' machines (``../shared/data/SHA256SUMS``).
KNOWN_DIGESTS: dict[str, tuple[tuple[str, str], ...]] = {
    # MNIST (official IDX, MD5s as listed by torchvision) and Keras' mnist.npz
    "mnist/train-images-idx3-ubyte.gz": (("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),),
    "mnist/train-labels-idx1-ubyte.gz": (("md5", "d53e105ee54ea40749a09fcbcd1e9432"),),
    "mnist/t10k-images-idx3-ubyte.gz": (("md5", "9fb629c4189551a2d022fa330f9573f3"),),
    "mnist/t10k-labels-idx1-ubyte.gz": (("md5", "ec29112dd5afa0611ce80d1b7f02629c"),),
    "mnist.npz": (("sha256", "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"),),
    "mnist10k.npz": (
        ("sha256", "4de807a709e6d088113ca98a320cfec8adb180a509905263e0a856bc5386fd14"),
    ),
    # Fashion-MNIST: upstream MD5s, and the SHA-256 of Debian's recompressed copies
    "fashion_mnist/train-images-idx3-ubyte.gz": (
        ("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("sha256", "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
    ),
    "fashion_mnist/train-labels-idx1-ubyte.gz": (
        ("md5", "25c81989df183df01b3e8a0aad5dffbe"),
        ("sha256", "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
    ),
    "fashion_mnist/t10k-images-idx3-ubyte.gz": (
        ("md5", "bef4ecab320f06d8554ea6380940ec79"),
        ("sha256", "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
    ),
    "fashion_mnist/t10k-labels-idx1-ubyte.gz": (
        ("md5", "bb300cfdad3c16e7a12a480ee83cd310"),
        ("sha256", "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
    ),
    "cifar-10-python.tar.gz": (("md5", "c58f30108f718f92721af3b95e74349a"),),
    "cifar10_jpg.tar.gz": (
        ("sha256", "019854137da7537c70cd3e7c6c919477931ce71f0f4aea5b1783e84e9a15c7bb"),
    ),
}

#: official download locations (name → [(url, file name relative to the data dir)])
URLS: dict[str, list[tuple[str, str]]] = {
    "mnist": [
        (f"https://ossci-datasets.s3.amazonaws.com/mnist/{f}", f"mnist/{f}") for f in _IDX.values()
    ],
    "fashion_mnist": [
        (f"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{f}", f"fashion_mnist/{f}")
        for f in _IDX.values()
    ],
    "cifar10": [
        ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz")
    ],
}

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class DatasetError(HecnnError):
    """A dataset file is corrupt, has the wrong checksum or an unexpected layout."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """No copy of a dataset was found in any search directory."""


@dataclass(frozen=True)
class Splits:
    """A dataset's train and test splits (uint8 NCHW images, int64 labels) and their origin."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


# ---------------------------------------------------------------- locating and verifying files


def repo_root() -> Path:
    """The repository (or site-packages) directory holding ``src/hecnn``."""
    return Path(__file__).resolve().parents[3]


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for datasets, in priority order (existing ones only)."""
    cands: list[Path] = []
    if data_dir is not None:
        cands.append(Path(data_dir))
    if os.environ.get("HECNN_DATA"):
        cands.append(Path(os.environ["HECNN_DATA"]))
    cands.append(cache_dir())
    cands += [repo_root().parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    seen, out = set(), []
    for c in cands:
        c = c.expanduser().resolve()
        if c not in seen and c.is_dir():
            seen.add(c)
            out.append(c)
    return out


def cache_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Where downloads and decoded caches go: ``data_dir``, ``$HECNN_DATA``, ``~/.cache/hecnn``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("HECNN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hecnn"


def _find(names: list[str], data_dir: str | os.PathLike | None) -> Path | None:
    for d in search_dirs(data_dir):
        for n in names:
            if (d / n).is_file():
                return d / n
    return None


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: str | os.PathLike, key: str | None = None) -> bool:
    """Check ``path`` against :data:`KNOWN_DIGESTS` (looked up by ``key`` or its file name).

    Returns ``True`` if it matched a known digest, ``False`` if the file is not a known one;
    raises :class:`DatasetError` on a mismatch.
    """
    path = Path(path)
    key = key or next(
        (k for k in KNOWN_DIGESTS if k == path.name or k.endswith("/" + path.name)), None
    )
    if key is None or key not in KNOWN_DIGESTS:
        return False
    accepted = KNOWN_DIGESTS[key]
    for algo in {a for a, _ in accepted}:
        if _digest(path, algo) in {h for a, h in accepted if a == algo}:
            return True
    raise DatasetError(f"{path}: checksum does not match the known {key} (corrupt download?)")


def _verify_known(path: Path, subdir: str, verify: bool = True) -> None:
    if not verify:
        return
    key = f"{subdir}/{path.name}" if subdir else path.name
    verify_file(path, key if key in KNOWN_DIGESTS else None)


# ---------------------------------------------------------------- file formats


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped): big-endian magic, dims, then uint8 data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path}: not a uint8 IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: truncated IDX file ({data.size} of {np.prod(dims)} bytes)")
    return data.reshape(dims).copy()  # writable (np.frombuffer is read-only)


def _idx_splits(name: str, files: dict[str, Path], verify: bool) -> Splits:
    for p in files.values():
        _verify_known(p, name, verify)
    xtr, ytr = read_idx(files["train_x"]), read_idx(files["train_y"])
    xte, yte = read_idx(files["test_x"]), read_idx(files["test_y"])
    return Splits(
        name,
        xtr[:, None],
        ytr.astype(np.int64),
        xte[:, None],
        yte.astype(np.int64),
        f"IDX files in {files['train_x'].parent}",
    )


def _find_idx(subdirs: list[str], data_dir) -> dict[str, Path] | None:
    for sub in subdirs:
        files = {k: _find([f"{sub}/{f}", f"{sub}/{f[:-3]}"], data_dir) for k, f in _IDX.items()}
        if all(files.values()):
            return files  # type: ignore[return-value]
    return None


def _load_mnist(data_dir, verify: bool) -> Splits:
    files = _find_idx(["mnist", "MNIST/raw", "."], data_dir)
    if files:
        return _idx_splits("mnist", files, verify)
    npz = _find(["mnist.npz", "mnist/mnist.npz"], data_dir)
    if npz:
        _verify_known(npz, "", verify)
        with np.load(npz) as d:
            return Splits(
                "mnist",
                d["x_train"][:, None],
                d["y_train"].astype(np.int64),
                d["x_test"][:, None],
                d["y_test"].astype(np.int64),
                f"keras npz {npz}",
            )
    sub = _find(["mnist_subset/mnist10k.npz", "mnist10k.npz", "mnist/mnist10k.npz"], data_dir)
    if sub:
        _verify_known(sub, "", verify)
        with np.load(sub) as d:
            x, y = d["x"][:, None], d["y"].astype(np.int64)
            tr, te = d["train_idx"], d["test_idx"]
            return Splits("mnist", x[tr], y[tr], x[te], y[te], f"10k subset {sub}")
    raise DatasetNotFoundError(_missing("mnist", data_dir))


def _load_fashion(data_dir, verify: bool) -> Splits:
    files = _find_idx(["fashion_mnist", "fashion-mnist", "FashionMNIST/raw"], data_dir)
    if not files:
        raise DatasetNotFoundError(_missing("fashion_mnist", data_dir))
    return _idx_splits("fashion_mnist", files, verify)


def _cifar_from_pickles(read) -> tuple[np.ndarray, ...]:
    """``read(name) -> bytes`` of one batch file; returns x_train, y_train, x_test, y_test."""

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        d = pickle.loads(read(name), encoding="bytes")
        return d[b"data"].reshape(-1, 3, 32, 32), np.asarray(d[b"labels"], np.int64)

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    xte, yte = batch("test_batch")
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    return xtr, ytr, xte, yte


def decode_cifar_jpg_tar(tar_path: str | os.PathLike) -> tuple[np.ndarray, ...]:
    """Decode ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` into uint8 NCHW arrays.

    Classes are taken in alphabetical order, which is CIFAR-10's standard label order.
    """
    from PIL import Image

    out: dict[str, tuple[list[np.ndarray], list[int]]] = {"train": ([], []), "test": ([], [])}
    with tarfile.open(tar_path, "r:*") as tf:
        members = sorted(
            (m for m in tf.getmembers() if m.isfile() and m.name.lower().endswith(".jpg")),
            key=lambda m: m.name,
        )
        classes = sorted({Path(m.name).parent.name for m in members})
        index = {c: i for i, c in enumerate(classes)}
        for m in members:
            parts = Path(m.name).parts
            split = next((p for p in parts if p in out), None)
            if split is None:
                continue
            f = tf.extractfile(m)
            assert f is not None
            img = Image.open(io.BytesIO(f.read())).convert("RGB")
            out[split][0].append(np.asarray(img, np.uint8).transpose(2, 0, 1))
            out[split][1].append(index[Path(m.name).parent.name])
    if not out["train"][0] or not out["test"][0]:
        raise DatasetError(f"{tar_path}: expected train/<class>/*.jpg and test/<class>/*.jpg")
    return (
        np.stack(out["train"][0]),
        np.asarray(out["train"][1], np.int64),
        np.stack(out["test"][0]),
        np.asarray(out["test"][1], np.int64),
    )


def _load_cifar(data_dir, verify: bool) -> Splits:
    folder = _find(
        ["cifar-10-batches-py/data_batch_1", "cifar10/cifar-10-batches-py/data_batch_1"], data_dir
    )
    if folder:
        xtr, ytr, xte, yte = _cifar_from_pickles(lambda n: (folder.parent / n).read_bytes())
        return Splits("cifar10", xtr, ytr, xte, yte, f"pickle batches in {folder.parent}")
    tgz = _find(["cifar-10-python.tar.gz", "cifar10/cifar-10-python.tar.gz"], data_dir)
    if tgz:
        _verify_known(tgz, "", verify)
        with tarfile.open(tgz, "r:gz") as tf:

            def read(n: str) -> bytes:
                f = tf.extractfile(f"cifar-10-batches-py/{n}")
                assert f is not None
                return f.read()

            xtr, ytr, xte, yte = _cifar_from_pickles(read)
        return Splits("cifar10", xtr, ytr, xte, yte, f"python tarball {tgz}")
    cached = _find(["cifar10_jpg.npz", "cifar10/cifar10_jpg.npz"], data_dir)
    if cached is None:
        jpg = _find(["cifar10/cifar10_jpg.tar.gz", "cifar10_jpg.tar.gz"], data_dir)
        if jpg is None:
            raise DatasetNotFoundError(_missing("cifar10", data_dir))
        _verify_known(jpg, "", verify)
        arrays = decode_cifar_jpg_tar(jpg)
        cached = cache_dir(data_dir) / "cifar10_jpg.npz"
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npz")
        np.savez(tmp, x_train=arrays[0], y_train=arrays[1], x_test=arrays[2], y_test=arrays[3])
        tmp.replace(cached)
    with np.load(cached) as d:
        return Splits(
            "cifar10",
            d["x_train"],
            d["y_train"],
            d["x_test"],
            d["y_test"],
            f"JPEG copy, decoded cache {cached}",
        )


def _missing(name: str, data_dir) -> str:
    dirs = ", ".join(str(d) for d in search_dirs(data_dir)) or "(none exist)"
    return (
        f"dataset {name!r} not found in: {dirs}. Put the files there, set HECNN_DATA, pass "
        f"--data, or call hecnn.nn.data.download({name!r})."
    )


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, verify: bool = True
) -> Splits:
    """Load ``mnist``, ``fashion_mnist`` or ``cifar10`` (uint8 NCHW images, int64 labels).

    MNIST is read from the official IDX files, else Keras' ``mnist.npz``, else the 10k subset
    ``mnist10k.npz`` (8004 train / 1996 test). CIFAR-10 is read from the python pickle batches
    (folder or tarball), else from ``cifar10_jpg.tar.gz`` (decoded once, cached as npz).
    Files with a known name are checked against :data:`KNOWN_DIGESTS` unless ``verify=False``.
    """
    loaders = {"mnist": _load_mnist, "fashion_mnist": _load_fashion, "cifar10": _load_cifar}
    if name not in loaders:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    return loaders[name](data_dir, verify)


def download(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Download the official files of ``name`` into the cache dir, verifying their checksums."""
    if name not in URLS:
        raise DatasetError(f"no download for {name!r}; choose one of {sorted(URLS)}")
    root = cache_dir(data_dir)
    for url, rel in URLS[name]:
        dest = root / rel
        if dest.is_file():
            try:
                verify_file(dest, rel if rel in KNOWN_DIGESTS else None)
                continue
            except DatasetError:
                dest.unlink()
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
        try:
            verify_file(tmp, rel if rel in KNOWN_DIGESTS else None)
        except DatasetError:
            tmp.unlink()
            raise
        tmp.replace(dest)
    return root


# ---------------------------------------------------------------- preprocessing


def to_float(x: np.ndarray | torch.Tensor, dataset: str = "mnist") -> torch.Tensor:
    """uint8 NCHW images → float32 tensor, ``(x/255 - mean) / std`` per channel.

    The one preprocessing used by training, evaluation and the bundled demo.
    """
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    t = t.float() / 255.0
    if dataset in NORMALIZATION:
        mean, std = NORMALIZATION[dataset]
        if len(mean) == t.shape[1]:
            m = torch.tensor(mean, device=t.device).reshape(1, -1, 1, 1)
            s = torch.tensor(std, device=t.device).reshape(1, -1, 1, 1)
            t = (t - m) / s
    return t


# ---------------------------------------------------------------- folder-per-class images


def load_image_folder(
    root: str | os.PathLike,
    size: tuple[int, int] = (64, 64),
    grayscale: bool = True,
    extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"),
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load ``root/<class>/<image>`` (e.g. retinal OCT sets) resized to ``size`` = (H, W).

    Returns uint8 images ``(N, C, H, W)`` (C = 1 if ``grayscale`` else 3), int64 labels and the
    class names (sorted folder names; label i is ``classes[i]``).
    """
    from PIL import Image

    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DatasetNotFoundError(f"{root}: no class folders")
    xs, ys = [], []
    for label, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() not in extensions:
                continue
            with Image.open(f) as im:
                im = im.convert("L" if grayscale else "RGB").resize(
                    (size[1], size[0]), Image.BILINEAR
                )
                a = np.asarray(im, np.uint8)
            xs.append(a[None] if grayscale else a.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise DatasetNotFoundError(f"{root}: no images with extensions {extensions}")
    return np.stack(xs), np.asarray(ys, np.int64), classes


def augment(
    x: torch.Tensor,
    rotation: float = 10.0,
    scale: tuple[float, float] = (0.9, 1.1),
    translate: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random rotation (±``rotation`` degrees), scale and shift (random crop) of a float batch.

    One affine warp per image via ``affine_grid``/``grid_sample`` (bilinear, zero fill), so small
    medical sets get rotation/crop/scale augmentation without torchvision.
    """
    n = x.shape[0]
    u = torch.rand(n, 4, generator=generator).to(x.device)
    ang = (u[:, 0] * 2 - 1) * rotation * torch.pi / 180
    s = scale[0] + u[:, 1] * (scale[1] - scale[0])
    tx, ty = (u[:, 2] * 2 - 1) * translate * 2, (u[:, 3] * 2 - 1) * translate * 2
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(
        x.dtype
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_crop_flip(
    x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """CIFAR's standard augmentation: random crop after ``pad`` zero padding + horizontal flip."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dev = x.device  # random draws on the CPU generator (reproducible), indices on x's device
    i = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    j = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    rows = (i[:, None] + torch.arange(h, device=dev)[None]).reshape(n, 1, h, 1)
    cols = (j[:, None] + torch.arange(w, device=dev)[None]).reshape(n, 1, 1, w)
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
    cols = torch.where(flip.reshape(n, 1, 1, 1), cols.flip(-1), cols)
    idx_n = torch.arange(n, device=dev).reshape(n, 1, 1, 1)
    idx_c = torch.arange(x.shape[1], device=dev).reshape(1, -1, 1, 1)
    return xp[idx_n, idx_c, rows, cols]
