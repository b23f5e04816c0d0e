import gzip
import struct

import numpy as np
import pytest

from nmfstudy.data import DataError, load_dataset, read_idx


def write_idx(path, array, compress=True):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


def make_mnist_folder(folder, n_train=40, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    for part, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{part}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{part}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


def test_read_idx_round_trips_gzipped_and_plain(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    write_idx(tmp_path / "a", a, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), a)


def test_mnist_from_an_idx_folder_keeps_its_split_and_scales_to_unit(tmp_path):
    data = load_dataset("mnist", dir=str(make_mnist_folder(tmp_path / "mnist")))
    assert data.X_train.shape == (40, 784) and data.X_test.shape == (10, 784)
    assert data.X_train.dtype == np.float32 and 0 <= data.X_train.min() and data.X_train.max() <= 1
    np.testing.assert_array_equal(data.y_train, np.arange(40) % 10)
    assert data.fingerprint.startswith("mnist-40x784-")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing_dir", "dataset.dir: .* is not a folder"),
        ("missing_file", "dataset.dir: .* has no t10k-labels-idx1-ubyte"),
        ("bad_magic", "is not an unsigned-byte IDX file"),
        ("truncated", "holds .* bytes of data, its header says"),
        ("not_gzip", "cannot read IDX file"),
    ],
)
def test_broken_idx_folders_raise_one_clear_error(tmp_path, damage, message):
    folder = make_mnist_folder(tmp_path / "mnist")
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    if damage == "missing_dir":
        folder = tmp_path / "nowhere"
    elif damage == "missing_file":
        labels.unlink()
    elif damage == "bad_magic":
        labels.write_bytes(gzip.compress(b"\x01\x02\x03\x04" + b"\x00" * 8))
    elif damage == "truncated":
        labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-3]))
    elif damage == "not_gzip":
        labels.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", dir=str(folder))


def test_mnist_5k_is_offline_and_stratified():
    data = load_dataset("mnist_5k", n_samples=1000, seed=3)
    assert data.X_train.shape == (1000, 784) and data.X_test.shape == (1000, 784)
    np.testing.assert_array_equal(np.bincount(data.y_train), [100] * 10)
    assert data.fingerprint == load_dataset("mnist_5k", n_samples=1000, seed=3).fingerprint
    assert data.fingerprint != load_dataset("mnist_5k", n_samples=1000, seed=4).fingerprint


def test_digits_are_8x8_scaled_to_unit():
    data = load_dataset("digits")
    assert data.image_shape == (8, 8) and data.X_train.shape[1] == 64
    assert data.X_train.max() == pytest.approx(1.0)
