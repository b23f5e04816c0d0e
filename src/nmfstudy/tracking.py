"""MLflow: the store, experiments, runs, and what a run logs.

The only module of the library that knows MLflow. The default store is a SQLite
database plus an artifact folder in the project root, so that plain `mlflow ui`
started there shows everything.
"""
from __future__ import annotations

import fcntl
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote

import mlflow
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis

DB_NAME = "mlflow.db"
ARTIFACT_DIR = "mlruns"
PARENT_RUN_FILE = ".mlflow_parent_run_id"
ERROR_TAG = "error"


class TrackingError(RuntimeError):
    """The store cannot be reached or used; the message names tracking.uri."""


@dataclass(frozen=True)
class Store:
    tracking_uri: str
    artifact_root: Path | None  # where a local store keeps artifacts; None: the server decides


def resolve_store(uri: str | None, project_root: str | Path) -> Store:
    """The store a run logs to: `uri`, or SQLite in the project root; artifacts beside a SQLite file."""
    if not uri:
        root = Path(project_root).resolve()
        return Store(f"sqlite:///{root / DB_NAME}", root / ARTIFACT_DIR)
    if uri.startswith("sqlite:///"):
        db = Path(unquote(uri.removeprefix("sqlite:///"))).expanduser().resolve()
        return Store(f"sqlite:///{db}", db.parent / ARTIFACT_DIR)
    if uri.startswith(("http://", "https://", "databricks", "postgresql", "mysql", "mssql")):
        return Store(uri, None)
    raise TrackingError(
        f"tracking.uri must be sqlite:///path/to/mlflow.db, an http(s):// tracking server or a database URL; got {uri!r}"
    )


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_store(store: Store) -> MlflowClient:
    """A client whose store is ready: schema created (once, under a lock) and reachable."""
    mlflow.set_tracking_uri(store.tracking_uri)
    try:
        if store.tracking_uri.startswith("sqlite:///"):
            db = Path(store.tracking_uri.removeprefix("sqlite:///"))
            db.parent.mkdir(parents=True, exist_ok=True)
            # Two processes creating the schema of a new SQLite store at once break its migration,
            # and MLflow creates it as soon as a client is made: so make the client under the lock.
            with _file_lock(db.with_name(db.name + ".lock")):
                client = MlflowClient(store.tracking_uri)
                client.search_experiments(max_results=1)
        else:
            client = MlflowClient(store.tracking_uri)
            with _quick_http_probe():
                client.search_experiments(max_results=1)
    except (MlflowException, OSError) as err:
        first_line = (getattr(err, "message", None) or str(err)).strip().splitlines()[0]
        raise TrackingError(f"tracking.uri {store.tracking_uri} cannot be used: {first_line}") from None
    return client


@contextmanager
def _quick_http_probe() -> Iterator[None]:
    """MLflow retries a dead server for minutes; the first probe of a run should fail in seconds."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {key: os.environ.get(key) for key in quick}
    os.environ.update(quick)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def experiment_id(client: MlflowClient, store: Store, name: str) -> str:
    """The id of experiment `name`, created if missing (safe when parallel jobs race to create it)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if store.artifact_root is not None:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        location = (store.artifact_root / slug).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'method': {'tol': 1e-4}} -> {'method.tol': 1e-4}; lists are kept whole."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


@contextmanager
def run(
    client: MlflowClient,
    experiment: str,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    store: Store,
) -> Iterator[mlflow.ActiveRun]:
    """An active MLflow run that ends FINISHED, FAILED (with the error as a tag) or KILLED, never RUNNING."""
    exp_id = experiment_id(client, store, experiment)
    active = mlflow.start_run(experiment_id=exp_id, run_name=run_name, parent_run_id=parent_run_id, tags=tags)
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        yield active
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        mlflow.set_tag(ERROR_TAG, "interrupted")
        raise
    except BaseException as err:
        mlflow.set_tag(ERROR_TAG, f"{type(err).__name__}: {err}"[:5000])
        raise
    finally:
        mlflow.end_run(status)


def log_params(params: dict[str, Any]) -> None:
    """Log params (values rendered as text, None as 'null') in batches."""
    items = [Param(key, "null" if value is None else str(value)) for key, value in params.items()]
    client, run_id = MlflowClient(), mlflow.active_run().info.run_id
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def log_metrics(metrics: dict[str, float]) -> None:
    mlflow.log_metrics({key: float(value) for key, value in metrics.items()})


def log_history(name: str, values) -> None:
    """One metric with a step per value (step 1 = first iteration), e.g. the loss per iteration."""
    now = get_current_time_millis()
    metrics = [Metric(name, float(v), now, step) for step, v in enumerate(values, start=1)]
    client, run_id = MlflowClient(), mlflow.active_run().info.run_id
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def log_figure(figure, artifact_file: str) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_figure(figure, artifact_file, save_kwargs={"dpi": 90})
    plt.close(figure)


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def set_tags(tags: dict[str, Any]) -> None:
    mlflow.set_tags({key: str(value) for key, value in tags.items()})


# --- multirun parents -------------------------------------------------------------

def start_parent_run(client: MlflowClient, store: Store, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """Create the run that the jobs of one sweep nest under; returns its id (left RUNNING)."""
    exp_id = experiment_id(client, store, experiment)
    parent = client.create_run(exp_id, run_name=run_name, tags=tags)
    return parent.info.run_id


def end_parent_run(client: MlflowClient, run_id: str, status: str = "FINISHED") -> None:
    client.set_terminated(run_id, status)


def write_parent_run_id(sweep_dir: str | Path, run_id: str) -> None:
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=sweep_dir, delete=False) as tmp:
        tmp.write(run_id)
    os.replace(tmp.name, sweep_dir / PARENT_RUN_FILE)


def read_parent_run_id(sweep_dir: str | Path) -> str | None:
    path = Path(sweep_dir) / PARENT_RUN_FILE
    return path.read_text().strip() if path.exists() else None
