"""Writing a cache file so that a parallel job never reads half of it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through a temporary file in its folder, then rename it into place.

    Parameters
    ----------
    path : Path
        The file to write; its folder is made if missing.
    write : callable
        ``write(file)`` writes the content to an open binary file (e.g. ``np.savez``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the whole new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
