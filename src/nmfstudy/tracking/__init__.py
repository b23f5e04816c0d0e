"""MLflow: the store, experiments, runs, and what a run logs.

The only module of the library that knows MLflow. The default store is a SQLite
database plus an artifact folder in the project root, so that plain `mlflow ui`
started there shows everything.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import sqlite3
import tempfile
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote

import mlflow
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis

from nmfstudy.metrics import LABEL_METRICS
from nmfstudy.study_names import (
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    HEARTBEAT_INTERVAL_TAG,
    HEARTBEAT_TAG,
    HOST_TAG,
    KIND_STUDY,
    KIND_TAG,
    PARENT_RUN_TAG,
    PID_START_TAG,
    PID_TAG,
    RUN_NAME_TAG,
    RUNS_VIEW_KEY,
    SHARED_VIEW_PREFIX,
    owner,
    process_alive,
    run_page,
    runs_page,
    ui_base,
)

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"
ARTIFACT_DIR = "mlruns"
PARENT_RUN_FILE = ".mlflow_parent_run_id"


class TrackingError(RuntimeError):
    """The store cannot be reached or used; the message names tracking.uri."""


@dataclass(frozen=True)
class Store:
    """Where runs are logged.

    Parameters
    ----------
    tracking_uri : str
        MLflow's tracking URI: sqlite:///ABSOLUTE/PATH, a tracking server or a database.
    artifact_root : Path or None
        Where a local store keeps artifacts; None: the server decides.
    """

    tracking_uri: str
    artifact_root: Path | None


def resolve_store(uri: str | None, project_root: str | Path) -> Store:
    """The store a run logs to: `uri`, or SQLite in the project root; artifacts beside a SQLite file.

    Parameters
    ----------
    uri : str or None
        tracking.uri; None or "": `mlflow.db` in `project_root`.
    project_root : str or Path
        The project folder.

    Returns
    -------
    Store
        With an absolute SQLite path.

    Raises
    ------
    TrackingError
        For a URI of another kind.
    """
    if not uri:
        root = Path(project_root).resolve()
        return Store(f"sqlite:///{root / DB_NAME}", root / ARTIFACT_DIR)
    if uri.startswith("sqlite:///"):
        db = Path(unquote(uri.removeprefix("sqlite:///"))).expanduser().resolve()
        return Store(f"sqlite:///{db}", db.parent / ARTIFACT_DIR)
    if uri.startswith(("http://", "https://", "databricks", "postgresql", "mysql", "mssql")):
        return Store(uri, None)
    raise TrackingError(
        "tracking.uri must be sqlite:///path/to/mlflow.db, an http(s):// tracking server or a database URL; "
        f"got {uri!r}"
    )


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


SQLITE_HEADER = b"SQLite format 3\x00"


def _check_sqlite_file(uri: str, db: Path) -> None:
    """A folder or a file that is not SQLite makes MLflow retry for minutes, then fail in 100 lines."""
    if db.is_dir():
        raise TrackingError(f"tracking.uri {uri} is a folder, not a database file: point it at a file, "
                            f"e.g. sqlite:///{db / DB_NAME}")
    if db.is_file() and db.stat().st_size > 0:
        with open(db, "rb") as handle:
            if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                raise TrackingError(f"tracking.uri {uri}: {db} is not an SQLite database; move it away "
                                    "or point tracking.uri at another file")


def _store_problem(store: Store, err: BaseException) -> TrackingError:
    """One line for an error of opening a store, with what to do where we know it."""
    first = (getattr(err, "message", None) or str(getattr(err, "orig", None) or err)).strip().splitlines()
    first_line = first[0] if first else type(err).__name__
    hint = ""
    if any(sign in first_line for sign in ("already exists", "no such table", "no such column", "alembic")):
        if store.tracking_uri.startswith("sqlite:///"):
            hint = (f"; its schema is half-made (an earlier start that failed, e.g. on a full disk): move "
                    f"{store.tracking_uri.removeprefix('sqlite:///')} away (mv it to a backup name) and run again "
                    "to start a new store")
        else:
            hint = "; its schema is half-made: ask its administrator to run `mlflow db upgrade`"
    return TrackingError(f"tracking.uri {store.tracking_uri} cannot be used: {first_line}{hint}")


def _set_aside_if_half_made(db: Path) -> None:
    """A store whose first start failed midway (a full disk) holds tables but no schema version, and
    MLflow cannot finish it ("table spans already exists"): without runs, move it aside for a new one.

    Checked before MLflow opens the file: its engine, once made, keeps the file open.
    """
    if not db.is_file() or db.stat().st_size == 0:
        return
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
            tables = {row[0] for row in connection.execute("select name from sqlite_master where type = 'table'")}
            if not tables or "alembic_version" in tables:
                return
            if "runs" in tables and connection.execute("select count(*) from runs").fetchone()[0]:
                return  # it holds runs: never move those away; opening it says what to do
    except sqlite3.Error:
        return
    aside = db.with_name(f"{db.name}.half-made-{time.strftime('%Y%m%d-%H%M%S')}")
    db.rename(aside)
    log.warning("the MLflow store %s had a half-made schema and no runs (an earlier first start failed, e.g. on a "
                "full disk): moved it to %s and made a new store", db, aside)


def open_store(store: Store) -> MlflowClient:
    """A client whose store is ready: schema created (once, under a lock) and reachable.

    Parameters
    ----------
    store : Store
        The store; MLflow's global tracking URI is set to it.

    Returns
    -------
    MlflowClient
        A client of the store.

    Raises
    ------
    TrackingError
        One line when the store cannot be used (a folder, not SQLite, a half-made schema, a dead server).
    """
    from sqlalchemy.exc import SQLAlchemyError

    mlflow.set_tracking_uri(store.tracking_uri)
    try:
        if store.tracking_uri.startswith("sqlite:///"):
            db = Path(store.tracking_uri.removeprefix("sqlite:///"))
            _check_sqlite_file(store.tracking_uri, db)
            db.parent.mkdir(parents=True, exist_ok=True)
            # Two processes creating the schema of a new SQLite store at once break its migration,
            # and MLflow creates it as soon as a client is made: so make the client under the lock.
            with _file_lock(db.with_name(db.name + ".lock")):
                _set_aside_if_half_made(db)
                client = MlflowClient(store.tracking_uri)
                client.search_experiments(max_results=1)
        else:
            client = MlflowClient(store.tracking_uri)
            with _quick_http_probe():
                client.search_experiments(max_results=1)
    except (MlflowException, OSError, SQLAlchemyError) as err:
        raise _store_problem(store, err) from None
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
    """The id of experiment `name`, created if missing (safe when parallel jobs race to create it).

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    store : Store
        The store (a local one gets the experiment's artifacts under its artifact root).
    name : str
        The experiment's name.

    Returns
    -------
    str
        The experiment's id.

    Raises
    ------
    TrackingError
        When the experiment was deleted (the message says how to restore it).
    """
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise TrackingError(
                f"tracking.experiment {name!r} was deleted (experiment id {found.experiment_id}): restore it with "
                f"`mlflow experiments restore --experiment-id {found.experiment_id}`, or choose another "
                "tracking.experiment")
        if not _UI_TAGS.keys() <= found.tags.keys():  # made by an older version, or by hand
            _set_ui_tags(client, found.experiment_id)
        return found.experiment_id
    location = None
    if store.artifact_root is not None:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        location = (store.artifact_root / slug).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=_UI_TAGS)
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def ui_hint(store: Store, project_root: str | Path) -> str:
    """How to start the MLflow UI that shows `store`: nothing for a tracking server (it is its own UI).

    Parameters
    ----------
    store : Store
        The store.
    project_root : str or Path
        The project folder (plain `mlflow ui` there reads its `mlflow.db`).

    Returns
    -------
    str
        E.g. "start `mlflow ui` in /path/to/project, then ", or "".
    """
    if not store.tracking_uri.startswith("sqlite:///"):
        return ""
    root = Path(project_root).resolve()
    if Path(store.tracking_uri.removeprefix("sqlite:///")) == root / DB_NAME:
        return f"start `mlflow ui` in {root}, then "
    return f"start `mlflow ui --backend-store-uri {store.tracking_uri}`, then "


# What `mlflow ui` shows of the experiment: its runs table (not MLflow 3's GenAI overview), and the view
# the project's links open: the metrics and the chosen method, k and data as columns, best accuracy first.
_RUNS_VIEW = {
    "orderByKey": "metrics.`accuracy`",
    "orderByAsc": False,
    "selectedColumns": [f"params.`{p}`" for p in ("dataset", "dataset.n_samples", "method", "k")]
    + [f"metrics.`{m}`" for m in (*LABEL_METRICS, "loss", "fit_time_s", "n_iter")],
}
_UI_TAGS = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, SHARED_VIEW_PREFIX + RUNS_VIEW_KEY: json.dumps(_RUNS_VIEW)}


def _set_ui_tags(client: MlflowClient, exp_id: str) -> None:
    """Tag an experiment so that `mlflow ui` opens it on its runs table, in the project's view."""
    try:
        for key, value in _UI_TAGS.items():
            client.set_experiment_tag(exp_id, key, value)
    except MlflowException as err:  # a read-only server: the links still open the runs table
        log.debug("could not tag experiment %s: %s", exp_id, err)


def ui_link(store: Store, experiment_id: str, run_id: str | None = None) -> str:
    """Where the MLflow UI shows an experiment's runs table, or one run.

    Parameters
    ----------
    store : Store
        The store (a tracking server is its own UI; else plain `mlflow ui` at 127.0.0.1:5000).
    experiment_id : str
        The experiment.
    run_id : str or None
        A run; None: the runs table.

    Returns
    -------
    str
        The address.
    """
    base = ui_base(store.tracking_uri)
    return runs_page(base, experiment_id) if run_id is None else run_page(base, experiment_id, run_id)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'method': {'tol': 1e-4}} -> {'method.tol': 1e-4}; lists are kept whole.

    Parameters
    ----------
    tree : object
        A nested dict (a resolved config), or a leaf.
    prefix : str
        The key path so far.

    Returns
    -------
    dict
        Dotted key -> leaf value.
    """
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


# --- which process owns a run, and which runs are dead ------------------------------

def process_tags() -> dict[str, str]:
    """Tags naming this process as the owner of a run: host, pid and the pid's start time.

    Returns
    -------
    dict
        `study_names.owner()`: HOST_TAG, PID_TAG, PID_START_TAG.
    """
    return owner()


def run_alive(tags: dict[str, str], start_time_ms: int, now_ms: int, grace_s: float) -> bool | None:
    """Whether the process that owns a RUNNING run lives: True, False, or None when nothing tells.

    On this host the process id answers; for another host, the run's last heartbeat (or its start)
    older than `grace_s` means dead. Runs without an owner or a heartbeat are unknown.

    Parameters
    ----------
    tags : dict
        The run's tags.
    start_time_ms : int
        The run's start (ms since the epoch).
    now_ms : int
        Now (ms since the epoch).
    grace_s : float
        Seconds without a heartbeat after which a run of another host is dead.

    Returns
    -------
    bool or None
        Alive, dead, or unknown.
    """
    if tags.get(HOST_TAG) == socket.gethostname() and tags.get(PID_TAG, "").isdigit():
        return process_alive(int(tags[PID_TAG]), tags.get(PID_START_TAG) or None)
    if HEARTBEAT_INTERVAL_TAG in tags:
        last = int(tags.get(HEARTBEAT_TAG) or start_time_ms or 0)
        return now_ms - last <= grace_s * 1000
    return None


def kill_run(client: MlflowClient, run_id: str, reason: str, status: str = "KILLED") -> bool:
    """End a run that is still RUNNING as KILLED (or `status`) with `reason` as its error tag.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    run_id : str
        The run.
    reason : str
        Its error tag.
    status : str
        How it ends: KILLED or FAILED.

    Returns
    -------
    bool
        True when it was RUNNING and is ended now.
    """
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        client.set_tag(run_id, ERROR_TAG, reason[:5000])
        client.set_terminated(run_id, status)
        return True
    except MlflowException as err:  # deleted, or another command ended it first
        log.debug("could not end run %s: %s", run_id, err)
        return False


def kill_running_children(client: MlflowClient, parent_run_id: str, reason: str) -> int:
    """End the RUNNING runs nested under `parent_run_id` as KILLED.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    parent_run_id : str
        The parent run.
    reason : str
        Their error tag.

    Returns
    -------
    int
        How many were ended.
    """
    experiment = client.get_run(parent_run_id).info.experiment_id
    query = f"attributes.status = 'RUNNING' and tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'"
    return sum(kill_run(client, r.info.run_id, reason) for r in client.search_runs([experiment], query))


def end_dead_runs(client: MlflowClient, experiment_ids: list[str], grace_s: float = 300.0) -> list[str]:
    """Mark KILLED the RUNNING runs whose process is gone; log one line about them.

    A process killed by SIGKILL or the out-of-memory killer cannot end its run; the next command
    that opens the experiment does it. A study's run lives while any of its trials' runs lives.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    experiment_ids : list of str
        The experiments to look in.
    grace_s : float
        Seconds without a heartbeat after which a run of another host is dead.

    Returns
    -------
    list of str
        The ids of the runs ended.
    """
    if not experiment_ids:
        return []
    running = client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=10000)
    now = get_current_time_millis()
    alive = {r.info.run_id: run_alive(r.data.tags, r.info.start_time, now, grace_s) for r in running}
    children: dict[str, list[str]] = {}
    for r in running:
        children.setdefault(r.data.tags.get(PARENT_RUN_TAG, ""), []).append(r.info.run_id)
    dead = []
    for r in running:
        verdict = alive[r.info.run_id]
        # Several workers share a study's run: it lives while any of its trials' runs may live.
        trials = children.get(r.info.run_id, [])
        if r.data.tags.get(KIND_TAG) == KIND_STUDY and any(alive[c] is not False for c in trials):
            verdict = True
        if verdict is False:
            dead.append(r)
    for r in dead:
        owner = f"process {r.data.tags.get(PID_TAG, '?')} on {r.data.tags.get(HOST_TAG, '?')}"
        kill_run(client, r.info.run_id, f"{owner} ended without closing the run (killed, out of memory or lost)")
    if dead:
        log.warning("marked %d dead run(s) KILLED (their process is gone): %s", len(dead),
                    ", ".join(f"{r.info.run_id[:8]} {r.info.run_name or ''}".strip() for r in dead[:10])
                    + (" ..." if len(dead) > 10 else ""))
    return [r.info.run_id for r in dead]


def end_dead_runs_in(client: MlflowClient, experiment: str, grace_s: float | None = None) -> list[str]:
    """`end_dead_runs` for the experiment named `experiment`, if it exists.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    experiment : str
        The experiment's name.
    grace_s : float or None
        As for `end_dead_runs`; None: 300 s.

    Returns
    -------
    list of str
        The ids of the runs ended.
    """
    found = client.get_experiment_by_name(experiment)
    return end_dead_runs(client, [found.experiment_id], grace_s or 300.0) if found is not None else []


class Heartbeat:
    """Tags runs with the time every `interval_s`, so that other machines can tell they are alive.

    Only for a tracking server or database: on one machine (SQLite) the process id is enough.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    store : Store
        The store; a SQLite one gets no heartbeat.
    interval_s : float
        Seconds between two beats; 0: none.
    """

    def __init__(self, client: MlflowClient, store: Store, interval_s: float) -> None:
        self.client, self.interval_s = client, float(interval_s)
        self.enabled = not store.tracking_uri.startswith("sqlite") and self.interval_s > 0
        self.run_ids: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tags(self) -> dict[str, str]:
        """The tags a new run gets so that readers know it beats.

        Returns
        -------
        dict
            The interval and the first beat; empty when disabled.
        """
        if not self.enabled:
            return {}
        return {HEARTBEAT_INTERVAL_TAG: f"{self.interval_s:g}", HEARTBEAT_TAG: str(get_current_time_millis())}

    def add(self, run_id: str) -> None:
        """Beat for a run from now on (the thread starts with the first run).

        Parameters
        ----------
        run_id : str
            The run.
        """
        if not self.enabled:
            return
        self.run_ids.add(run_id)
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="mlflow-heartbeat", daemon=True)
            self._thread.start()

    def discard(self, run_id: str) -> None:
        """Stop beating for a run.

        Parameters
        ----------
        run_id : str
            The run.
        """
        self.run_ids.discard(run_id)

    def stop(self) -> None:
        """Stop beating (the thread ends at its next wake-up)."""
        self._stop.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            for run_id in list(self.run_ids):
                try:
                    self.client.set_tag(run_id, HEARTBEAT_TAG, str(get_current_time_millis()))
                except Exception as err:  # a restarting server: the next beat may get through
                    log.debug("heartbeat of run %s failed: %s", run_id, err)


@contextmanager
def run(
    client: MlflowClient,
    experiment: str,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    store: Store,
    run_id: str | None = None,
    heartbeat_s: float = 0.0,
) -> Iterator[mlflow.ActiveRun]:
    """An active MLflow run that ends FINISHED, FAILED (with the error as a tag) or KILLED, never RUNNING.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    experiment : str
        The experiment of a new run.
    run_name : str or None
        Its name.
    parent_run_id : str or None
        The run it nests under (a sweep's parent run).
    tags : dict or None
        Its tags (the owner and heartbeat tags are added).
    store : Store
        The store.
    run_id : str or None
        A run made for this job beforehand (an Optuna trial's run, made when the trial starts) to
        continue; this process then becomes its owner.
    heartbeat_s : float
        Seconds between two heartbeat tags (tracking servers only); 0: none.

    Yields
    ------
    mlflow.ActiveRun
        The active run.
    """
    heartbeat = Heartbeat(client, store, heartbeat_s)
    tags = {**(tags or {}), **process_tags(), **heartbeat.tags()}
    if run_id is not None:
        active = mlflow.start_run(run_id=run_id)
        mlflow.set_tags({**tags, **({RUN_NAME_TAG: run_name} if run_name else {})})
    else:
        exp_id = experiment_id(client, store, experiment)
        active = mlflow.start_run(experiment_id=exp_id, run_name=run_name, parent_run_id=parent_run_id, tags=tags)
    heartbeat.add(active.info.run_id)
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        yield active
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt as err:
        status = RunStatus.to_string(RunStatus.KILLED)
        reason = getattr(err, "reason", None)  # why a scheduler stopped the job (study_names.Terminated)
        mlflow.set_tag(ERROR_TAG, f"interrupted: {reason}" if reason else "interrupted")
        raise
    except BaseException as err:
        mlflow.set_tag(ERROR_TAG, f"{type(err).__name__}: {err}"[:5000])
        raise
    finally:
        heartbeat.stop()
        mlflow.end_run(status)


def log_params(params: dict[str, Any]) -> None:
    """Log params of the active run (values rendered as text, None as 'null') in batches.

    Parameters
    ----------
    params : dict
        Name -> value.
    """
    items = [Param(key, "null" if value is None else str(value)) for key, value in params.items()]
    client, run_id = MlflowClient(), mlflow.active_run().info.run_id
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def log_metrics(metrics: dict[str, float]) -> None:
    """Log metrics of the active run.

    Parameters
    ----------
    metrics : dict
        Name -> number.
    """
    mlflow.log_metrics({key: float(value) for key, value in metrics.items()})


def log_history(name: str, values) -> None:
    """Log one metric with a step per value (step 1 = first iteration), e.g. the loss per iteration.

    Parameters
    ----------
    name : str
        The metric.
    values : iterable of float
        Its value at each step.
    """
    now = get_current_time_millis()
    metrics = [Metric(name, float(v), now, step) for step, v in enumerate(values, start=1)]
    client, run_id = MlflowClient(), mlflow.active_run().info.run_id
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def log_figure(figure, artifact_file: str) -> None:
    """Log a matplotlib Figure to the active run as a PNG artifact (90 dpi).

    Parameters
    ----------
    figure : matplotlib.figure.Figure
        The figure; one that pyplot made (and keeps) is closed once logged.
    artifact_file : str
        Its path among the run's artifacts, e.g. "figures/components.png".
    """
    mlflow.log_figure(figure, artifact_file, save_kwargs={"dpi": 90})
    if getattr(figure.canvas, "manager", None) is not None:  # pyplot's: it keeps the figure until closed
        import matplotlib.pyplot as plt  # already imported by whoever made it

        plt.close(figure)


def log_text(text: str, artifact_file: str) -> None:
    """Log a text artifact of the active run.

    Parameters
    ----------
    text : str
        Its content.
    artifact_file : str
        Its path among the run's artifacts, e.g. "config.yaml".
    """
    mlflow.log_text(text, artifact_file)


def set_tags(tags: dict[str, Any]) -> None:
    """Set tags of the active run (values as text).

    Parameters
    ----------
    tags : dict
        Name -> value.
    """
    mlflow.set_tags({key: str(value) for key, value in tags.items()})


# --- multirun parents -------------------------------------------------------------

def start_parent_run(client: MlflowClient, store: Store, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """Create the run that the jobs of one sweep nest under, left RUNNING.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    store : Store
        The store.
    experiment : str
        The experiment's name.
    run_name : str
        The run's name.
    tags : dict
        Its tags (the owner tags are added).

    Returns
    -------
    str
        The run's id.
    """
    exp_id = experiment_id(client, store, experiment)
    parent = client.create_run(exp_id, run_name=run_name, tags={**tags, **process_tags()})
    return parent.info.run_id


def end_parent_run(client: MlflowClient, run_id: str, status: str = "FINISHED") -> None:
    """End a sweep's parent run.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    run_id : str
        The run.
    status : str
        FINISHED, FAILED or KILLED.
    """
    client.set_terminated(run_id, status)


def best_child(client: MlflowClient, parent_run_id: str, metric: str, maximize: bool = True):
    """The finished run nested under `parent_run_id` with the best `metric`.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    parent_run_id : str
        The parent run.
    metric : str
        The metric that ranks them.
    maximize : bool
        Whether larger is better.

    Returns
    -------
    mlflow.entities.Run or None
        None when no finished child has the metric.
    """
    experiment = client.get_run(parent_run_id).info.experiment_id
    query = f"attributes.status = 'FINISHED' and tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'"
    found = client.search_runs([experiment], query, max_results=1,
                               order_by=[f"metrics.`{metric}` {'DESC' if maximize else 'ASC'}"])
    return found[0] if found and metric in found[0].data.metrics else None


def write_parent_run_id(sweep_dir: str | Path, run_id: str) -> None:
    """Record the parent run's id in the sweep folder, where jobs in any process read it.

    Parameters
    ----------
    sweep_dir : str or Path
        The sweep folder (made if missing).
    run_id : str
        The parent run.
    """
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=sweep_dir, delete=False) as tmp:
        tmp.write(run_id)
    os.replace(tmp.name, sweep_dir / PARENT_RUN_FILE)


def read_parent_run_id(sweep_dir: str | Path) -> str | None:
    """The parent run's id recorded in the sweep folder.

    Parameters
    ----------
    sweep_dir : str or Path
        The sweep folder.

    Returns
    -------
    str or None
        None when the sweep has no parent run.
    """
    path = Path(sweep_dir) / PARENT_RUN_FILE
    return path.read_text().strip() if path.exists() else None
