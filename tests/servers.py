"""Real servers for tests and benchmarks: a throwaway PostgreSQL, an `mlflow server` on it, and a
single-node SLURM (`SlurmCluster`, `local_slurm`: munged, slurmctld and slurmd as root).

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

    def connections(self, database: str | None = None, application_name: str | None = None) -> int:
        """Client sessions open now (all, or to `database`, or of `application_name`), not counting this query's own."""
        query = ("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                 "AND pid <> pg_backend_pid()")
        args = []
        for column, value in (("datname", database), ("application_name", application_name)):
            if value is not None:
                query += f" AND {column} = %s"
                args.append(value)
        with self.connect() as conn:
            return conn.execute(query, args).fetchone()[0]

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


# ----------------------------------------------------------------------------- SLURM

SLURM_DAEMONS = ("munged", "slurmctld", "slurmd")


def slurm_missing() -> str | None:
    """Why a test SLURM cluster cannot start here (a program missing, not root), or None."""
    missing = [name for name in (*SLURM_DAEMONS, "sbatch", "squeue", "scancel", "sinfo")
               if shutil.which(name) is None and not Path("/usr/sbin", name).is_file()]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} missing; "
                "apt-get install slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        return "the test SLURM cluster runs its daemons as root"
    return None


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


SLURM_CONF = """\
# A single-node SLURM for tests (tests/servers.py): daemons as root, no cgroups, no accounting.
ClusterName=nmfstudy
SlurmctldHost={node}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/slurmd-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Processes tracked by their parents in /proc, tasks not confined: no cgroups needed (containers).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# Accounting switched off, as on many small clusters: `sacct` answers that it is disabled.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Quick turns for tests: SIGKILL 5 s after SIGTERM, finished jobs forgotten after 5 minutes,
# the scheduler looks at new jobs at once.
KillWait={kill_wait}
MinJobAge=300
OverTimeLimit=0
InactiveLimit=0
SchedulerParameters=defer_batch=0,sched_interval=1,bf_interval=1
MessageTimeout=20
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


class SlurmCluster:
    """A throwaway single-node SLURM: munged, slurmctld and slurmd of this machine, as root.

    Everything lives in one `tempfile.mkdtemp()` folder: the generated slurm.conf, munge's key and
    socket, slurmctld's state and slurmd's spool, the daemons' logs. Daemons and clients find the
    config through the SLURM_CONF environment variable (`env`), so /etc/slurm is never read or
    written. The node is `hostname -s` with `cpus` CPUs; jobs run as root. `stop()` ends the
    daemons (and the jobs they still run) and copies their logs into `base_dir`.
    """

    def __init__(self, root: Path, node: str, cpus: int, base_dir: Path | None, kill_wait: int):
        self.root = Path(root)
        self.node, self.cpus, self.kill_wait = node, cpus, kill_wait
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.processes: dict[str, int] = {}

    @classmethod
    def start(cls, base_dir: str | os.PathLike, cpus: int = 2, kill_wait: int = 5,
              timeout: float = 60) -> SlurmCluster:
        """Write the config, start munged, slurmctld and slurmd; returns once the node is idle.

        Raises RuntimeError with the daemons' log tails when the cluster does not come up.
        """
        missing = slurm_missing()
        if missing:
            raise RuntimeError(missing)
        base_dir = Path(base_dir)
        base_dir.mkdir(parents=True, exist_ok=True)
        node = socket.gethostname().split(".")[0]
        cluster = cls(Path(tempfile.mkdtemp(prefix="nmfstudy-slurm-")), node, cpus, base_dir, kill_wait)
        _live.append(cluster)
        try:
            cluster._write_config()
            cluster._start_munge()
            cluster._start_daemon("slurmctld", "-i")  # -i: ignore state from a cluster before this one
            cluster._start_daemon("slurmd")
            cluster._wait_idle(timeout)
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    @property
    def env(self) -> dict[str, str]:
        """The environment for SLURM's clients (sbatch, squeue, ...) and daemons: os.environ + SLURM_CONF."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        for sub in ("state", "spool", "munge"):
            (self.root / sub).mkdir(mode=0o700)
        memory_mb = max(1024, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 512)
        self.conf.write_text(SLURM_CONF.format(
            node=self.node, root=self.root, ctld_port=free_port(), slurmd_port=free_port(),
            munge_socket=self.munge_socket, cpus=self.cpus, memory_mb=memory_mb, kill_wait=self.kill_wait))

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o400)
        munge = self.root / "munge"
        self._run(_program("munged"), "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                  f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                  f"--seed-file={munge / 'munged.seed'}")
        self.processes["munged"] = self._read_pid(munge / "munged.pid")

    def _start_daemon(self, name: str, *args: str) -> None:
        # Each forks into the background and writes its pid file; its own session keeps a
        # terminal's Ctrl-C away from it.
        self._run(_program(name), *args)
        self.processes[name] = self._read_pid(self.root / f"{name}.pid")

    def _run(self, *cmd: str) -> None:
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.root)
        if out.returncode != 0:
            raise RuntimeError(f"{Path(cmd[0]).name} failed ({out.returncode}): "
                               f"{(out.stderr or out.stdout).strip()[-2000:]}\n{self.logs()}")

    def _read_pid(self, path: Path, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                pid = int(path.read_text().split()[0])
                if pid_alive(pid):
                    return pid
            time.sleep(0.05)
        raise RuntimeError(f"no live process in {path}\n{self.logs()}")

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True,
                                 text=True, timeout=30)
            state = (out.stdout or out.stderr).strip()
            if out.returncode == 0 and state.rstrip("*") in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the SLURM node did not become idle within {timeout} s (sinfo: {state!r})"
                           f"\n{self.logs()}")

    def logs(self, n: int = 30) -> str:
        """The tails of the daemons' logs."""
        paths = [self.root / "munge" / "munged.log", self.root / "slurmctld.log", self.root / "slurmd.log"]
        return "\n".join(f"--- {p}:\n{_tail(p, n)}" for p in paths if p.exists())

    # -- clients

    def sbatch(self, *args: str, cwd: str | os.PathLike | None = None, env: dict | None = None) -> str:
        """`sbatch --parsable ARGS`; the job id."""
        out = subprocess.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=cwd,
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"sbatch failed: {out.stderr.strip()}")
        return out.stdout.strip().split(";")[0]

    def squeue(self, *args: str) -> list[tuple[str, str]]:
        """(job id, state) of the jobs in the queue: `squeue -h -r -o '%i %T' ARGS`, array tasks one by one."""
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", *args], env=self.env, capture_output=True,
                             text=True, timeout=60, check=True)
        return [tuple(line.split()[:2]) for line in out.stdout.splitlines() if line.strip()]  # type: ignore[misc]

    def scancel(self, *args: str) -> None:
        subprocess.run(["scancel", *args], env=self.env, capture_output=True, text=True, timeout=60, check=True)

    def wait_empty(self, timeout: float = 120) -> None:
        """Until no job is queued or running (RuntimeError after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while self.squeue():
            if time.monotonic() > deadline:
                raise RuntimeError(f"SLURM jobs still queued after {timeout} s: {self.squeue()}")
            time.sleep(0.5)

    # -- lifecycle

    def stop(self) -> None:
        """Cancel every job, SIGTERM the daemons, SIGKILL what is left; keep the logs in base_dir."""
        if self in _live:
            _live.remove(self)
        if self.processes.get("slurmctld") and pid_alive(self.processes["slurmctld"]):
            with contextlib.suppress(Exception):
                subprocess.run(["scancel", "--full", "-u", "root"], env=self.env, capture_output=True, timeout=10)
        jobs = set()
        if self.processes.get("slurmd"):
            jobs = descendants(self.processes["slurmd"])  # the jobs' slurmstepd and their children
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.processes.get(name)
            if pid and pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(pid_alive(p) for p in [*self.processes.values(), *jobs]):
            time.sleep(0.1)
        for pid in [*self.processes.values(), *jobs]:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.processes.clear()

    def destroy(self) -> None:
        """Stop, copy the logs into base_dir and delete the folder."""
        with contextlib.suppress(Exception):
            self.stop()
        if self.base_dir is not None:
            for log in ("slurmctld.log", "slurmd.log", "munge/munged.log"):
                with contextlib.suppress(OSError):
                    shutil.copyfile(self.root / log, self.base_dir / Path(log).name)
        shutil.rmtree(self.root, ignore_errors=True)

    def __repr__(self) -> str:
        return f"SlurmCluster(node={self.node!r}, conf={str(self.conf)!r})"


@contextlib.contextmanager
def local_slurm(base_dir: str | os.PathLike, **kwargs) -> Iterator[SlurmCluster]:
    """A single-node SLURM cluster (`SlurmCluster.start`), always stopped and deleted on exit."""
    cluster = SlurmCluster.start(base_dir, **kwargs)
    try:
        yield cluster
    finally:
        cluster.destroy()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(reversed(_live)):
        with contextlib.suppress(Exception):
            server.stop() if isinstance(server, MlflowServer) else server.destroy()
