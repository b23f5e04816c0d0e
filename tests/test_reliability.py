"""Every run is there, once, with the right status: parallel jobs, interruptions, reproducibility."""
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, default_sigint, mlflow_runs, run_train

TINY = ["dataset.n_samples=200", "method.max_iter=20"]


@pytest.mark.slow
def test_parallel_jobs_on_a_fresh_store_then_eight_more(tmp_path):
    assert not (tmp_path / "mlflow.db").exists()
    result = run_train(tmp_path, "k=2,3,4,5,6,7", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY,
                       multirun=True, fresh_store=True)
    assert result.returncode == 0, result.stderr
    runs = [r for r in mlflow_runs(tmp_path) if r.data.tags["nmfstudy.kind"] == "run"]
    assert sorted(int(r.data.params["k"]) for r in runs) == [2, 3, 4, 5, 6, 7]
    assert all(r.info.status == "FINISHED" for r in runs)

    (tmp_path / "multirun").rename(tmp_path / "first")
    ks = ",".join(str(k) for k in range(2, 10))
    # what this asserts is the store under two writers at a time, run after run: figures and models only add time
    result = run_train(tmp_path, f"k={ks}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "dataset=digits", *TINY,
                       "tracking.figures=none", "tracking.model=none", multirun=True, timeout=900)
    assert result.returncode == 0, result.stderr
    runs = [r for r in mlflow_runs(tmp_path) if r.data.tags["nmfstudy.kind"] == "run"]
    assert len(runs) == 14 and all(r.info.status == "FINISHED" for r in runs)
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 2
    by_parent = {p: sorted(int(r.data.params["k"]) for r in runs if r.data.tags["mlflow.parentRunId"] == p)
                 for p in parents}
    assert sorted(by_parent.values()) == [list(range(2, 8)), list(range(2, 10))]


def _wait_for(process: subprocess.Popen, text: str, timeout: float = 120) -> str:
    seen, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen += line
        if text in line:
            return seen
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"never saw {text!r}; output:\n{seen}")


@pytest.mark.parametrize("signum, multirun", [(signal.SIGINT, False), (signal.SIGTERM, True)],
                         ids=["SIGINT-run", "SIGTERM-sweep"])
def test_an_interrupted_fit_ends_and_is_marked_killed(tmp_path, signum, multirun):
    args = [sys.executable, "src/train.py", *(["-m"] if multirun else []),
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "progress_every_s=0.1",
            "dataset.n_samples=2000", "method.max_iter=1000000", "method.tol=0", "method.solver=mu"]
    args += ["k=3,4", f"hydra.sweep.dir={tmp_path / 'm'}"] if multirun else [f"hydra.run.dir={tmp_path / 'r'}"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**env, "PYTHONUNBUFFERED": "1"}, preexec_fn=default_sigint)
    try:
        _wait_for(process, "loss")
        _wait_for(process, "loss")  # a couple of iterations in: the run has its params
        process.send_signal(signum)
        rest, _ = process.communicate(timeout=60)  # a hang guard: the fit alone would run for hours
    finally:
        process.kill()
    assert process.returncode == 130, rest
    assert "interrupted" in rest and "Traceback" not in rest
    runs = mlflow_runs(tmp_path)
    jobs = [r for r in runs if r.data.tags["nmfstudy.kind"] == "run"]
    assert len(jobs) == 1, "the sweep stops at the interrupted job"
    assert jobs[0].info.status == "KILLED" and jobs[0].data.tags["error"] == "interrupted"
    assert jobs[0].data.params["k"] == ("3" if multirun else "10") and jobs[0].data.params["method.solver"] == "mu"
    assert all(r.info.status != "RUNNING" for r in runs)
    if multirun:
        (parent,) = [r for r in runs if r.data.tags["nmfstudy.kind"] == "sweep"]
        assert parent.info.status == "KILLED"


def test_same_config_and_seed_give_the_same_metrics(tmp_path):
    result = run_train(tmp_path, "method=nmf,kmeans", "seed=7,7", "k=6", *TINY, multirun=True)
    assert result.returncode == 0, result.stderr
    runs = [r for r in mlflow_runs(tmp_path) if r.data.tags["nmfstudy.kind"] == "run"]
    for method in ("nmf", "kmeans"):
        first, second = [r.data.metrics for r in runs if r.data.params["method"] == method]
        assert first.keys() == second.keys()
        for name in first.keys() - {"fit_time_s"}:
            assert first[name] == pytest.approx(second[name], rel=1e-6, abs=1e-6), (method, name)
    record = runs[0]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    environment = client.download_artifacts(record.info.run_id, "environment.txt", str(tmp_path))
    text = open(environment).read()
    assert "numpy==" in text and "scikit-learn==" in text and "mlflow==" in text
    assert {"git_commit", "command", "dataset_fingerprint"} <= record.data.tags.keys()



def _open_store_at_once(db: str, barrier) -> None:
    from nmfstudy import tracking

    barrier.wait()
    tracking.open_store(tracking.Store(f"sqlite:///{db}", None))


def test_processes_opening_a_fresh_store_at_once_all_succeed(tmp_path):
    """Without the lock, the schema migration of a new SQLite store breaks in all but one process."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(6)
    workers = [context.Process(target=_open_store_at_once, args=(str(tmp_path / "mlflow.db"), barrier))
               for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0] * 6
