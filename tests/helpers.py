"""What the tests share: running the real entry point, reading the store, waiting, making data.

Fixtures live in conftest.py; the real servers in servers.py; everything else here.
"""
from __future__ import annotations

import gzip
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import preloaded

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def made_store(db: Path) -> None:
    """Put an empty MLflow store, its schema already made, at `db` (unless one is there).

    Making MLflow's schema (its migrations) costs a few seconds per store; the tests that are
    about a first start on a new store pass ``fresh_store=True`` to `run_train` instead.
    """
    if db.exists():
        return
    import mlflow
    from mlflow.tracking import MlflowClient

    template = Path(tempfile.gettempdir()) / f"nmfstudy-tests-empty-store-mlflow-{mlflow.__version__}.db"
    if not template.exists():
        # made aside, then renamed: a parallel test worker never copies half a file
        fd, building = tempfile.mkstemp(dir=template.parent, suffix=".db")
        os.close(fd)
        os.unlink(building)
        MlflowClient(f"sqlite:///{building}").search_experiments()
        os.replace(building, template)
    shutil.copyfile(template, db)


# One BLAS and OpenMP thread for the end-to-end runs: their data are tiny, and two pytest workers already keep both
# cores busy, so a second thread only spins. Measured on a lean run (the preloaded interpreter, idle machine): mnist_5k
# NMF 1.96 CPU s against 2.29, digits GNMF 1.41 against 2.06, a 3-trial study 3.63 against 5.05, wall time no longer.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# A run's figures and model cost about 1.2 of its 4 CPU seconds (matplotlib, and MLflow's scan of every
# installed distribution when it writes a model's requirements); a test that does not look at them leaves them out.
LEAN = ("tracking.figures=none", "tracking.model=none")


def run_train(tmp_path: Path, *overrides: str, multirun: bool = False, timeout: int = 300,
              script: str = "src/train.py", env: dict | None = None, fresh_store: bool = False,
              figures_and_model: bool = False, fresh_interpreter: bool = False) -> subprocess.CompletedProcess:
    """`python src/train.py [-m] overrides...` logging to <tmp_path>/mlflow.db, outputs under tmp_path.

    The script runs in a child of an interpreter that has made its imports already (tests/preloaded.py),
    or, with `fresh_interpreter`, in a new one; with one BLAS thread (`ONE_THREAD`) unless `env` says
    otherwise. The store there starts as a copy of an empty one (`made_store`), or, with `fresh_store`,
    is left for the run to make. Without `figures_and_model` the run draws no figures and logs no
    model (`LEAN`), unless the overrides set `tracking.figures` or `tracking.model` themselves.
    """
    args = [sys.executable, script]
    if multirun:
        args += ["-m", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    else:
        args += [f"hydra.run.dir={tmp_path / 'run'}"]
    if not any(o.startswith("tracking.uri=") for o in overrides):
        args.append(f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}")
        if not fresh_store:
            made_store(tmp_path / "mlflow.db")
    if not figures_and_model and not any(o.startswith(("tracking.figures=", "tracking.model=")) for o in overrides):
        args += LEAN
    args += overrides
    full_env = run_env(env)
    if fresh_interpreter:
        return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)
    return preloaded.run_script(args, ROOT, full_env, timeout)


def run_env(extra: dict | None = None) -> dict[str, str]:
    """The environment of a test's run of an entry point: the test's own without MLFLOW_TRACKING_URI (the run's
    store is the one its overrides name) or HYDRA_FULL_ERROR (the user's one-line errors), unbuffered output and
    one BLAS thread (`ONE_THREAD`), then `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    return {**env, "PYTHONUNBUFFERED": "1", **ONE_THREAD, **(extra or {})}


def default_sigint() -> None:
    """preexec_fn for a child that the test interrupts with SIGINT, as Ctrl-C does.

    A background job of a non-interactive shell (`pytest &` in a script) starts with SIGINT
    ignored, Python keeps that, and children inherit it: their Ctrl-C would then do nothing.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def mlflow_runs(tmp_path: Path, experiment: str = "nmfstudy"):
    """All runs of `experiment` in the temporary store, newest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], max_results=1000)


def artifact_paths(tmp_path: Path, run, folder: str = "figures") -> set[str]:
    """The paths of a run's artifacts in `folder` of the temporary store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return {a.path for a in client.list_artifacts(run.info.run_id, folder)}


def wait_until(condition, what: str, process: subprocess.Popen | None = None, timeout: float = 180,
               interval: float = 0.2):
    """Poll `condition()` until it returns something other than None or False, and return that.

    Fails when `timeout` seconds pass first, or when `process` (if given) exits first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found is not None and found is not False:
            return found
        if process is not None and process.poll() is not None:
            output = process.stdout.read()[-3000:] if process.stdout else ""
            raise AssertionError(f"exited {process.returncode} before {what}:\n{output}")
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    """Whether an HTTP GET of `url` answers 200 (a server's /ping or /health)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def the_one_line(result: subprocess.CompletedProcess) -> str:
    """The run ended in exactly one line on stderr, with a non-zero exit and no traceback."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# ----------------------------------------------------------------------------- MNIST IDX files

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


def corrupt_deflate(path):
    """Flip bytes inside the deflate stream of a gzip file (past its 10-byte header): zlib.error on reading."""
    data = bytearray(gzip.compress(gzip.decompress(path.read_bytes()), mtime=0))
    data[12:40] = bytes(b ^ 0xFF for b in data[12:40])
    path.write_bytes(bytes(data))


def write_typed_idx(path, array, type_code, dtype):
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(dtype).tobytes()))


# ----------------------------------------------------------------------------- a folder of images

def quadrant_image(shape, which: int, rng) -> np.ndarray:
    """A uint8 grayscale image of `shape`: faint noise, one bright quadrant (0: top left, 1: bottom right)."""
    h, w = shape
    image = rng.integers(0, 40, size=shape)
    rows, cols = (slice(0, h // 2), slice(0, w // 2)) if which == 0 else (slice(h // 2, h), slice(w // 2, w))
    image[rows, cols] = rng.integers(200, 256, size=image[rows, cols].shape)
    return image.astype(np.uint8)


def make_image_folder(folder: Path, shape=(20, 24), labels=("top_left", "bottom_right"), n_per_label: int = 12,
                      seed: int = 0) -> Path:
    """PNG files of quadrant images: one sub-folder per label, or (labels=None) 2 x n_per_label in the folder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for which in range(2):
        place = folder / labels[which] if labels else folder
        place.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_label):
            Image.fromarray(quadrant_image(shape, which, rng)).save(place / f"{which}_{i:03d}.png")
    return folder
