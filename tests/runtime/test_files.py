"""Shared client/server files: key directories, image sets, the 128-bit guard."""

import numpy as np
import pytest

from hecnn.ckks.encryption import decrypt, encrypt
from hecnn.ckks.params import CkksParameters
from hecnn.errors import HecnnError, SecurityError, SerializationError, ShapeError
from hecnn.runtime.files import (
    generate_keys,
    load_images,
    load_key_dir,
    prepare_images,
    read_spec,
    require_secure,
    write_key_dir,
)


@pytest.fixture(scope="module")
def params():
    return CkksParameters.create(depth=2, n=1 << 10, allow_insecure_test_only=True)


def test_key_dir_round_trip_and_secret_permissions(params, tmp_path):
    keys = generate_keys(params)
    write_key_dir(tmp_path / "k", keys, {"server": "http://x"})
    assert (tmp_path / "k" / "secret.hecnn").stat().st_mode & 0o077 == 0
    assert read_spec(tmp_path / "k")["fingerprint"] == params.fingerprint
    back = load_key_dir(tmp_path / "k", params)
    assert np.array_equal(back.secret.coeffs, keys.secret.coeffs)
    x = np.linspace(-1, 1, 8)[None]
    ct = encrypt(back.ctx, x, back.public)
    assert np.abs(decrypt(back.ctx, ct, keys.secret, slots=8) - x).max() < 1e-3
    other = CkksParameters.create(depth=3, n=1 << 10, allow_insecure_test_only=True)
    with pytest.raises(SerializationError, match="another key directory"):
        load_key_dir(tmp_path / "k", other)
    with pytest.raises(HecnnError, match="cannot read"):
        load_key_dir(tmp_path / "missing")


def test_require_secure(params):
    with pytest.raises(SecurityError, match="128-bit"):
        require_secure(params)
    require_secure(params, allow_insecure_test_only=True)
    require_secure(CkksParameters.create(depth=2))


def test_load_images_npz_and_folder(tmp_path):
    from PIL import Image

    x = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([3, 4]))
    got, y = load_images(tmp_path / "a.npz", (1, 28, 28))
    assert got.shape == (2, 1, 28, 28) and list(y) == [3, 4]
    assert prepare_images(got).dtype == np.float64
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((56, 56), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    imgs, none = load_images(folder, (1, 28, 28))
    assert imgs.shape == (3, 1, 28, 28) and none is None and imgs[2, 0, 0, 0] == 80
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(HecnnError, match="cannot read images"):
        load_images(tmp_path / "bad.npz")
    with pytest.raises(ShapeError):
        load_images(tmp_path / "a.npz", (3, 8, 8))
    with pytest.raises(HecnnError, match="no images"):
        load_images(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None)
