"""One study, many workers: PostgreSQL for Optuna, an MLflow tracking server, real processes.

The servers are real (tests/servers.py, started once per session by the `study_servers`
fixture). The fault test runs three workers of one study, kills one with SIGKILL and one with
SIGTERM in the middle of a trial, restarts PostgreSQL, and checks Optuna and MLflow afterwards.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import preloaded
import pytest
from helpers import LEAN, ROOT, run_env, wait_until

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402


def _worker_argv(tmp: Path, servers, study: str, experiment: str, *extra: str) -> list[str]:
    return [sys.executable, "src/train.py", "-m", "hparams_search=nmf_k", "dataset=digits",
            f"hydra.sweeper.storage={servers.optuna_url}", f"hydra.sweeper.study_name={study}",
            f"tracking.uri={servers.mlflow_url}", f"tracking.experiment={experiment}",
            f"hydra.sweep.dir={tmp}/multirun/{len(list(tmp.glob('w*.log')))}", *LEAN, *extra]


def _start_worker(tmp: Path, argv: list[str]) -> subprocess.Popen:
    log = tmp / f"w{len(list(tmp.glob('w*.log')))}.log"
    handle = open(log, "w")
    process = subprocess.Popen(argv, cwd=ROOT, env=run_env(), stdout=handle, stderr=subprocess.STDOUT,
                               start_new_session=True)
    process.log = log  # type: ignore[attr-defined]
    return process


def _run(argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """`argv` to its end, in a child of the preloaded interpreter (tests/preloaded.py), as run_train does."""
    return preloaded.run_script(argv, ROOT, run_env(), timeout)


def _load(servers, study: str):
    return optuna.load_study(study_name=study, storage=servers.optuna_url)


def _running_trial_of(servers, study: str, pid: int):
    try:
        trials = _load(servers, study).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    except Exception:  # not created yet, or the server is restarting
        return None
    mine = [t for t in trials if t.user_attrs.get("worker_pid") == pid and t.user_attrs.get("mlflow_run_id")]
    return mine[0] if mine else None


def _mlflow_runs(servers, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(servers.mlflow_url)
    exp = client.get_experiment_by_name(experiment)
    return client, exp, client.search_runs([exp.experiment_id], max_results=1000)


@pytest.mark.slow
def test_three_workers_survive_sigkill_sigterm_and_a_postgres_restart(tmp_path, study_servers, unique_name):
    servers, study, experiment = study_servers, unique_name, unique_name
    max_trials = 12
    extra = ["hydra.sweeper.n_trials=30", f"hydra.sweeper.max_trials={max_trials}",
             "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=6", "hydra.sweeper.max_retry=2",
             "method.tol=0", "method.max_iter=400", "tracking.heartbeat_interval=2"]
    workers = []
    try:
        for _ in range(3):
            workers.append(_start_worker(tmp_path, _worker_argv(tmp_path, servers, study, experiment, *extra)))
        killed, terminated, survivor = workers
        killed_trial = wait_until(lambda: _running_trial_of(servers, study, killed.pid), "worker 0's trial")
        os.killpg(killed.pid, signal.SIGKILL)
        terminated_trial = wait_until(lambda: _running_trial_of(servers, study, terminated.pid), "worker 1's trial")
        terminated.send_signal(signal.SIGTERM)
        assert terminated.wait(timeout=60) != 0
        servers.postgres.restart()
        assert survivor.wait(timeout=400) == 0, survivor.log.read_text()[-4000:]
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
    log = survivor.log.read_text()
    assert "Traceback" not in log and "Traceback" not in terminated.log.read_text()

    trials = _load(servers, study).get_trials()
    by_number = {t.number: t for t in trials}
    assert sorted(by_number) == list(range(len(trials)))  # no gaps
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == max_trials
    for lost in (killed_trial, terminated_trial):
        assert by_number[lost.number].state == TrialState.FAIL
        # Optuna's retries all name the first trial; a retry under way when PostgreSQL restarts fails in turn
        # and is retried once more (max_retry=2): the last one completes
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]  # in trial order
        states = [t.state for t in retries]
        assert states in ([TrialState.COMPLETE], [TrialState.FAIL, TrialState.COMPLETE]), (lost.number, states)
        assert all(t.params == lost.params for t in retries)
    # a living worker found the SIGKILLed one's trial: by its process id (one host) or its heartbeat
    found = f"trial {killed_trial.number} FAIL, "
    assert found in log or found in terminated.log.read_text()

    client, exp, runs = _mlflow_runs(servers, experiment)
    (study_run,) = [r for r in runs if r.data.tags.get("nmfstudy.kind") == "study"]
    trial_runs = [r for r in runs if r is not study_run]
    assert len(trial_runs) == len(trials)  # no MLflow run without a trial, no trial without one
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {study_run.info.run_id}
    by_run_number = {int(r.data.tags["optuna.trial_number"]): r for r in trial_runs}
    assert sorted(by_run_number) == sorted(by_number)
    for number, run in by_run_number.items():
        trial = by_number[number]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.tags["optuna.trial_id"].isdigit()
        expected = ("FINISHED",) if trial.state != TrialState.FAIL else ("FAILED", "KILLED")
        assert run.info.status in expected, (number, trial.state, run.info.status)
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    assert study_run.info.status == "FINISHED"
    counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    metrics = client.get_run(study_run.info.run_id).data.metrics
    assert (metrics["trials_complete"], metrics["trials_pruned"], metrics["trials_fail"]) == (
        counts[TrialState.COMPLETE], counts[TrialState.PRUNED], counts[TrialState.FAIL])
    # each trial drew with its own seed: seed + trial number
    assert all(t.user_attrs["sampler_seed"] == t.number for t in trials)
    assert {t.user_attrs["worker_pid"] for t in trials} >= {killed.pid, terminated.pid, survivor.pid}


def test_a_second_worker_joins_the_study_and_its_run(tmp_path, study_servers, unique_name):
    """Two commands, one after the other (a resume is a worker too): one study run, trials 0-3 under it."""
    servers = study_servers
    argv = _worker_argv(tmp_path, servers, unique_name, unique_name, "hydra.sweeper.n_trials=3",
                        "hydra.sweeper.max_trials=4", "method.max_iter=10")
    first = _run(argv)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run(argv)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "has reached max_trials=4" in second.stdout
    trials = _load(servers, unique_name).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    _, _, runs = _mlflow_runs(servers, unique_name)
    (study_run,) = [r for r in runs if r.data.tags.get("nmfstudy.kind") == "study"]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs if r is not study_run) == [0, 1, 2, 3]
    assert study_run.info.status == "FINISHED" and study_run.data.metrics["trials_complete"] == 4
    assert f"/#/experiments/{study_run.info.experiment_id}/runs/{study_run.info.run_id}" in second.stdout
    # the trial's artifacts went through the server to its artifact store
    from mlflow.tracking import MlflowClient

    paths = {a.path for a in MlflowClient(servers.mlflow_url).list_artifacts(runs[0].info.run_id)}
    assert "config.yaml" in paths or "figures" in paths


@pytest.mark.parametrize("override, message, status", [
    ("hydra.sweeper.storage=postgresql+psycopg://postgres@127.0.0.1:{free}/optuna",
     "hydra.sweeper.storage postgresql+psycopg://postgres@127.0.0.1:{free}/optuna cannot be used:", 1),
    ("hydra.sweeper.storage={pg}/no_such_database", "no_such_database\" does not exist", 1),
    ("hydra.sweeper.storage=postgresql+pg8000://postgres@127.0.0.1:{port}/optuna",
     "needs a database driver that is not installed", 1),
    # the store is opened first, by the multirun's callback, which exits as a single run does
    ("tracking.uri=http://127.0.0.1:{free}", "error: tracking.uri http://127.0.0.1:{free} cannot be used", 2),
], ids=["unreachable-postgres", "missing-database", "missing-driver", "unreachable-mlflow"])
def test_unusable_servers_stop_the_worker_before_any_trial(tmp_path, study_servers, unique_name, override, message,
                                                           status):
    from servers import free_port

    pg = study_servers.optuna_url.rsplit("/", 1)[0]
    values = {"free": free_port(), "pg": pg, "port": study_servers.postgres.port}
    argv = [sys.executable, "src/train.py", "-m", "hparams_search=nmf_k", "dataset=digits",
            f"hydra.sweep.dir={tmp_path}/m", f"hydra.sweeper.study_name={unique_name}",
            f"hydra.sweeper.storage={study_servers.optuna_url}", f"tracking.uri={study_servers.mlflow_url}",
            f"tracking.experiment={unique_name}", override.format(**values)]
    result = _run(argv, timeout=120)
    assert result.returncode == status, result.stderr[-2000:]
    assert message.format(**values) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m" / "0").exists()  # no trial ran


def test_a_study_that_exists_with_another_objective_is_refused(tmp_path, study_servers, unique_name):
    argv = _worker_argv(tmp_path, study_servers, unique_name, unique_name, "hydra.sweeper.n_trials=1",
                        "method.max_iter=5")
    assert _run(argv).returncode == 0
    result = _run([*argv, "objective=nmi"])
    assert result.returncode == 1
    assert f"study '{unique_name}'" in result.stderr and "optimizes ['accuracy'], not ['nmi']" in result.stderr
    assert "set another hydra.sweeper.study_name" in result.stderr and "Traceback" not in result.stderr
    assert len(_load(study_servers, unique_name).get_trials()) == 1


# --- launchers for clusters, and a store that is for one machine only ----------------------------

def test_the_slurm_preset_composes_on_submitit():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from helpers import CONF
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=["hparams_search=nmf_k", "hydra/launcher=slurm",
                                           "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.nmfstudy_submitit_launcher._launcher.SlurmLauncher"
    assert (launcher.partition, launcher.cpus_per_task, launcher.mem_gb, launcher.signal_delay_s) == ("gpu", 2, 4, 120)


@pytest.mark.slow
def test_a_study_on_submitit_local_jobs(tmp_path):
    """hydra/launcher=submitit_local: each trial's job is another process, started by submitit."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from helpers import mlflow_runs, run_train

    result = run_train(tmp_path, "hparams_search=nmf_k", "dataset=digits", "hydra/launcher=submitit_local",
                       f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", "hydra.sweeper.n_trials=2",
                       "hydra.sweeper.n_jobs=2", "method.max_iter=20", multirun=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name="nmf_k-digits", storage=f"sqlite:///{tmp_path}/optuna.db").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    runs = {r.info.run_id: r for r in mlflow_runs(tmp_path)}
    jobs = [runs[t.user_attrs["mlflow_run_id"]] for t in trials]
    assert all(r.info.status == "FINISHED" and "accuracy" in r.data.metrics for r in jobs)
    # the jobs ran in submitit's processes, not in the sweeper's
    assert len({r.data.tags["nmfstudy.pid"] for r in jobs} | {str(t.user_attrs["worker_pid"]) for t in trials}) == 3
    assert (tmp_path / "multirun" / ".submitit").is_dir()


def test_sqlite_storage_written_from_another_machine_is_warned_about(tmp_path):
    from helpers import run_train

    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="nmf_k-digits", storage=url, direction="maximize")
    study.set_user_attr("objective", ["accuracy"])
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={"worker_host": "node-17", "worker_pid": 1}))
    result = run_train(tmp_path, "hparams_search=nmf_k", "dataset=digits", f"hydra.sweeper.storage={url}",
                       "hydra.sweeper.n_trials=1", "method.max_iter=5", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "hydra.sweeper.storage is SQLite, but workers on node-17 also wrote to it" in out
    assert "use PostgreSQL" in out


def _open_at_once(url: str, barrier, results) -> None:
    from nmfstudy.pruning import open_storage

    barrier.wait()
    try:
        open_storage(url)
        results.put("ok")
    except Exception as err:  # what the worker would print
        results.put(f"{type(err).__name__}: {err}")


def test_workers_starting_at_once_on_a_new_database_all_open_it(fresh_optuna_url):
    """They race to create Optuna's tables; without retries most of them fail on a duplicate type."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_open_at_once, args=(fresh_optuna_url, barrier, results)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [results.get(timeout=5) for _ in processes] == ["ok"] * 4


def test_two_workers_at_once_leave_the_alias_best_on_the_best_trials_model(tmp_path, study_servers, unique_name):
    """Both workers register the models of trials that lead when they finish; the alias ends on the best one."""
    from mlflow.tracking import MlflowClient

    servers = study_servers
    argv = _worker_argv(tmp_path, servers, unique_name, unique_name, "hydra.sweeper.n_trials=2",
                        "hydra.sweeper.max_trials=4", "method.max_iter=10", "k=choice(2,9,3,10)",
                        "hydra/sweeper/sampler=bruteforce", "tracking.model=final")
    workers = [_start_worker(tmp_path, argv) for _ in range(2)]
    for worker in workers:
        assert worker.wait(timeout=300) == 0, worker.log.read_text()[-3000:]
    trials = _load(servers, unique_name).get_trials()
    # both workers' first trials log the same data set at once: the lost insert race must not fail one
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    best = max(trials, key=lambda t: t.value)
    client = MlflowClient(servers.mlflow_url)
    at_best = client.get_model_version_by_alias(unique_name, "best")
    assert at_best.run_id == best.user_attrs["mlflow_run_id"]
    assert float(at_best.tags["nmfstudy.objective_value"]) == best.value
    versions = client.search_model_versions(f"name='{unique_name}'")
    assert {v.run_id for v in versions} <= {t.user_attrs["mlflow_run_id"] for t in trials}
