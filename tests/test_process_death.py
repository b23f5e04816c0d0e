"""On one machine, no run and no trial outlives its process as RUNNING.

A process killed by SIGKILL (the out-of-memory killer does this) cannot end its MLflow run or
its Optuna trial. Each case kills the real entry point in a subprocess at a real moment, then
checks what MLflow and Optuna hold, after the fault or after the next command.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from helpers import LEAN, ROOT, default_sigint, mlflow_runs, run_train, wait_until

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

LONG_FIT = ["dataset.n_samples=2000", "method.max_iter=1000000", "method.tol=0", "method.solver=mu",
            "progress_every_s=0.2"]
QUICK = ["dataset=digits", "method.max_iter=5"]


def _start(tmp: Path, *args: str, multirun: bool = False) -> subprocess.Popen:
    argv = [sys.executable, "src/train.py", *(["-m", f"hydra.sweep.dir={tmp / 'multirun'}"] if multirun else
                                               [f"hydra.run.dir={tmp / 'run'}"]),
            f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", *LEAN, *args]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen(argv, cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, preexec_fn=default_sigint)


def _query(db: Path, sql: str) -> list[tuple]:
    """Read a store with plain sqlite3, read-only: a client here would race the child creating its schema."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as connection:
            return connection.execute(sql).fetchall()
    except sqlite3.Error:  # not created yet
        return []


def _fitting(tmp: Path, n: int = 1):
    """{run id: owner pid} of RUNNING job runs that logged their params (the fit is under way), once there are n."""
    def check():
        rows = _query(tmp / "mlflow.db", "select r.run_uuid, t.value from runs r join tags t "
                      "on t.run_uuid = r.run_uuid and t.key = 'nmfstudy.pid' where r.status = 'RUNNING' "
                      "and exists (select 1 from params p where p.run_uuid = r.run_uuid and p.key = 'k')")
        return dict(rows) if len(rows) >= n else None
    return check


def _finish(process: subprocess.Popen, timeout: float = 120) -> str:
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return out


def test_a_killed_run_is_marked_killed_by_the_next_run(tmp_path):
    process = _start(tmp_path, *LONG_FIT)
    try:
        (victim,) = wait_until(_fitting(tmp_path), "the fit to start", process)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    (left,) = [r for r in mlflow_runs(tmp_path) if r.info.run_id == victim]
    assert left.info.status == "RUNNING"  # nothing could end it
    assert left.data.tags["nmfstudy.pid"] == str(process.pid)

    result = run_train(tmp_path, *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "marked 1 dead run(s) KILLED" in result.stderr + result.stdout
    runs = {r.info.run_id: r for r in mlflow_runs(tmp_path)}
    dead = runs[victim]
    assert dead.info.status == "KILLED" and f"process {process.pid} on" in dead.data.tags["error"]
    assert dead.data.params["k"] == "10"  # what it logged is kept
    assert [r.info.status for r in runs.values()].count("FINISHED") == 1
    assert all(r.info.status != "RUNNING" for r in runs.values())


def _iterating(tmp: Path, n: int):
    """Like `_fitting`, once n jobs' logs also show a fit's iteration: past every import of the job, where a
    signal could otherwise land inside Python's import machinery, which prints its own ignored traceback."""
    fitting = _fitting(tmp, n)

    def check():
        logs = [log.read_text() for log in (tmp / "multirun").glob("*/train.log")]
        return fitting() if sum(" iter " in text for text in logs) >= n else None
    return check


def _interrupt_while_two_fit(tmp: Path, process: subprocess.Popen, signum: int) -> str:
    """Once two jobs fit: Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM
    to the main process (as `kill` or a scheduler sends it); returns the output."""
    try:
        wait_until(_iterating(tmp, 2), "two jobs to fit", process)
        if signum == signal.SIGINT:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        return _finish(process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


# The child: Ctrl-C (a real SIGINT, Python's own handler) inside a weakref callback, where Python
# cannot raise it, then an ordinary error in another callback, then the check a loop makes between steps.
UNRAISABLE_CTRL_C = r"""
import signal, sys, weakref
from nmfstudy.processes import keep_unraisable_interrupts, raise_if_terminated

signal.signal(signal.SIGINT, signal.default_int_handler)  # a background pytest may pass SIGINT on ignored
keep_unraisable_interrupts()
keep_unraisable_interrupts()  # twice, as train.py and the sweeper both install it: one hook

class Thing:
    pass

def interrupted(ref):
    signal.raise_signal(signal.SIGINT)  # its KeyboardInterrupt is raised here, in the callback
    print("the callback went on", flush=True)

def failing(ref):
    raise ValueError("an ordinary error in a callback")

thing = Thing()
watch = weakref.ref(thing, interrupted)
del thing  # the callback runs now
print("spent", flush=True)
other = Thing()
watch_other = weakref.ref(other, failing)
del other
try:
    raise_if_terminated()
except KeyboardInterrupt as err:
    print("raised", type(err).__name__, flush=True)
    sys.exit(130)
print("lost", flush=True)
"""


def test_a_ctrl_c_python_cannot_raise_is_raised_at_the_next_check():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", UNRAISABLE_CTRL_C], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    # the interrupt was spent in the callback and printed nothing; the check raised it, as Ctrl-C (not Terminated)
    assert out.stdout.splitlines() == ["spent", "raised KeyboardInterrupt"], out.stdout + out.stderr
    assert out.returncode == 130, out.stderr
    assert "KeyboardInterrupt" not in out.stderr
    # an ordinary unraisable error reaches Python's own hook, printed as before
    assert out.stderr.count("Exception ignored in") == 1, out.stderr
    assert "ValueError: an ordinary error in a callback" in out.stderr and "Traceback" in out.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_joblib_sweep_leaves_no_job_running(tmp_path, signum):
    process = _start(tmp_path, "k=3,4", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *LONG_FIT, multirun=True)
    out = _interrupt_while_two_fit(tmp_path, process, signum)
    assert process.returncode != 0 and "Traceback" not in out, out[-3000:]
    runs = mlflow_runs(tmp_path)
    jobs = [r for r in runs if r.data.tags["nmfstudy.kind"] == "run"]
    assert sorted(r.data.params["k"] for r in jobs) == ["3", "4"]
    assert all(r.info.status == "KILLED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]


def _study(tmp: Path, *extra: str) -> list[str]:
    return ["hparams_search=nmf_k", "dataset=digits", f"hydra.sweeper.storage=sqlite:///{tmp / 'optuna.db'}",
            "hydra.sweeper.study_name=s", "method.tol=0", *extra]


def _trials(tmp: Path):
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp / 'optuna.db'}").get_trials()


def _running_trial(tmp: Path) -> dict[int, str] | None:
    """{trial number: its MLflow run id} of RUNNING trials that have their run."""
    rows = _query(tmp / "optuna.db", "select t.number, a.value_json from trials t join trial_user_attributes a on "
                  "a.trial_id = t.trial_id and a.key = 'mlflow_run_id' "
                  "where t.state = 'RUNNING' and a.value_json != 'null'")
    return {number: value.strip('"') for number, value in rows} or None


def test_a_study_killed_during_a_trial_is_cleaned_up_and_retried_on_resume(tmp_path):
    process = _start(tmp_path, *_study(tmp_path, "hydra.sweeper.n_trials=3", "method.max_iter=1000000",
                                       "k=10", "dataset.n_samples=600"), multirun=True)
    try:
        ((number, run_id),) = wait_until(lambda: _running_trial(tmp_path), "a trial to start", process).items()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert [t.state for t in _trials(tmp_path)] == [TrialState.RUNNING]

    result = run_train(tmp_path, *_study(tmp_path, "hydra.sweeper.n_trials=2", "method.max_iter=20", "k=10",
                                         "dataset.n_samples=600"), multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert f"trial 0 FAIL, its worker, process {process.pid}" in out and "retried" in out
    trials = _trials(tmp_path)
    # the retry first, then the 2 new trials asked for (a retry does not count against n_trials)
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    retry = trials[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == trials[0].params
    runs = {r.info.run_id: r for r in mlflow_runs(tmp_path)}
    assert number == 0 and runs[run_id].info.status == "KILLED"
    assert runs[retry.user_attrs["mlflow_run_id"]].data.tags["optuna.retry_of"] == "0"
    (study_run,) = [r for r in runs.values() if r.data.tags["nmfstudy.kind"] == "study"]
    assert study_run.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values() if r is not study_run} == {study_run.info.run_id}
    assert all(r.info.status != "RUNNING" for r in runs.values())


def test_a_killed_joblib_worker_fails_its_trial_and_the_study_goes_on(tmp_path):
    """kill -9 of one joblib worker: its trial FAIL and retried, the batch's other trial keeps its result."""
    process = _start(tmp_path, *_study(tmp_path, "hydra.sweeper.n_trials=4", "hydra/launcher=joblib",
                                       "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2", "k=10",
                                       "dataset.n_samples=600", "method.max_iter=3000"), multirun=True)
    try:
        def worker_run():
            return {run: pid for run, pid in (_fitting(tmp_path)() or {}).items() if pid != str(process.pid)} or None

        victim, pid = next(iter(wait_until(worker_run, "a joblib worker's fit", process).items()))
        os.kill(int(pid), signal.SIGKILL)
        out = _finish(process, timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    trials = _trials(tmp_path)
    killed = [t for t in trials if t.user_attrs.get("mlflow_run_id") == victim]
    assert len(killed) == 1 and killed[0].state == TrialState.FAIL
    assert "died" in killed[0].user_attrs["error"] or "Terminated" in killed[0].user_attrs["error"]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 4  # 4 asked; the lost one came back
    runs = {r.info.run_id: r for r in mlflow_runs(tmp_path)}
    assert runs[victim].info.status == "KILLED"
    assert all(r.info.status != "RUNNING" for r in runs.values())


def test_which_running_runs_are_dead(tmp_path):
    """Same host: the process id (and its start time) decides; another host: the heartbeat; else unknown."""
    import subprocess as sp

    from mlflow.tracking import MlflowClient
    from mlflow.utils.time import get_current_time_millis

    from nmfstudy import tracking

    store = tracking.Store(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlruns")
    client = tracking.open_store(store)
    exp = tracking.experiment_id(client, store, "e")
    gone = sp.Popen(["true"])
    gone.wait()
    me = tracking.process_tags()
    now = get_current_time_millis()
    old, fresh = str(now - 600_000), str(now)
    beating = {tracking.HEARTBEAT_INTERVAL_TAG: "60"}
    cases = {
        "dead pid": {**me, tracking.PID_TAG: str(gone.pid)},
        "reused pid": {**me, tracking.PID_START_TAG: "1"},
        "alive": me,
        "other host, old beat": {tracking.HOST_TAG: "elsewhere", tracking.HEARTBEAT_TAG: old, **beating},
        "other host, fresh beat": {tracking.HOST_TAG: "elsewhere", tracking.HEARTBEAT_TAG: fresh, **beating},
        "other host, no heartbeat": {tracking.HOST_TAG: "elsewhere", tracking.PID_TAG: "1"},
    }
    ids = {name: client.create_run(exp, run_name=name, tags=tags).info.run_id for name, tags in cases.items()}
    # a study's run lives while one of its trials' runs lives, whoever created it
    dead_owner = {**me, tracking.PID_TAG: str(gone.pid), tracking.KIND_TAG: "study"}
    busy = client.create_run(exp, run_name="busy study", tags=dead_owner).info.run_id
    client.create_run(exp, run_name="its live trial", tags={**me, "mlflow.parentRunId": busy})
    idle = client.create_run(exp, run_name="idle study", tags=dead_owner).info.run_id
    client.create_run(exp, run_name="its dead trial", tags={**cases["dead pid"], "mlflow.parentRunId": idle})

    killed = set(tracking.end_dead_runs(client, [exp], grace_s=300))
    names = {client.get_run(run_id).info.run_name for run_id in killed}
    assert names == {"dead pid", "reused pid", "other host, old beat", "idle study", "its dead trial"}
    for run_id in killed:
        run = MlflowClient(store.tracking_uri).get_run(run_id)
        assert run.info.status == "KILLED" and "ended without closing the run" in run.data.tags["error"]
    assert client.get_run(ids["alive"]).info.status == "RUNNING"
    assert client.get_run(busy).info.status == "RUNNING"
    assert tracking.end_dead_runs(client, [exp], grace_s=300) == []  # nothing twice


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_parallel_study_leaves_nothing_running(tmp_path, signum):
    """A study with two joblib jobs: SIGTERM (a scheduler) queues the trials again, Ctrl-C does not.
    (Two seeds: the sampler proposes one init twice, which would otherwise be one fit and a repeat.)"""
    process = _start(tmp_path, *_study(tmp_path, "hydra.sweeper.n_trials=2", "hydra/launcher=joblib",
                                       "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2", "k=10",
                                       "hydra.sweeper.seeds=2",
                                       "dataset.n_samples=600", "method.max_iter=1000000"), multirun=True)
    out = _interrupt_while_two_fit(tmp_path, process, signum)
    assert process.returncode != 0 and "Traceback" not in out, out[-3000:]
    trials = _trials(tmp_path)
    assert [t.state for t in trials[:2]] == [TrialState.FAIL] * 2
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert len(queued) == (2 if signum == signal.SIGTERM else 0)
    assert {t.system_attrs["failed_trial"] for t in queued} == ({0, 1} if queued else set())
    runs = mlflow_runs(tmp_path)
    assert {r.data.tags["nmfstudy.kind"] for r in runs} == {"run", "study"}
    assert all(r.info.status == "KILLED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
