"""The MLflow store: where runs are logged, opened ready (schema made once, under a lock) or refused in one line.

The default store is a SQLite database plus an artifact folder in the project root, so that plain
`mlflow ui` started there shows everything. A store whose first start failed midway is set aside
when it holds no runs.
"""
from __future__ import annotations

import fcntl
import logging
import os
import socket
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

# One logger for the package, as before it was split: log lines name nmfstudy.tracking.
log = logging.getLogger(__package__)

DB_NAME = "mlflow.db"
ARTIFACT_DIR = "mlruns"


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
    return TrackingError(f"tracking.uri {_shown(store.tracking_uri)} cannot be used: {first_line}{hint}")


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
            if not store.tracking_uri.startswith(("http://", "https://", "databricks")):
                _probe_database(store.tracking_uri)
            client = MlflowClient(store.tracking_uri)
            with _quick_http_probe():
                client.search_experiments(max_results=1)
    except ImportError as err:
        raise TrackingError(f"tracking.uri {_shown(store.tracking_uri)} needs a database driver that is not "
                            f"installed ({err}): pip install -e '.[cluster]', use postgresql+psycopg://...") from None
    except (MlflowException, OSError, SQLAlchemyError) as err:
        raise _store_problem(store, err) from None
    return client


DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}  # the servers' default ports
PROBE_TIMEOUT_S = 3  # with Python's start and the data, a dead server is one line within 10 s of the command


def _shown(uri: str) -> str:
    """A database URI as it may be printed: its password masked."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(uri).render_as_string(hide_password=True)
    except ArgumentError:
        return uri


def _probe_database(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Connect once, with a short timeout, before MLflow does: MLflow tries a database that does not
    answer 10 times, waiting twice as long each time (about 100 s), and logs each try's traceback.

    A server reached over TCP is first probed by a plain connect (its driver may wait far longer
    on a host that drops packets); then one connection by SQLAlchemy says what the server answers
    (a wrong password, a missing database) without MLflow's retries.
    """
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.pool import NullPool

    url = make_url(uri)
    backend = url.get_backend_name()
    port = url.port or DB_PORTS.get(backend)
    if url.host and port:
        try:
            socket.create_connection((url.host, port), timeout=timeout_s).close()
        except OSError as err:
            reason = f"no answer within {timeout_s:g} s" if isinstance(err, TimeoutError) else err.strerror or err
            raise TrackingError(f"tracking.uri {_shown(uri)} cannot be used: nothing answers at {url.host}:{port} "
                                f"({reason}): start the database server or fix the URI") from None
    connect_args = {"connect_timeout": int(timeout_s)} if backend in ("postgresql", "mysql") else {}
    engine = create_engine(url, connect_args=connect_args, poolclass=NullPool)
    try:
        with engine.connect():
            pass
    except OperationalError as err:
        first = str(err.orig or err).strip().splitlines()[0]
        if "timeout" not in first.lower():
            raise
        raise TrackingError(f"tracking.uri {_shown(uri)} cannot be used: {url.host}:{port} took the connection but "
                            f"gave no database answer within {timeout_s:g} s ({first}): is that a {backend} server, "
                            "and is it up?") from None
    finally:
        engine.dispose()


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
