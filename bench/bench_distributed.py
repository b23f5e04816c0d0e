"""One study, many workers: throughput, per-trial storage and tracking time, and server connections.

    python bench/bench_distributed.py              # 24 trials: SQLite x1, then PostgreSQL + MLflow server x1, x2, x4
    python bench/bench_distributed.py --write      # ... and write bench/distributed_results.md and RESULTS.md's section

The same study (preset nmf_k on dataset=digits, short fits: method.max_iter=200) is run with
`max_trials` fixed, first on one machine's stores (SQLite optuna.db and mlflow.db, one worker: the
anchor), then on a real PostgreSQL (database `optuna`) and a real `mlflow server` (on database
`mlflow`, proxied artifacts), both started here by tests/servers.py, with 1, 2 and 4 workers
started at once as separate processes, each the documented worker command
`python src/train.py -m hparams_search=nmf_k ... hydra.sweeper.storage=... tracking.uri=...`
with one BLAS/OpenMP thread. The workers run a snapshot of HEAD's src/ and conf/ (`--checkout`: the
working tree), since other sessions change the shared checkout while a benchmark runs.
About 8-9 minutes on the 2-core machine under load.

What is measured, and how:
- throughput: finished (COMPLETE or PRUNED) trials per minute of wall time, from the first worker's
  start to the last worker's exit (workers' start-up included), and per minute of the trials' own
  span (first trial start to last trial end); the ratio of each to the anchor's, measured in the same run.
- time a worker spends per trial on storage and tracking: each worker process gets a
  `sitecustomize` (in this benchmark's temporary folder, put on the workers' PYTHONPATH; nothing
  in src/ changes) that times, per thread, the outermost calls into Optuna's RDBStorage (the
  SQL behind ask, tell, user attrs, heartbeats, stale-trial checks, the job's pruning reporter)
  and into MLflow's tracking store and artifact repository (SQLAlchemyStore or RestStore, local
  or HTTP artifact upload: the I/O, not the drawing of the figures); per-thread times of the main
  thread block the worker, the heartbeat threads' run beside it. Summed over a worker's life
  (start-up and the end-of-study report included) and divided by the trials it ran.
  Cross-checked with timestamps: Optuna's trial duration (datetime_complete - datetime_start),
  the trial's MLflow run (created by the sweeper when the trial starts, ended by the job), and
  the job's `fit_time_s` metric.
- connections: every 0.5 s, PostgreSQL's client sessions per database (pg_stat_activity:
  `optuna` = the workers, `mlflow` = the tracking server's pool) and, from /proc, the TCP
  connections each worker process holds to PostgreSQL and to the MLflow server.
- CPU: each worker's user+system time (wait4) and the servers' (PostgreSQL and MLflow server
  process trees, /proc), per finished trial; and the load average before and during each setting.
"""
from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from machine import machine_summary  # noqa: E402 (bench/ is put on the path just above)

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SECTION = "## Distributed studies (bench/bench_distributed.py)"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Written as sitecustomize.py into the workers' PYTHONPATH: times calls into the Optuna storage
# and the MLflow store/artifact repository, per thread, and writes the totals at exit.
HOOK = r'''
import atexit, functools, importlib.machinery, inspect, json, os, sys, threading, time

_OUT = os.environ.get("NMFSTUDY_BENCH_TIMING_DIR")
_T0 = time.time()
_lock = threading.Lock()
_tls = threading.local()
_events = []
_TARGETS = {
    "optuna.storages._rdb.storage": ("RDBStorage", "storage"),
    "mlflow.store.tracking.sqlalchemy_store": ("SqlAlchemyStore", "tracking"),
    "mlflow.store.tracking.rest_store": ("RestStore", "tracking"),
    "mlflow.store.artifact.local_artifact_repo": ("LocalArtifactRepository", "tracking"),
    "mlflow.store.artifact.http_artifact_repo": ("HttpArtifactRepository", "tracking"),
}


def _wrap(fn, category, label):
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        if getattr(_tls, "depth", 0):
            return fn(*args, **kwargs)  # nested: the outermost call counts
        _tls.depth = 1
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = time.perf_counter() - start
            _tls.depth = 0
            thread = "main" if threading.current_thread() is threading.main_thread() else "background"
            with _lock:
                _events.append((time.time() - spent, spent, category, thread, label))
    return timed


def _patch(module, class_name, category):
    cls = getattr(module, class_name, None)
    if cls is None:
        return
    for name in dir(cls):
        if name.startswith("_") and name != "__init__":
            continue
        static = inspect.getattr_static(cls, name)
        if not inspect.isfunction(static):
            continue  # properties, static and class methods, attributes
        setattr(cls, name, _wrap(static, category, class_name + "." + name))


class _Finder:
    def find_spec(self, name, path=None, target=None):
        if name not in _TARGETS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module, *_TARGETS[name])
        spec.loader.exec_module = exec_module
        return spec


if _OUT:
    sys.meta_path.insert(0, _Finder())

    @atexit.register
    def _dump():
        data = {"pid": os.getpid(), "start": _T0, "end": time.time(), "events": _events}
        with open(os.path.join(_OUT, "%d.json" % os.getpid()), "w") as f:
            json.dump(data, f)
'''


# ----------------------------------------------------------------------------- /proc helpers

def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def tree_cpu_s(pid: int | None) -> float:
    """CPU seconds (user+system, reaped children included) of a process and its live descendants."""
    if not pid:
        return 0.0
    from servers import descendants

    total = 0
    for p in {pid, *descendants(pid)}:
        fields = _stat_fields(p)
        if fields:  # utime stime cutime cstime: fields 14-17, here 11-14 after pid and comm
            total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def _tcp_inodes_to_port() -> dict[str, int]:
    """Socket inode -> remote port, for established TCP connections."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "01":
                found[parts[9]] = int(parts[2].rsplit(":", 1)[1], 16)
    return found


def sockets_to(pid: int, ports: set[int], inode_port: dict[str, int]) -> dict[int, int]:
    """How many established TCP connections process `pid` holds to each of `ports`."""
    counts = dict.fromkeys(ports, 0)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return counts
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m and inode_port.get(m.group(1)) in ports:
            counts[inode_port[m.group(1)]] += 1
    return counts


def code_state() -> dict:
    """The commit and the uncommitted changes to src/ and conf/ that the workers run."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, check=False, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "changed": git("status", "--porcelain", "--", "src", "conf").splitlines(),
            "diff": git("diff", "HEAD", "--", "src", "conf")}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], check=False, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------- one setting

@dataclass
class Worker:
    index: int
    process: subprocess.Popen
    started: float
    ended: float | None = None
    returncode: int | None = None
    cpu_s: float = 0.0
    log: Path | None = None


@dataclass
class Setting:
    label: str
    backend: str
    n_workers: int
    workers: list[Worker] = field(default_factory=list)
    wall_s: float = 0.0
    load_before: float = 0.0
    load_samples: list[float] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)   # connection samples
    server_cpu_s: float | None = None
    trials: list = field(default_factory=list)
    runs: dict = field(default_factory=dict)              # trial number -> MLflow run
    timings: list[dict] = field(default_factory=list)    # one per worker process (the hook's dump)


def worker_command(storage: str, tracking_uri: str, name: str, sweep_dir: Path, max_trials: int,
                   overrides: list[str]) -> list[str]:
    return [sys.executable, "src/train.py", "-m", "hparams_search=nmf_k", *overrides,
            f"hydra.sweeper.storage={storage}", f"hydra.sweeper.study_name={name}",
            f"tracking.uri={tracking_uri}", f"tracking.experiment={name}",
            f"hydra.sweeper.n_trials={max_trials}", f"hydra.sweeper.max_trials={max_trials}",
            f"hydra.sweep.dir={sweep_dir}"]


def snapshot(base: Path) -> Path:
    """src/ and conf/ of HEAD, unpacked under base/code: the workers run this, not the shared checkout,
    which other sessions change while a benchmark runs."""
    code = base / "code"
    code.mkdir()
    archive = subprocess.run(["git", "archive", "HEAD", "src", "conf"], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
    return code


def run_setting(setting: Setting, argv_for, base: Path, hook_dir: Path, code_dir: Path, servers=None,
                timeout_s: float = 600) -> None:
    """Start the workers at once, sample connections and load every 0.5 s, wait for all to exit."""
    folder = base / setting.label
    timing_dir = folder / "timings"
    timing_dir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(ONE_THREAD, PYTHONUNBUFFERED="1", NMFSTUDY_BENCH_TIMING_DIR=str(timing_dir),
               PYTHONPATH=os.pathsep.join(p for p in (str(hook_dir), str(code_dir / "src"), env.get("PYTHONPATH"))
                                          if p))
    setting.load_before = os.getloadavg()[0]
    pg_port = servers.postgres.port if servers else None
    ml_port = servers.mlflow.port if servers else None
    monitor = servers.postgres.connect("postgres") if servers else None
    server_cpu0 = (tree_cpu_s(servers.postgres.pid) + tree_cpu_s(servers.mlflow.pid)) if servers else None
    start = time.time()
    try:
        for i in range(setting.n_workers):
            log = folder / f"worker{i}.log"
            with open(log, "w") as handle:
                process = subprocess.Popen(argv_for(folder / f"multirun{i}"), cwd=code_dir, env=env, stdout=handle,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True)
            setting.workers.append(Worker(i, process, time.time(), log=log))
        last_sample = 0.0
        while any(w.ended is None for w in setting.workers):
            for w in setting.workers:
                if w.ended is None:
                    pid, status, usage = os.wait4(w.process.pid, os.WNOHANG)
                    if pid:
                        w.ended, w.returncode = time.time(), os.waitstatus_to_exitcode(status)
                        w.process.returncode = w.returncode
                        w.cpu_s = usage.ru_utime + usage.ru_stime
            if time.time() - start > timeout_s:
                raise TimeoutError(f"{setting.label}: workers still running after {timeout_s:.0f} s")
            now = time.time()
            if now - last_sample >= 0.5:
                last_sample = now
                setting.load_samples.append(os.getloadavg()[0])
                if monitor is not None:
                    rows = monitor.execute(
                        "SELECT datname, count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                        "AND pid <> pg_backend_pid() GROUP BY datname").fetchall()
                    inode_port = _tcp_inodes_to_port()
                    live = [w for w in setting.workers if w.ended is None]
                    setting.samples.append({
                        "t": now, "by_db": {d: n for d, n in rows},
                        "workers": {w.index: sockets_to(w.process.pid, {pg_port, ml_port}, inode_port) for w in live},
                        "n_live": len(live)})
            time.sleep(0.05)
    finally:
        for w in setting.workers:
            if w.ended is None:
                os.killpg(w.process.pid, 9)
                w.process.wait()
                w.ended, w.returncode = time.time(), w.process.returncode
        if monitor is not None:
            monitor.close()
    setting.wall_s = max(w.ended for w in setting.workers) - start
    (folder / "samples.json").write_text(json.dumps(
        {"workers": {w.index: {"pid": w.process.pid, "started": w.started, "ended": w.ended} for w in setting.workers},
         "samples": setting.samples, "load": setting.load_samples}))
    if servers:
        setting.server_cpu_s = tree_cpu_s(servers.postgres.pid) + tree_cpu_s(servers.mlflow.pid) - server_cpu0
    for path in sorted(timing_dir.glob("*.json")):
        setting.timings.append(json.loads(path.read_text()))
    bad = [w for w in setting.workers if w.returncode != 0]
    if bad:
        tail = bad[0].log.read_text(errors="replace")[-3000:] if bad[0].log else ""
        raise RuntimeError(f"{setting.label}: worker {bad[0].index} exited {bad[0].returncode}\n{tail}")


def collect(setting: Setting, storage: str, tracking_uri: str, name: str) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    setting.trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        number = run.data.tags.get("optuna.trial_number")
        if number is not None:
            setting.runs[int(number)] = run


def create_optuna_schema(url: str) -> float:
    """Seconds to create Optuna's tables (and check its schema version) in a fresh database."""
    import optuna

    start = time.perf_counter()
    storage = optuna.storages.RDBStorage(url)
    spent = time.perf_counter() - start
    storage.engine.dispose()
    return spent


def create_mlflow_schema(uri: str) -> float:
    """Seconds to create (migrate) a fresh MLflow SQLite store."""
    from mlflow.tracking import MlflowClient

    start = time.perf_counter()
    MlflowClient(uri).search_experiments(max_results=1)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- figures

def _mean(values) -> float:
    values = list(values)
    return statistics.fmean(values) if values else float("nan")


def _ts(d: dt.datetime) -> float:
    return d.timestamp()  # Optuna stores naive local datetimes, as time.time() sees them


def figures(s: Setting) -> dict:
    from optuna.trial import TrialState

    finished = [t for t in s.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    complete = [t for t in s.trials if t.state == TrialState.COMPLETE and t.datetime_complete]
    f: dict = {"label": s.label, "backend": s.backend, "workers": s.n_workers, "finished": len(finished),
               "failed": sum(t.state == TrialState.FAIL for t in s.trials), "all_trials": len(s.trials),
               "wall_s": s.wall_s}
    f["per_min"] = len(finished) / s.wall_s * 60
    first_start = min(_ts(t.datetime_start) for t in s.trials)
    last_end = max(_ts(t.datetime_complete) for t in s.trials if t.datetime_complete)
    f["span_s"] = last_end - first_start
    f["per_min_span"] = len(finished) / f["span_s"] * 60
    t0 = min(w.started for w in s.workers)
    f["startup_s"] = _mean(min(_ts(t.datetime_start) for t in s.trials
                               if t.user_attrs.get("worker_pid") == w.process.pid)
                           - w.started for w in s.workers
                           if any(t.user_attrs.get("worker_pid") == w.process.pid for t in s.trials))
    f["tail_s"] = max(w.ended for w in s.workers) - last_end  # last trial told -> last worker gone
    f["first_start_after_s"] = first_start - t0
    # per trial, from timestamps
    trial_s, run_s, fit_s, around_s, job_rest_s = [], [], [], [], []
    for t in complete:
        run = s.runs.get(t.number)
        duration = _ts(t.datetime_complete) - _ts(t.datetime_start)
        trial_s.append(duration)
        if run is not None and run.info.end_time and "fit_time_s" in run.data.metrics:
            rd = (run.info.end_time - run.info.start_time) / 1000
            run_s.append(rd)
            fit_s.append(run.data.metrics["fit_time_s"])
            around_s.append(duration - rd)
            job_rest_s.append(rd - run.data.metrics["fit_time_s"])
    gaps = []
    by_worker: dict = {}
    for t in s.trials:
        if t.datetime_complete:
            by_worker.setdefault(t.user_attrs.get("worker_pid"), []).append(t)
    for trials in by_worker.values():
        trials.sort(key=lambda t: t.datetime_start)
        gaps += [_ts(b.datetime_start) - _ts(a.datetime_complete) for a, b in itertools.pairwise(trials)]
    f.update(trial_s=_mean(trial_s), run_s=_mean(run_s), fit_s=_mean(fit_s), around_s=_mean(around_s),
             job_rest_s=_mean(job_rest_s), gap_s=_mean(gaps))
    f.update(hook_figures(s))
    # CPU and load
    f["worker_cpu_s"] = sum(w.cpu_s for w in s.workers) / max(len(finished), 1)
    f["server_cpu_s"] = s.server_cpu_s / max(len(finished), 1) if s.server_cpu_s is not None else None
    f["load_before"] = s.load_before
    f["load_mean"] = _mean(s.load_samples)
    f["load_max"] = max(s.load_samples) if s.load_samples else float("nan")
    return f


def hook_figures(s: Setting) -> dict:
    """The workers' storage and tracking calls, split into start-up, steady state and end.

    Start-up: process start to its first trial's start. Steady state: from its first trial's end
    to its last trial's end, i.e. whole cycles (the check for dead trials, the max_trials count,
    ask, suggest, the trial's run, the job, tell): divided by the number of cycles, trials - 1.
    End: after its last trial (the study's report and plots).
    """
    phases = {p: {"storage": 0.0, "tracking": 0.0, "background": 0.0, "wall": 0.0} for p in ("start", "steady", "end")}
    cycles = 0
    methods: dict = {}
    for d in s.timings:
        mine = sorted((t for t in s.trials if t.user_attrs.get("worker_pid") == d["pid"] and t.datetime_complete),
                      key=lambda t: t.datetime_start)
        if not mine:
            continue
        first_start, first_end, last_end = (_ts(mine[0].datetime_start), _ts(mine[0].datetime_complete),
                                            _ts(mine[-1].datetime_complete))
        phases["start"]["wall"] += first_start - d["start"]
        phases["end"]["wall"] += d["end"] - last_end
        if len(mine) > 1:
            phases["steady"]["wall"] += last_end - first_end
            cycles += len(mine) - 1
        for t0, spent, category, thread, label in d["events"]:
            phase = "start" if t0 < first_start else "end" if t0 >= last_end else "steady" if t0 >= first_end else None
            if phase is None or (phase == "steady" and len(mine) < 2):
                continue
            phases[phase]["background" if thread != "main" else category] += spent
            if phase == "steady":
                m = methods.setdefault(label + (" (heartbeat thread)" if thread != "main" else ""), [0, 0.0])
                m[0] += 1
                m[1] += spent
    n = len(s.timings) or 1
    per = max(cycles, 1)
    return {
        "hooked": len(s.timings), "cycles": cycles,
        "cycle_s": phases["steady"]["wall"] / per,
        "storage_s": phases["steady"]["storage"] / per, "tracking_s": phases["steady"]["tracking"] / per,
        "bg_s": phases["steady"]["background"] / per,
        "start_wall_s": phases["start"]["wall"] / n, "start_storage_s": phases["start"]["storage"] / n,
        "start_tracking_s": phases["start"]["tracking"] / n,
        "end_wall_s": phases["end"]["wall"] / n, "end_storage_s": phases["end"]["storage"] / n,
        "end_tracking_s": phases["end"]["tracking"] / n,
        "top_methods": [(k, c / per, t / per) for k, (c, t) in sorted(methods.items(), key=lambda kv: -kv[1][1])[:8]],
    }


def connection_figures(s: Setting, pg_port: int, ml_port: int) -> dict:
    per_worker_pg = [c[pg_port] for x in s.samples for c in x["workers"].values()]
    per_worker_ml = [c[ml_port] for x in s.samples for c in x["workers"].values()]
    optuna_db = [x["by_db"].get("optuna", 0) for x in s.samples]
    mlflow_db = [x["by_db"].get("mlflow", 0) for x in s.samples]
    all_live = [x for x in s.samples if x["n_live"] == s.n_workers]
    return {
        "samples": len(s.samples),
        "w_pg_max": max(per_worker_pg, default=0), "w_pg_mean": _mean(per_worker_pg),
        "w_ml_max": max(per_worker_ml, default=0), "w_ml_mean": _mean(per_worker_ml),
        "optuna_max": max(optuna_db, default=0),
        "optuna_per_worker_mean": _mean(x["by_db"].get("optuna", 0) / s.n_workers for x in all_live),
        "mlflow_max": max(mlflow_db, default=0), "mlflow_mean": _mean(mlflow_db),
    }


# ----------------------------------------------------------------------------- report

def fmt(x, digits=2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def render(figs: list[dict], conns: dict, meta: dict) -> str:
    anchor = figs[0]
    lines = [SECTION, ""]
    lines.append(f"{meta['machine']} Workers: one BLAS/OpenMP thread each. PostgreSQL {meta['pg_version']} "
                 f"(fsync off, as tests/servers.py starts it), MLflow server {meta['mlflow_version']} with "
                 f"{meta['mlflow_workers']} uvicorn worker, Optuna {meta['optuna_version']}. ({meta['date']})")
    lines.append("")
    code = meta["code"]
    if meta["snapshot"]:
        lines.append(f"Code: commit {code['commit']}; the workers ran a snapshot of its src/ and conf/ "
                     "(`git archive`), as the shared checkout changes while benchmarks run.")
    else:
        lines.append(f"Code: the working tree at commit {code['commit']}" + (
            f", with uncommitted changes to {', '.join(c.split()[-1] for c in code['changed'])}" if code["changed"]
            else "") + (". **The checkout changed while the benchmark ran: its settings did not all run the same "
                        "code.**" if meta["code_changed"] else "; unchanged while the benchmark ran."))
    lines.append("")
    lines.append(f"Command: `{meta['command']}` ({meta['bench_wall_s']:.0f} s in all). Each setting runs the worker "
                 "command below, N copies started at once:")
    lines.append("")
    lines.append(f"    {meta['worker_command']}")
    lines.append("")
    lines.append(f"Load (`uptime`), before: `{meta['uptime_before']}`; after: `{meta['uptime_after']}`. The machine "
                 "is shared with other engineers' tests: the 1-minute load average before and during each setting "
                 "is in the tables (our own workers add up to N to it).")
    lines.append("")
    lines.append("Stores were created before the timed part: the MLflow server migrates its database when it "
                 "starts; the bench created the SQLite files and Optuna's PostgreSQL tables first (one-off, seconds: "
                 + ", ".join(f"{k} {v:.1f}" for k, v in meta["one_off"].items()) + ").")
    lines.append("")
    lines.append("| setting | workers | finished trials | failed | wall s (first start - last exit) | trials/min | "
                 "vs anchor | trial span s | trials/min in span | vs anchor | start-up s | tail s | "
                 "load before / mean |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for f in figs:
        lines.append(
            f"| {f['backend']} | {f['workers']} | {f['finished']} | {f['failed']} | {f['wall_s']:.0f} | "
            f"{f['per_min']:.1f} | {f['per_min'] / anchor['per_min']:.2f}x | {f['span_s']:.0f} | "
            f"{f['per_min_span']:.1f} | {f['per_min_span'] / anchor['per_min_span']:.2f}x | {f['startup_s']:.1f} | "
            f"{f['tail_s']:.1f} | {f['load_before']:.1f} / {f['load_mean']:.1f} |")
    lines.append("")
    lines.append("Per trial, in a worker's steady state (seconds, means). *cycle*: one worker's time per trial, from "
                 "the end of its first trial to the end of its last, over its trials - 1. From timestamps: *trial* is "
                 "Optuna's datetime_complete - datetime_start; *fit* the job's fit_time_s; *job outside fit* = the "
                 "trial's MLflow run (created by the sweeper after the ask, ended by the job) - fit (launching the "
                 "job, data, evaluation, drawing and logging the figures); *around* = trial - run (suggest, user "
                 "attrs and the run's creation before, tell after); *between* = a worker's tell to its next ask "
                 "(dead-trial check, max_trials count, the run's state tag). Instrumented (a sitecustomize on the "
                 "workers' PYTHONPATH timing the outermost calls): *storage*, *tracking*: seconds the worker's main "
                 "thread spent inside Optuna's RDBStorage and inside MLflow's tracking store and artifact repository "
                 "(I/O only; the figures' drawing is not in it) per cycle; *heartbeat threads*: the same calls from "
                 "background threads. CPU: user+system seconds per finished trial, over the whole setting "
                 "(start-up included).")
    lines.append("")
    lines.append("| setting | workers | cycle | trial | fit | job outside fit | around | between | storage | "
                 "tracking | storage+tracking share of cycle | heartbeat threads | worker CPU | server CPU |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for f in figs:
        share = (f["storage_s"] + f["tracking_s"]) / f["cycle_s"] if f["cycle_s"] else float("nan")
        lines.append(
            f"| {f['backend']} | {f['workers']} | {fmt(f['cycle_s'])} | {fmt(f['trial_s'])} | {fmt(f['fit_s'])} | "
            f"{fmt(f['job_rest_s'])} | {fmt(f['around_s'])} | {fmt(f['gap_s'])} | {fmt(f['storage_s'])} | "
            f"{fmt(f['tracking_s'])} | {share:.0%} | {fmt(f['bg_s'], 3)} | {fmt(f['worker_cpu_s'])} | "
            f"{fmt(f['server_cpu_s'])} |")
    lines.append("")
    lines.append("Start-up (process start to its first trial) and end (its last trial to exit), per worker, seconds "
                 "(of which storage / tracking):")
    lines.append("")
    lines.append("| setting | workers | start-up | start-up storage / tracking | end | end storage / tracking |")
    lines.append("|---|---|---|---|---|---|")
    for f in figs:
        lines.append(f"| {f['backend']} | {f['workers']} | {fmt(f['start_wall_s'], 1)} | {fmt(f['start_storage_s'])} / "
                     f"{fmt(f['start_tracking_s'])} | {fmt(f['end_wall_s'], 1)} | {fmt(f['end_storage_s'])} / "
                     f"{fmt(f['end_tracking_s'])} |")
    lines.append("")
    lines.append("Connections, sampled every 0.5 s while the workers ran: TCP connections each worker process held "
                 "(from /proc) to PostgreSQL (its Optuna storage) and to the MLflow server; PostgreSQL's sessions to "
                 "database `optuna` (all workers) and `mlflow` (the tracking server's own pool) from pg_stat_activity.")
    lines.append("")
    lines.append("| workers | samples | PostgreSQL conns per worker: max / mean | MLflow server conns per worker: "
                 "max / mean | `optuna` sessions: max / per worker (mean, all workers up) | `mlflow` sessions "
                 "(server pool): max / mean |")
    lines.append("|---|---|---|---|---|---|")
    for f in figs[1:]:
        c = conns[f["label"]]
        lines.append(f"| {f['workers']} | {c['samples']} | {c['w_pg_max']} / {fmt(c['w_pg_mean'])} | "
                     f"{c['w_ml_max']} / {fmt(c['w_ml_mean'])} | "
                     f"{c['optuna_max']} / {fmt(c['optuna_per_worker_mean'])} | "
                     f"{c['mlflow_max']} / {fmt(c['mlflow_mean'])} |")
    lines.append("")
    lines.append("Where a cycle's storage and tracking seconds go (calls per trial x, ms per trial; the largest "
                 "eight):")
    lines.append("")
    for f in figs:
        top = "; ".join(f"{k} {c:.1f}x {t * 1000:.0f}" for k, c, t in f["top_methods"])
        lines.append(f"- {f['backend']}, {f['workers']} worker(s): {top}")
    lines.append("")
    lines += analysis(figs, conns)
    return "\n".join(lines)


def analysis(figs: list[dict], conns: dict) -> list[str]:
    """What the cores allow, and what stands out, written from this run's figures."""
    cores = os.cpu_count() or 1
    anchor, pg = figs[0], {f["workers"]: f for f in figs[1:]}
    if 1 not in pg:
        return []
    one, most = pg[1], pg[max(pg)]
    cpu = one["worker_cpu_s"] + (one["server_cpu_s"] or 0.0)
    cap = cores * 60 / cpu

    def used(f: dict) -> float:
        return (f["worker_cpu_s"] + (f["server_cpu_s"] or 0.0)) * f["finished"] / f["wall_s"]

    shares = [(f["storage_s"] + f["tracking_s"]) / f["cycle_s"] for f in pg.values() if f["cycle_s"]]
    share_text = (f"Storage and tracking took {min(shares):.0%}-{max(shares):.0%} of a worker's cycle whatever the "
                  "number of workers, so on this machine the servers are not what limits the scaling; the CPU is."
                  if shares and max(shares) - min(shares) <= 0.05 else
                  f"Storage and tracking took {min(shares):.0%}-{max(shares):.0%} of a worker's cycle, growing with "
                  "the workers." if shares else "")
    beyond = ""
    if cores in pg and max(pg) > cores:
        gain = pg[max(pg)]["per_min"] / pg[cores]["per_min"]
        beyond = (f"{max(pg)} workers against {cores}: {gain:.2f}x the trials per minute, "
                  + ("so workers beyond the core count added connections and start-up, not throughput. "
                     if gain <= 1.1
                     else "a gain that came from a larger share of the shared machine and from one worker computing "
                     "while another waits on the servers, not from more cores. "))
    ratios = ", ".join(f"{n} workers {f['per_min'] / one['per_min']:.2f}x "
                       f"({f['per_min_span'] / one['per_min_span']:.2f}x in the trials' span)"
                       for n, f in pg.items() if n > 1)
    out = ["**What the cores allow.** "
           f"A finished trial costs {one['worker_cpu_s']:.1f} CPU seconds in its worker (its fit only "
           f"{one['fit_s']:.2f} s; the rest is the job's evaluation and its five figures, Python's start-up spread "
           f"over the trials, and the storage and tracking clients) and {one['server_cpu_s'] or 0:.2f} in PostgreSQL "
           f"and the MLflow server together. So {cores} cores cap this study at about {cap:.0f} trials/min however "
           f"many workers run, and no more than {cores} workers run at a time: at best {cores}x one worker, "
           f"{cores} workers being enough. Measured against one worker on the servers: {ratios}. Our processes used "
           + ", ".join(f"{used(f):.2f}" for f in pg.values())
           + f" cores on average with {', '.join(str(n) for n in pg)} workers; the rest of the machine went to other "
           f"work (load {one['load_mean']:.1f}-{most['load_mean']:.1f} during these settings, on {cores} cores), so a "
           "worker got a core's share, not a core, and part of what more workers gained is a larger share of a "
           f"contended machine rather than parallelism. With {max(pg)} workers each one's cycle grew from "
           f"{one['cycle_s']:.1f} s to {most['cycle_s']:.1f} s per trial: they queue for the cores, and the CPU a "
           f"trial costs rose from {one['worker_cpu_s']:.1f} to {most['worker_cpu_s']:.1f} s (every worker pays its "
           f"own start-up, {most['startup_s']:.1f} s when {max(pg)} start at once against {one['startup_s']:.1f} s "
           "alone, and the processes evict each other from the caches). " + beyond + share_text,
           ""]
    pg_st, sq_st = one["storage_s"] + one["tracking_s"], anchor["storage_s"] + anchor["tracking_s"]
    notes = [(f"- Per trial, one worker spent {pg_st:.2f} s on storage + tracking with PostgreSQL + the MLflow "
              f"server (storage {one['storage_s']:.2f}, tracking {one['tracking_s']:.2f}) against {sq_st:.2f} s on "
              f"the SQLite files (storage {anchor['storage_s']:.2f}, tracking {anchor['tracking_s']:.2f}): "
              + ("the servers cost no more than the files." if pg_st <= sq_st * 1.1 else
                 f"the servers cost {pg_st - sq_st:.2f} s a trial more."))]
    init = [t for k, _, t in one["top_methods"] if k == "RDBStorage.__init__"]
    c = conns.get(f"pg-{max(pg)}")
    if init and c:
        notes.append(f"- Every job opens its own Optuna storage (the pruning reporter's `open_storage` in the job, "
                     f"even in the sweeper's process): one `RDBStorage.__init__` per trial, {init[0] * 1000:.0f} ms "
                     "with one worker, and a new connection pool whose connections stay open until the garbage "
                     f"collector frees it. A worker held up to {c['w_pg_max']} PostgreSQL connections (mean "
                     f"{c['w_pg_mean']:.1f}), and {max(pg)} workers {c['optuna_max']} sessions at peak: at about "
                     f"{c['optuna_max'] / max(pg):.0f} per worker, PostgreSQL's default max_connections of 100 "
                     f"serves about {100 // max(1, round(c['optuna_max'] / max(pg)))} workers "
                     "(tests/servers.py starts it with 200). The MLflow server's own pool peaked at "
                     f"{min(x['mlflow_max'] for x in conns.values())}-{max(x['mlflow_max'] for x in conns.values())} "
                     "sessions whatever the number of workers; each worker held "
                     f"{min(x['w_ml_mean'] for x in conns.values()):.1f}-"
                     f"{max(x['w_ml_mean'] for x in conns.values()):.1f} "
                     f"HTTP connections to it on average (at most {max(x['w_ml_max'] for x in conns.values())}).")
    tails = [f for f in pg.values() if f["workers"] > 1]
    if tails:
        notes.append("- The study's end: a worker that finds max_trials reached while other workers' trials still run "
                     "sleeps min(heartbeat_interval, 2) s before it looks again (to take over a dead worker's retry), "
                     "so the last worker left "
                     + ", ".join(f"{f['tail_s']:.0f} s with {f['workers']} workers" for f in tails)
                     + " after the last trial ended, against "
                     f"{one['tail_s']:.0f} s for a lone worker: a cost of short studies only.")
    notes.append("- Workers started at once on a fresh PostgreSQL database race to create Optuna's tables: before "
                 "commit dd64a64 most of them stopped on `duplicate key value violates unique constraint` (13 of 20 "
                 "processes in 5 tries of 4); `nmfstudy.pruning.open_storage` now tries again and all open it "
                 "(tests/test_distributed.py). This bench still creates the tables before the timed part.")
    return ["Notes:", "", *notes, ""] + out


def replace_section(path: Path, text: str) -> None:
    content = path.read_text()
    start = content.find(SECTION)
    if start < 0:
        content = content.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        nxt = content.find("\n## ", start + len(SECTION))
        end = len(content) if nxt < 0 else nxt + 1
        content = content[:start] + text.rstrip("\n") + "\n" + ("\n" + content[end:] if nxt >= 0 else "")
    path.write_text(content)


# ----------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-trials", type=int, default=24, help="hydra.sweeper.max_trials of each study")
    parser.add_argument("--workers", default="1,2,4", help="worker counts on PostgreSQL + MLflow server")
    parser.add_argument("--overrides", default="dataset=digits method.max_iter=200",
                        help="the study's fixed overrides (space separated)")
    parser.add_argument("--mlflow-workers", type=int, default=1, help="uvicorn workers of the MLflow server")
    parser.add_argument("--write", action="store_true",
                        help="write bench/distributed_results.md and the section in bench/RESULTS.md")
    parser.add_argument("--checkout", action="store_true",
                        help="run the workers from the working tree (default: a snapshot of HEAD's src/ and conf/)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, SQLite stores)")
    args = parser.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    overrides = args.overrides.split()
    command = "python bench/bench_distributed.py" + "".join(
        f" {a}" for a in sys.argv[1:])

    import mlflow
    import optuna
    from servers import local_study_servers

    base = Path(tempfile.mkdtemp(prefix="nmfstudy-bench-dist-"))
    hook_dir = base / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    bench_start = time.time()
    code_before = code_state()
    code_dir = ROOT if args.checkout else snapshot(base)
    uptime_before = uptime()
    print(uptime_before, flush=True)
    settings: list[Setting] = []
    conns: dict = {}
    one_off: dict[str, float] = {}
    pg_version = "?"
    try:
        # the anchor: one machine's stores, one worker
        anchor = Setting("sqlite-1", "SQLite + SQLite MLflow store", 1)
        (base / "sqlite-1").mkdir()
        storage = f"sqlite:///{base / 'sqlite-1' / 'optuna.db'}"
        tracking_uri = f"sqlite:///{base / 'sqlite-1' / 'mlflow.db'}"
        one_off["Optuna schema, SQLite"] = create_optuna_schema(storage)
        one_off["MLflow schema (migrations), SQLite"] = create_mlflow_schema(tracking_uri)
        run_setting(anchor, lambda d: worker_command(storage, tracking_uri, "bench-sqlite", d, args.max_trials,
                                                     overrides), base, hook_dir, code_dir)
        collect(anchor, storage, tracking_uri, "bench-sqlite")
        settings.append(anchor)
        print(f"{anchor.label}: {anchor.wall_s:.0f} s", flush=True)

        with local_study_servers(base / "servers", mlflow_workers=args.mlflow_workers) as servers:
            with servers.postgres.connect() as c:
                pg_version = c.execute("SHOW server_version").fetchone()[0].split()[0]
            # Created once before the workers: workers that start at once on a fresh database race to
            # create Optuna's tables and most of them fail (see the section's notes).
            one_off["Optuna schema, PostgreSQL"] = create_optuna_schema(servers.optuna_url)
            for n in counts:
                s = Setting(f"pg-{n}", "PostgreSQL + MLflow server", n)
                name = f"bench-pg-{n}"
                run_setting(s, lambda d, name=name: worker_command(servers.optuna_url, servers.mlflow_url, name,
                                                                   d, args.max_trials, overrides),
                            base, hook_dir, code_dir, servers)
                collect(s, servers.optuna_url, servers.mlflow_url, name)
                conns[s.label] = connection_figures(s, servers.postgres.port, servers.mlflow.port)
                settings.append(s)
                print(f"{s.label}: {s.wall_s:.0f} s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")

    figs = [figures(s) for s in settings]
    meta = {
        "machine": machine_summary(), "pg_version": pg_version, "mlflow_version": mlflow.__version__,
        "optuna_version": optuna.__version__, "mlflow_workers": args.mlflow_workers,
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "command": command,
        "worker_command": " ".join(["python", *worker_command("<storage>", "<tracking uri>", "<name>", Path("<dir>"),
                                                               args.max_trials, overrides)[1:]]),
        "one_off": one_off, "uptime_before": uptime_before, "code": code_before,
        "code_changed": args.checkout and code_state() != code_before, "snapshot": not args.checkout,
        "uptime_after": uptime(), "bench_wall_s": time.time() - bench_start,
    }
    text = render(figs, conns, meta)
    print(text)
    print(json.dumps([{k: v for k, v in f.items() if k != "top_methods"} for f in figs], default=str, indent=1))
    if args.write:
        (ROOT / "bench" / "distributed_results.md").write_text(text.replace(SECTION, "# Distributed studies", 1))
        replace_section(ROOT / "bench" / "RESULTS.md", text)


if __name__ == "__main__":
    main()
