"""Real servers for tests and benchmarks: a throwaway PostgreSQL and an `mlflow server` on it.

The setup of "Studies on many machines" (docs/DESIGN: one PostgreSQL with the databases
`optuna` and `mlflow`, one MLflow tracking server with proxied artifacts) on this machine,
on free ports of 127.0.0.1 only. No mocks: these are the real programs.

    from servers import local_study_servers          # bench scripts: sys.path.insert(0, "tests")

    with local_study_servers(tmp_dir) as s:
        s.optuna_url      # postgresql+psycopg://postgres@127.0.0.1:PORT/optuna
        s.mlflow_url      # http://127.0.0.1:PORT
        s.postgres.restart()

PostgreSQL refuses to run as root. As root the cluster belongs to the `postgres` user
(created if missing) and its commands run through `runuser -u postgres --`. Its data
directory lives in a fresh `tempfile.mkdtemp()` (short, so the Unix socket path fits, and
outside pytest's 0700 tmp folders, which `postgres` could not enter); `destroy()` copies the
server log into `base_dir` and deletes that directory. Anything still running when the
interpreter exits is stopped by an atexit hook.
"""
from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
PG_USER = "postgres"

_live: list = []  # servers started here and not stopped yet; stopped at exit


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- processes

def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def pid_alive(pid: int | None) -> bool:
    """The process exists and is not a zombie."""
    if not pid:
        return False
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, grandchildren, ...), found in /proc."""
    children: dict[int, list[int]] = {}
    for p in _all_pids():
        fields = _stat(p)
        if fields is not None and fields[0] not in ("Z", "X"):
            children.setdefault(int(fields[1]), []).append(p)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def process_group(pgid: int) -> set[int]:
    """Live processes whose process group is `pgid`."""
    found = set()
    for p in _all_pids():
        fields = _stat(p)
        if fields is not None and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            found.add(p)
    return found


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(lines[-n:])


# ----------------------------------------------------------------------------- PostgreSQL

def postgres_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: $PG_BINDIR, `pg_config --bindir`,
    /usr/lib/postgresql/<newest>/bin, or PATH; None when PostgreSQL is not installed."""
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], check=False, capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                  reverse=True)
    candidates += [Path(p) for p in versions]
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found:
            candidates.append(Path(found).resolve().parent)
    for d in candidates:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file() and (d / "postgres").is_file():
            return d
    return None


def servers_missing() -> str | None:
    """Why the study servers cannot start here (PostgreSQL or its driver psycopg missing), or None."""
    if postgres_bindir() is None:
        return "PostgreSQL is not installed (no initdb/pg_ctl; apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[cluster]')"
    return None


def _ensure_postgres_user() -> None:
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_USER], check=True,
                       capture_output=True)


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1:`port`, trust authentication, user `postgres`.

    Tuned for tests, not durability: fsync, synchronous_commit and full_page_writes are off.
    """

    def __init__(self, root: Path, port: int, bindir: Path, base_dir: Path | None = None,
                 max_connections: int = 200):
        self.root = Path(root)              # the mkdtemp folder; removed by destroy()
        self.data_dir = self.root / "data"
        self.log_path = self.data_dir / "log"
        self.port = port
        self.bindir = Path(bindir)
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.max_connections = max_connections
        self.as_root = os.geteuid() == 0

    # -- lifecycle

    @classmethod
    def start(cls, base_dir: str | os.PathLike, port: int | None = None,
              max_connections: int = 200) -> PostgresServer:
        """initdb a new cluster and start it; returns once it accepts connections.

        `base_dir` receives the server log (postgres.log) when the server is destroyed.
        """
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed: no initdb/pg_ctl found "
                               "(apt-get install postgresql, or set PG_BINDIR)")
        base_dir = Path(base_dir)
        base_dir.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="nmfstudy-pg-"))
        server = cls(root, port or free_port(), bindir, base_dir, max_connections)
        try:
            if server.as_root:
                _ensure_postgres_user()
                pw = pwd.getpwnam(PG_USER)
                os.chown(root, pw.pw_uid, pw.pw_gid)  # 0700, owned by postgres: only it enters
            server._run("initdb", "-D", str(server.data_dir), "--auth=trust", "-U", PG_USER,
                        "--no-sync", "--locale=C", "--encoding=UTF8")
            server._start()
        except BaseException:
            server.destroy()
            raise
        return server

    def _run(self, tool: str, *args: str, check: bool = True, timeout: float = 120,
             new_session: bool = False) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        out = subprocess.run(cmd, check=False, cwd=self.root, capture_output=True, text=True, timeout=timeout,
                             start_new_session=new_session, stdin=subprocess.DEVNULL)
        if check and out.returncode != 0:
            raise RuntimeError(f"{tool} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}"
                               f"\n--- {self.log_path}:\n{_tail(self.log_path)}")
        return out

    def _start(self) -> None:
        opts = (f"-c listen_addresses={HOST} -p {self.port} -k {self.data_dir} "
                f"-c max_connections={self.max_connections} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        # Its own session: Ctrl-C in the terminal must not reach the postmaster; stop() ends it.
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-o", opts,
                  "-w", "-t", "60", "start", new_session=True)
        if self not in _live:
            _live.append(self)
        deadline = time.monotonic() + 30
        while True:
            try:
                with self.connect("postgres"):
                    return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: ends the sessions and returns once the postmaster is gone."""
        if self.data_dir.joinpath("postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop",
                      check=False)
        if self in _live:
            _live.remove(self)

    def restart(self) -> None:
        """Stop, then start again on the same port and data; returns when it accepts connections."""
        self.stop()
        self._start()

    def destroy(self) -> None:
        """Stop, copy the log to base_dir/postgres.log and delete the data directory."""
        with contextlib.suppress(Exception):
            self.stop()
        if self.base_dir is not None and self.log_path.exists():
            with contextlib.suppress(OSError):
                shutil.copyfile(self.log_path, self.base_dir / "postgres.log")
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        """The postmaster's process id, None when it is not running."""
        try:
            pid = int(self.data_dir.joinpath("postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -- clients

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        """SQLAlchemy URL, e.g. postgresql+psycopg://postgres@127.0.0.1:PORT/optuna."""
        return f"{driver}://{PG_USER}@{HOST}:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """libpq connection string for psycopg / psql."""
        return f"host={HOST} port={self.port} user={PG_USER} dbname={database} connect_timeout=5"

    def connect(self, database: str = "postgres", **kwargs):
        """A psycopg connection (autocommit), to use in `with`."""
        import psycopg

        return psycopg.connect(self.dsn(database), autocommit=True, **kwargs)

    def create_database(self, name: str) -> str:
        """CREATE DATABASE name; returns its SQLAlchemy URL."""
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE IF EXISTS name, ending its sessions first."""
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def databases(self) -> list[str]:
        with self.connect() as conn:
            return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate")]

    def connections(self, database: str | None = None) -> int:
        """Client sessions open now (all, or to `database`), not counting this query's own."""
        query = ("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                 "AND pid <> pg_backend_pid()")
        with self.connect() as conn:
            if database is None:
                return conn.execute(query).fetchone()[0]
            return conn.execute(query + " AND datname = %s", (database,)).fetchone()[0]

    def __repr__(self) -> str:
        return f"PostgresServer(port={self.port}, data_dir={str(self.data_dir)!r}, running={self.running})"


def start_postgres(base_dir: str | os.PathLike, **kwargs) -> PostgresServer:
    return PostgresServer.start(base_dir, **kwargs)


# ----------------------------------------------------------------------------- MLflow

class MlflowServer:
    """`python -m mlflow server` on 127.0.0.1:`port`, proxying artifacts into `artifacts_dir`.

    It runs in its own session (process group), so stop() ends the CLI, the uvicorn
    supervisor and every worker together. Job execution (a huey consumer MLflow 3 starts
    beside SQL backends) is switched off: nothing here uses it. One uvicorn worker by default
    (MLflow's is 4): it serves concurrent requests from its thread pool and starts seconds
    sooner on a small machine; pass workers=N for more.
    """

    def __init__(self, backend_store_uri: str, artifacts_dir: Path, log_path: Path, port: int,
                 workers: int, extra_args: tuple[str, ...]):
        self.backend_store_uri = backend_store_uri
        self.artifacts_dir = Path(artifacts_dir)
        self.log_path = Path(log_path)
        self.port = port
        self.workers = workers
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None

    @classmethod
    def start(cls, backend_store_uri: str, artifacts_dir: str | os.PathLike,
              log_path: str | os.PathLike, *, port: int | None = None, workers: int = 1,
              timeout: float = 60, extra_args: tuple[str, ...] = ()) -> MlflowServer:
        """Start the server; returns once GET /health answers 200 (RuntimeError with the log's
        tail if it exits or does not answer within `timeout` seconds)."""
        server = cls(backend_store_uri, Path(artifacts_dir), Path(log_path), port or free_port(),
                     workers, extra_args)
        server._start(timeout)
        return server

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _start(self, timeout: float) -> None:
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", self.backend_store_uri,
               "--artifacts-destination", str(self.artifacts_dir),
               "--host", HOST, "--port", str(self.port), "--workers", str(self.workers),
               *self.extra_args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        env.update(PYTHONUNBUFFERED="1", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env,
                                            cwd=self.artifacts_dir.parent, start_new_session=True)
        _live.append(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}\n"
                                   f"--- {self.log_path}:\n{_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not answer {self.url}/health within {timeout} s"
                                   f"\n--- {self.log_path}:\n{_tail(self.log_path)}")
            time.sleep(0.2)

    def stop(self, grace: float = 5) -> None:
        """SIGTERM to the whole process group, SIGKILL to what is left after `grace` seconds."""
        if self in _live:
            _live.remove(self)
        if self.process is None:
            return
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.process.poll()
            if not process_group(pgid):
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        end = time.monotonic() + 5
        while process_group(pgid) and time.monotonic() < end:
            time.sleep(0.05)

    def restart(self, timeout: float = 60) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self._start(timeout)

    def __repr__(self) -> str:
        return f"MlflowServer(url={self.url!r}, running={self.running})"


# ----------------------------------------------------------------------------- both

@dataclass
class StudyServers:
    postgres: PostgresServer
    mlflow: MlflowServer
    artifacts_dir: Path

    @property
    def optuna_url(self) -> str:
        return self.postgres.url("optuna")

    @property
    def mlflow_url(self) -> str:
        return self.mlflow.url

    @property
    def mlflow_db_url(self) -> str:
        return self.postgres.url("mlflow")


@contextlib.contextmanager
def local_study_servers(base_dir: str | os.PathLike, *, mlflow_workers: int = 1,
                        timeout: float = 60) -> Iterator[StudyServers]:
    """PostgreSQL with the databases `optuna` and `mlflow`, and an MLflow server on `mlflow`
    with artifacts in base_dir/artifacts and its log in base_dir/mlflow.log. Both are always
    stopped on exit; PostgreSQL's data is deleted and its log kept as base_dir/postgres.log."""
    base_dir = Path(base_dir)
    pg = PostgresServer.start(base_dir)
    ml = None
    try:
        pg.create_database("optuna")
        pg.create_database("mlflow")
        ml = MlflowServer.start(pg.url("mlflow"), base_dir / "artifacts", base_dir / "mlflow.log",
                                workers=mlflow_workers, timeout=timeout)
        yield StudyServers(pg, ml, base_dir / "artifacts")
    finally:
        if ml is not None:
            ml.stop()
        pg.destroy()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(reversed(_live)):
        with contextlib.suppress(Exception):
            server.destroy() if isinstance(server, PostgresServer) else server.stop()
