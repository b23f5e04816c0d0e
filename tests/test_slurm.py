"""Studies on a real SLURM: both README patterns, and every way a cluster ends a job.

The cluster is real (tests/servers.py: munged, slurmctld and slurmd of this machine, started once
per session by the `slurm_cluster` fixture), without accounting, as many small clusters run:
`sacct` answers "accounting storage is disabled". PostgreSQL and the MLflow server are the
session's `study_servers`. After every study: no trial RUNNING or WAITING, no MLflow run RUNNING,
one run per trial, and every COMPLETE trial's run FINISHED.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import LEAN, ROOT, wait_until

optuna = pytest.importorskip("optuna")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
from optuna.trial import TrialState  # noqa: E402

# Long enough to be caught mid-fit (a few seconds on digits), short enough to keep the suite quick.
FIT = ["dataset=digits", "dataset.n_samples=400", "method.tol=0", "method.max_iter=3000"]


def _env(cluster) -> dict[str, str]:
    env = {k: v for k, v in cluster.env.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}


def _study_args(servers, study: str, experiment: str, sweep_dir: Path) -> list[str]:
    return ["hparams_search=nmf_k", *FIT, f"hydra.sweeper.storage={servers.optuna_url}",
            f"hydra.sweeper.study_name={study}", f"tracking.uri={servers.mlflow_url}",
            f"tracking.experiment={experiment}", f"hydra.sweep.dir={sweep_dir}", *LEAN]


def _trials(servers, study: str) -> list:
    try:
        return optuna.load_study(study_name=study, storage=servers.optuna_url).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def _runs(servers, experiment: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(servers.mlflow_url)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    return {r.info.run_id: r for r in client.search_runs([exp.experiment_id], max_results=1000)}


def _fitting(servers, study: str, number: int):
    """Trial `number` once its job reports (its fit is under way), else None."""
    trials = [t for t in _trials(servers, study) if t.number == number]
    return trials[0] if trials and trials[0].state == TrialState.RUNNING and trials[0].intermediate_values else None


def _check_study(servers, study: str, experiment: str) -> tuple[list, dict]:
    """The invariants every study must keep, whatever the cluster did; its trials and their runs."""
    trials = _trials(servers, study)
    runs = _runs(servers, experiment)
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not [r.info.run_name for r in runs.values() if r.info.status == "RUNNING"]
    trial_runs = {t.number: t.user_attrs.get("mlflow_run_id") for t in trials}
    assert len(set(trial_runs.values())) == len(trials) and None not in trial_runs.values()  # one run per trial
    assert set(trial_runs.values()) == {r.info.run_id for r in runs.values()
                                        if r.data.tags.get("nmfstudy.kind") == "run"}
    for t in trials:
        run = runs[trial_runs[t.number]]
        assert run.data.tags.get("optuna.state") == t.state.name
        if t.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED" and run.data.metrics["accuracy"] == pytest.approx(t.value)
    return trials, runs


def _pending_signals(pid: int) -> set[int]:
    """The signals sent to process `pid` and not yet handled (/proc: its own and its thread group's)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = 0
    for field in ("SigPnd", "ShdPnd"):
        mask |= int(re.search(rf"^{field}:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
    return {signum for signum in range(1, 65) if mask >> (signum - 1) & 1}


def _stopped_until_signalled(pid: int, signals: tuple[int, ...], sweep: subprocess.Popen) -> None:
    """Hold process `pid` stopped (SIGSTOP) until one of `signals` is sent to it, then let it go on (SIGCONT).

    A stopped process takes no CPU, and a signal sent to it stays pending until it runs again, when its handler
    sees it as a running process would have: so a job can wait for SLURM's warning without spinning a core.
    """
    with contextlib.suppress(ProcessLookupError):  # ended already
        os.kill(pid, signal.SIGSTOP)
    try:
        while sweep.poll() is None and not _pending_signals(pid) & set(signals):
            time.sleep(0.2)
    except FileNotFoundError:  # the process has ended
        pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _job_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_launcher_slurm_study_keeps_the_neighbours_of_a_cancelled_job_and_retries_it(
        tmp_path, slurm_cluster, study_servers, unique_name):
    """hydra/launcher=slurm, a batch of 2 as one array: `scancel` of task 0 mid-fit fails and retries
    trial 0 only; trial 1 finishes and keeps its result; nothing polls sacct, so nothing hangs."""
    servers, study = study_servers, unique_name
    argv = [sys.executable, "src/train.py", "-m", *_study_args(servers, study, study, tmp_path / "multirun"),
            "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
            "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2"]
    with open(tmp_path / "sweep.log", "w") as log:
        sweep = subprocess.Popen(argv, cwd=ROOT, env=_env(slurm_cluster), stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        trial = wait_until(lambda: _fitting(servers, study, 0), "trial 0 fitting in its SLURM job", sweep)
        run = _runs(servers, study)[trial.user_attrs["mlflow_run_id"]]
        # the job's BLAS threads are its CPUs (the preset's setup lines), its command the user's
        environ = _job_environ(int(run.data.tags["nmfstudy.pid"]))
        assert environ["OMP_NUM_THREADS"] == environ["OPENBLAS_NUM_THREADS"] == "1"
        assert "SLURM_JOB_ID" in environ
        jobs = dict(slurm_cluster.squeue())
        task0 = next(job for job in jobs if job.endswith("_0"))
        slurm_cluster.scancel(task0)
        assert sweep.wait(timeout=240) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    output = (tmp_path / "sweep.log").read_text()
    assert not slurm_cluster.squeue()
    trials, runs = _check_study(servers, study, study)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    killed, kept, retry = (runs[t.user_attrs["mlflow_run_id"]] for t in trials)
    assert trials[2].params == trials[0].params and "trial 2 retries trial 0" in output
    assert killed.info.status == "KILLED"
    assert killed.data.tags["error"] == "interrupted: SLURM ended the job (scancel, preemption or its time limit)"
    assert "Terminated: signal 15" in trials[0].user_attrs["error"]
    # the neighbour ran once, in its own job, and its result was kept: never recomputed
    assert f"trial 1: accuracy = [{trials[1].value}]" in output and "trial 1 retries" not in output
    assert "sacct" not in output and "Bypassing" not in output
    for run in (killed, kept, retry):
        assert run.data.tags["command"].startswith("train.py -m hparams_search=nmf_k")
        assert "hydra/launcher=slurm" in run.data.tags["command"]


def test_launcher_slurm_time_limit_warning_and_sigkill_retry_the_trial(
        tmp_path, slurm_cluster, study_servers, unique_name):
    """SLURM's warning before the time limit (USR2, as `--signal=USR2@120` sends it) stops the job:
    run KILLED with its reason, trial retried. A job whose process is SIGKILLed (the out-of-memory
    killer: no result file, and no accounting to ask) is found ended through squeue: retried too."""
    servers, study = study_servers, unique_name
    argv = [sys.executable, "src/train.py", "-m", *_study_args(servers, study, study, tmp_path / "multirun"),
            "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
            "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2"]
    with open(tmp_path / "sweep.log", "w") as log:
        sweep = subprocess.Popen(argv, cwd=ROOT, env=_env(slurm_cluster), stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        wait_until(lambda: _fitting(servers, study, 0) and _fitting(servers, study, 1), "both trials fitting", sweep)
        jobs = dict(slurm_cluster.squeue())
        task0 = next(job for job in jobs if job.endswith("_0"))
        slurm_cluster.scancel("--signal=USR2", task0)
        # trial 1's job process dies as under the out-of-memory killer: no result file is written
        run1 = _runs(servers, study)[_fitting(servers, study, 1).user_attrs["mlflow_run_id"]]
        os.kill(int(run1.data.tags["nmfstudy.pid"]), signal.SIGKILL)
        assert sweep.wait(timeout=240) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    output = (tmp_path / "sweep.log").read_text()
    sacct = subprocess.run(["sacct"], env=slurm_cluster.env, capture_output=True, text=True, timeout=30)
    assert "accounting storage is disabled" in sacct.stderr  # so the lost job was found without it
    trials, runs = _check_study(servers, study, study)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    timed_out, killed = runs[trials[0].user_attrs["mlflow_run_id"]], runs[trials[1].user_attrs["mlflow_run_id"]]
    assert timed_out.info.status == killed.info.status == "KILLED"
    assert timed_out.data.tags["error"] == "interrupted: the SLURM job's time limit is near (sbatch --signal)"
    assert re.search(r"JobInterrupted: SLURM job \d+_1 ended \S+ without a result", killed.data.tags["error"])
    assert {t.params["k"] for t in trials[2:]} == {t.params["k"] for t in trials[:2]}
    assert "trial 2 retries trial" in output and "trial 3 retries trial" in output


@pytest.mark.slow
def test_launcher_slurm_real_time_limit_ends_the_run_killed(
        tmp_path, slurm_cluster, study_servers, unique_name):
    """A job that runs into its real time limit (2 minutes; USR2 30 s before it): run KILLED with the
    reason, trial FAIL. (Its retry is the USR2 test's: a retry would meet the same limit and double this
    test's minutes.) sbatch's manual: "the signal may be sent up to 60 seconds earlier than specified",
    so the warning due 90 s into the job comes 30 to 90 s in. A warning that comes before the job's
    Python has its handler kills the job outright (SLURM's default for USR2) and loses the reason: with
    a 1-minute limit and the warning due 30 s in, that happened in CI on 2026-12-07, under load."""
    servers, study = study_servers, unique_name
    args = [arg for arg in _study_args(servers, study, study, tmp_path / "multirun") if "max_iter" not in arg]
    argv = [sys.executable, "src/train.py", "-m", *args, "method.max_iter=10000000", "hydra/launcher=slurm",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=2",
            "hydra.launcher.signal_delay_s=30", "hydra.sweeper.n_trials=1", "hydra.sweeper.max_retry=0"]
    with open(tmp_path / "sweep.log", "w") as log:
        sweep = subprocess.Popen(argv, cwd=ROOT, env=_env(slurm_cluster), stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        trial = wait_until(lambda: _fitting(servers, study, 0) or sweep.poll() is not None,
                           "the trial fitting in its SLURM job")
        if trial is not True:
            # Its fit only has to be under way when the warning comes: it waits for it stopped, taking no core
            # for those 30 to 90 s. (Only once it fits: a warning that comes before its handler is installed
            # kills the job outright.)
            pid = int(_runs(servers, study)[trial.user_attrs["mlflow_run_id"]].data.tags["nmfstudy.pid"])
            _stopped_until_signalled(pid, (signal.SIGUSR2, signal.SIGTERM), sweep)
        assert sweep.wait(timeout=400) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    trials, runs = _check_study(servers, study, study)
    assert [t.state for t in trials] == [TrialState.FAIL]
    run = runs[trials[0].user_attrs["mlflow_run_id"]]
    assert run.info.status == "KILLED"
    # the job's own tag ("interrupted: ..."), or the sweeper's ("Terminated: ...") when the warning lands
    # before the job's run has started: the reason either way
    assert run.data.tags["error"].endswith(": the SLURM job's time limit is near (sbatch --signal)")
    assert "Terminated: signal 12" in trials[0].user_attrs["error"]


@pytest.mark.slow
def test_launcher_slurm_sweeper_stopped_by_sigterm_cancels_its_jobs(tmp_path, slurm_cluster, study_servers,
                                                                    unique_name):
    """The sweeping process itself preempted (SIGTERM): the batch's jobs are cancelled, not left to run
    unattended; their trials FAIL and are queued again, and the same command run again runs them."""
    servers, study = study_servers, unique_name
    argv = [sys.executable, "src/train.py", "-m", *_study_args(servers, study, study, tmp_path / "multirun"),
            "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
            "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "hydra.sweeper.max_trials=2"]
    with open(tmp_path / "sweep.log", "w") as log:
        sweep = subprocess.Popen(argv, cwd=ROOT, env=_env(slurm_cluster), stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        wait_until(lambda: _fitting(servers, study, 0) and _fitting(servers, study, 1), "both trials fitting", sweep)
        sweep.send_signal(signal.SIGTERM)
        assert sweep.wait(timeout=120) == 130, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    slurm_cluster.wait_empty(timeout=60)  # cancelled: they do not run on
    trials = _trials(servers, study)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING, TrialState.WAITING]
    runs = _runs(servers, study)
    assert [runs[t.user_attrs["mlflow_run_id"]].info.status for t in trials[:2]] == ["KILLED", "KILLED"]
    again = subprocess.run(argv, cwd=ROOT, env=_env(slurm_cluster), capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    trials, runs = _check_study(servers, study, study)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]


README_SCRIPT = re.compile(r"```bash\n(#!/bin/bash\n#SBATCH --array.*?)```", re.S)


def test_sbatch_array_of_workers_survives_a_cancelled_worker(tmp_path, slurm_cluster, study_servers, unique_name):
    """The README's array job script, as written, with 2 workers: `scancel` of one worker mid-trial
    (SIGTERM, as preemption sends it) fails its trial, which the other worker retries."""
    servers, study = study_servers, unique_name
    script = README_SCRIPT.search((ROOT / "README.md").read_text()).group(1)
    worker = " ".join(["src/train.py", "-m", *_study_args(servers, study, study, tmp_path / "multirun"),
                       "hydra.sweeper.n_trials=4", "hydra.sweeper.max_trials=4"])
    assert "srun python src/train.py -m hparams_search=nmf_k ..." in script
    script = script.replace("python src/train.py -m hparams_search=nmf_k ...",
                            f"{sys.executable} {worker}")
    (tmp_path / "workers.sh").write_text(script)
    # sbatch's options on its command line take precedence over the script's #SBATCH lines
    array = slurm_cluster.sbatch("--array=0-1", "--cpus-per-task=1", "--mem=1G", "--time=10",
                                 f"--output={tmp_path}/worker-%a.log", str(tmp_path / "workers.sh"),
                                 cwd=ROOT, env=_env(slurm_cluster))
    try:
        def first_worker_fitting():
            found = re.search(r"worker \S+:(\d+)", _read(tmp_path / "worker-0.log"))
            running = [t for t in _trials(servers, study) if t.state == TrialState.RUNNING and t.intermediate_values
                       and found and t.user_attrs.get("worker_pid") == int(found.group(1))]
            return running[0] if running else None

        trial = wait_until(first_worker_fitting, "worker 0 fitting a trial", timeout=180)
        slurm_cluster.scancel(f"{array}_0")
        slurm_cluster.wait_empty(timeout=240)
    finally:
        slurm_cluster.scancel(array)
    logs = {n: (tmp_path / f"worker-{n}.log").read_text() for n in (0, 1)}
    trials, runs = _check_study(servers, study, study)
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 4, logs
    assert trials[trial.number].state == TrialState.FAIL
    killed = runs[trials[trial.number].user_attrs["mlflow_run_id"]]
    assert killed.info.status == "KILLED"
    retries = [t for t in trials if f"trial {t.number} retries trial {trial.number}" in logs[1]]
    assert len(retries) == 1 and retries[0].params == trial.params
    assert "OMP_NUM_THREADS" in script and "interrupted" in logs[0]


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
