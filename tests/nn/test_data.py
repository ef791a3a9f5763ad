"""Dataset loaders on generated files (all formats) and, when present, the real datasets."""

from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from _nnhelpers import real_data_file, write_idx, write_mnist_idx
from PIL import Image

from hecnn.nn import data


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.gz"), arr)


def test_read_idx_rejects_garbage(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(data.DatasetError):
        data.read_idx(tmp_path / "bad")
    arr = np.zeros((4, 5), np.uint8)
    write_idx(tmp_path / "t.gz", arr)
    import gzip

    raw = gzip.decompress((tmp_path / "t.gz").read_bytes())[:-3]
    (tmp_path / "short").write_bytes(raw)
    with pytest.raises(data.DatasetError, match="truncated"):
        data.read_idx(tmp_path / "short")


def test_mnist_idx(isolated_data):
    arrays = write_mnist_idx(isolated_data)
    s = data.load_dataset("mnist", verify=False)
    assert s.x_train.shape == (20, 1, 28, 28) and s.x_test.shape == (10, 1, 28, 28)
    assert s.x_train.dtype == np.uint8 and s.y_train.dtype == np.int64
    np.testing.assert_array_equal(s.x_train[:, 0], arrays["train_x"])
    np.testing.assert_array_equal(s.y_test, arrays["test_y"])
    assert "IDX" in s.source


def test_mnist_keras_npz(isolated_data):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    y = np.arange(6, dtype=np.uint8)
    np.savez(isolated_data / "mnist.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    s = data.load_dataset("mnist", verify=False)
    assert "keras" in s.source and s.x_test.shape == (2, 1, 28, 28)
    np.testing.assert_array_equal(s.y_train, y)


def test_mnist_subset_npz(isolated_data):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    y = np.arange(10, dtype=np.uint8)
    (isolated_data / "mnist_subset").mkdir()
    np.savez(
        isolated_data / "mnist_subset" / "mnist10k.npz",
        x=x,
        y=y,
        train_idx=np.array([0, 2, 4, 6, 8, 9]),
        test_idx=np.array([1, 3, 5, 7]),
    )
    s = data.load_dataset("mnist", verify=False)
    np.testing.assert_array_equal(s.y_test, [1, 3, 5, 7])
    np.testing.assert_array_equal(s.x_train[1, 0], x[2])


def test_missing_dataset_message(isolated_data):
    with pytest.raises(data.DatasetNotFoundError, match="download"):
        data.load_dataset("fashion_mnist")
    with pytest.raises(data.DatasetError):
        data.load_dataset("imagenet")


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"labels": list(rng.integers(0, 10, n)),
    }


def test_cifar_pickle_batches(isolated_data):
    folder = isolated_data / "cifar-10-batches-py"
    folder.mkdir()
    batches = {f"data_batch_{i}": _cifar_batch(3, i) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(4, 9)
    for name, b in batches.items():
        (folder / name).write_bytes(pickle.dumps(b))
    s = data.load_dataset("cifar10", verify=False)
    assert s.x_train.shape == (15, 3, 32, 32) and s.x_test.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(s.x_test[2], batches["test_batch"][b"data"][2].reshape(3, 32, 32))
    np.testing.assert_array_equal(s.y_train[3:6], batches["data_batch_2"][b"labels"])


def test_cifar_jpg_tar_is_decoded_and_cached(isolated_data):
    rng = np.random.default_rng(3)
    tar_path = isolated_data / "cifar10" / "cifar10_jpg.tar.gz"
    tar_path.parent.mkdir()
    expected = {}
    with tarfile.open(tar_path, "w:gz") as tf:
        for split in ("train", "test"):
            for cls in ("airplane", "automobile", "bird"):
                for i in range(2):
                    img = np.full((32, 32, 3), rng.integers(0, 256, 3), np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="JPEG", quality=95)
                    info = tarfile.TarInfo(f"{split}/{cls}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tf.addfile(info, io.BytesIO(buf.getvalue()))
                    expected[(split, cls, i)] = img
    s = data.load_dataset("cifar10", verify=False)
    assert s.x_train.shape == (6, 3, 32, 32) and s.y_train.tolist() == [0, 0, 1, 1, 2, 2]
    ref = expected[("test", "bird", 1)].transpose(2, 0, 1).astype(int)
    assert np.abs(s.x_test[5].astype(int) - ref).max() <= 3  # JPEG of a flat colour
    assert (isolated_data / "cifar10_jpg.npz").is_file()
    tar_path.unlink()  # second load comes from the cache
    s2 = data.load_dataset("cifar10", verify=False)
    np.testing.assert_array_equal(s2.x_train, s.x_train)


def test_verify_file(tmp_path, monkeypatch):
    f = tmp_path / "thing.bin"
    f.write_bytes(b"hello")
    assert data.verify_file(f) is False  # not a known file
    monkeypatch.setitem(
        data.KNOWN_DIGESTS, "thing.bin", (("md5", "5d41402abc4b2a76b9719d911017c592"),)
    )
    assert data.verify_file(f) is True
    f.write_bytes(b"hellO")
    with pytest.raises(data.DatasetError, match="checksum"):
        data.verify_file(f)


def test_download_urls_have_checksums():
    for name, files in data.URLS.items():
        for url, rel in files:
            assert url.startswith("http")
            assert rel in data.KNOWN_DIGESTS, (name, rel)


def test_search_dir_priority(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.setenv("HECNN_DATA", str(b))
    dirs = data.search_dirs(a)
    assert dirs[:2] == [a.resolve(), b.resolve()]
    assert data.cache_dir() == b


def test_to_float_normalises():
    x = np.full((2, 1, 2, 2), 255, np.uint8)
    t = data.to_float(x, "mnist")
    assert t.dtype == torch.float32
    torch.testing.assert_close(t, torch.full((2, 1, 2, 2), (1 - 0.1307) / 0.3081))
    c = data.to_float(np.zeros((1, 3, 2, 2), np.uint8), "cifar10")
    torch.testing.assert_close(
        c[0, :, 0, 0],
        -torch.tensor([0.4914, 0.4822, 0.4465]) / torch.tensor([0.2470, 0.2435, 0.2616]),
    )


def test_image_folder_and_augment(tmp_path):
    rng = np.random.default_rng(4)
    for cls in ("CNV", "DME", "NORMAL"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            img = rng.integers(0, 256, (40 + i, 50), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "NORMAL" / "notes.txt").write_text("ignored")
    x, y, classes = data.load_image_folder(tmp_path, size=(24, 32))
    assert classes == ["CNV", "DME", "NORMAL"]
    assert x.shape == (9, 1, 24, 32) and x.dtype == np.uint8
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    xr, _, _ = data.load_image_folder(tmp_path, size=(8, 8), grayscale=False)
    assert xr.shape == (9, 3, 8, 8)

    t = data.to_float(x, "octid")  # unknown dataset: just /255
    assert t.min() >= 0 and t.max() <= 1
    g = torch.Generator().manual_seed(0)
    a = data.augment(t, rotation=15, scale=(0.8, 1.2), translate=0.1, generator=g)
    assert a.shape == t.shape and not torch.equal(a, t)
    ident = data.augment(t, rotation=0, scale=(1.0, 1.0), translate=0.0)
    torch.testing.assert_close(ident, t, atol=1e-5, rtol=0)


def test_random_crop_flip_keeps_content():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    y = data.random_crop_flip(x, pad=0, generator=torch.Generator().manual_seed(1))
    for i in range(2):
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1))
    z = data.random_crop_flip(x, pad=2)
    assert z.shape == x.shape


@pytest.mark.dataset
def test_real_mnist_subset():
    path = real_data_file("mnist_subset/mnist10k.npz")
    assert data.verify_file(path)
    s = data.load_dataset("mnist", path.parent.parent)
    if "subset" in s.source:
        assert len(s.y_train) == 8004 and len(s.y_test) == 1996
    assert s.x_train.shape[1:] == (1, 28, 28) and set(np.unique(s.y_test)) == set(range(10))


@pytest.mark.dataset
def test_real_fashion_mnist():
    path = real_data_file("fashion_mnist/t10k-labels-idx1-ubyte.gz")
    s = data.load_dataset("fashion_mnist", path.parent.parent)
    assert s.x_train.shape == (60000, 1, 28, 28) and s.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(s.y_test).tolist() == [1000] * 10


@pytest.mark.dataset
def test_real_cifar10():
    path = real_data_file("cifar10/cifar10_jpg.tar.gz")
    cache = data.cache_dir() / "cifar10_jpg.npz"
    if not cache.is_file():
        pytest.skip(
            f"decoding the CIFAR-10 JPEGs takes ~30 s; run load_dataset once to cache {cache}"
        )
    s = data.load_dataset("cifar10", path.parent.parent)
    assert s.x_train.shape == (50000, 3, 32, 32) and s.x_test.shape == (10000, 3, 32, 32)
    assert np.bincount(s.y_test).tolist() == [1000] * 10
    mean = s.x_train.reshape(50000, 3, -1).mean((0, 2))  # README: 125.27/122.93/113.86
    np.testing.assert_allclose(mean, [125.27, 122.93, 113.86], atol=0.01)


def test_known_file_with_wrong_checksum_is_rejected(isolated_data):
    write_mnist_idx(isolated_data)  # random bytes under the official MNIST names
    with pytest.raises(data.DatasetError, match="checksum"):
        data.load_dataset("mnist")
