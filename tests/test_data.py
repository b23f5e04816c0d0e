import gzip

import numpy as np
import pytest
from helpers import corrupt_deflate, make_mnist_folder, write_idx, write_typed_idx

from nmfstudy.data import DataError, load_dataset, read_idx


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
        ("missing_dir", "dir: .* is not a folder"),
        ("missing_file", "dir: .* has no t10k-labels-idx1-ubyte"),
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


DAMAGES = {
    # name: (damage(folder), the file named, what the line says)
    "corrupt deflate stream": (lambda f: corrupt_deflate(f / "train-images-idx3-ubyte.gz"),
                               "train-images-idx3-ubyte.gz", "damaged or truncated gzip data (Error -3"),
    "gzip cut short": (lambda f: (f / "t10k-images-idx3-ubyte.gz").write_bytes(
        (f / "t10k-images-idx3-ubyte.gz").read_bytes()[:200]), "t10k-images-idx3-ubyte.gz",
        "damaged or truncated gzip data (Compressed file ended"),
    "bad crc": (lambda f: (f / "train-labels-idx1-ubyte.gz").write_bytes(
        (b := (f / "train-labels-idx1-ubyte.gz").read_bytes())[:-8] + bytes([b[-8] ^ 1]) + b[-7:]),
        "train-labels-idx1-ubyte.gz", "damaged or truncated gzip data (CRC check failed"),
    "header cut short": (lambda f: (f / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(bytes([0, 0, 8, 3, 0]))),
                         "train-labels-idx1-ubyte.gz", "is cut short: 5 bytes, less than the 16-byte header"),
    "20x20 train, 28x28 test": (lambda f: write_idx(f / "train-images-idx3-ubyte.gz", np.zeros((40, 20, 20))),
                                "t10k-images-idx3-ubyte.gz",
                                "holds 28x28 images but {folder}/train-images-idx3-ubyte.gz holds 20x20; "
                                "train and test images must be the same size"),
    "fewer labels than images": (lambda f: write_idx(f / "train-labels-idx1-ubyte.gz", np.arange(39) % 10),
                                 "train-labels-idx1-ubyte.gz",
                                 "holds 39 labels but {folder}/train-images-idx3-ubyte.gz holds 40 images"),
    "int32 labels": (lambda f: write_typed_idx(f / "t10k-labels-idx1-ubyte.gz", np.arange(10) * 100, 0x0C, ">i4"),
                     "t10k-labels-idx1-ubyte.gz",
                     "holds 32-bit integer values (IDX type 0x0C); MNIST IDX files hold unsigned bytes (type 0x08)"),
    "float images": (lambda f: write_typed_idx(f / "t10k-images-idx3-ubyte.gz", np.zeros((10, 28, 28)), 0x0D, ">f4"),
                     "t10k-images-idx3-ubyte.gz", "holds float32 values (IDX type 0x0D)"),
    "labels swapped for images": (lambda f: (f / "train-labels-idx1-ubyte.gz").write_bytes(
        (f / "train-images-idx3-ubyte.gz").read_bytes()), "train-labels-idx1-ubyte.gz",
        "holds an array of shape (40, 28, 28); labels must be one number per image"),
    "images of one dimension": (lambda f: write_idx(f / "t10k-images-idx3-ubyte.gz", np.zeros(10)),
                                "t10k-images-idx3-ubyte.gz",
                                "holds an array of shape (10,); images must be count x rows"),
    "no images": (lambda f: (write_idx(f / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28))),
                             write_idx(f / "t10k-labels-idx1-ubyte.gz", np.zeros(0))),
                  "t10k-images-idx3-ubyte.gz", "holds no images (shape (0, 28, 28))"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_or_unusual_idx_files_are_one_line_naming_the_file(tmp_path, damage):
    import zlib

    folder = make_mnist_folder(tmp_path / "mnist")
    spoil, name, message = DAMAGES[damage]
    spoil(folder)
    if damage == "corrupt deflate stream":  # the example of the issue: plain gzip raises zlib.error
        with pytest.raises(zlib.error):
            gzip.decompress((folder / name).read_bytes())
    with pytest.raises(DataError) as err:
        load_dataset("mnist", dir=str(folder))
    line = str(err.value)
    assert "\n" not in line and line.startswith("dir: ")
    assert f"{folder / name}" in line and message.format(folder=folder) in line


def test_idx_images_of_another_size_are_read_with_their_shape(tmp_path):
    folder = make_mnist_folder(tmp_path / "mnist")
    for part, n in (("train", 40), ("t10k", 10)):
        write_idx(folder / f"{part}-images-idx3-ubyte.gz", np.full((n, 20, 16), 255))
    data = load_dataset("mnist", dir=str(folder))
    assert data.image_shape == (20, 16) and data.X_train.shape == (40, 320) and data.X_test.shape == (10, 320)


def test_a_subsample_too_small_to_stratify_names_dataset_n_samples(tmp_path):
    with pytest.raises(DataError, match=r"n_samples must be at least the number of labels \(10\), so that "
                                        r"the subsample keeps every one; got 5"):
        load_dataset("digits", n_samples=5)
    folder = make_mnist_folder(tmp_path / "mnist")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.array([0] * 39 + [1]))  # digit 1 has one image
    with pytest.raises(DataError, match=r"n_samples=20: no stratified subsample of these labels: "):
        load_dataset("mnist", dir=str(folder), n_samples=20)
