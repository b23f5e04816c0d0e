"""A broken MLflow store, a deleted experiment or a bad study setting ends in one line, before any work."""
from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
from helpers import ROOT, run_train

QUICK = ["dataset=digits", "method.max_iter=5"]


def _make(kind: str, tmp_path):
    path = tmp_path / "mlflow.db"
    if kind == "not a database":
        path.write_text("hello, not a database\n" * 10)
        return path, "is not an SQLite database; move it away"
    if kind == "a folder":
        path.mkdir()
        return path, "is a folder, not a database file"
    with sqlite3.connect(path) as connection:  # what a first start that hit a full disk leaves, with runs
        connection.execute("create table spans (x int)")
        connection.execute("create table runs (run_uuid text)")
        connection.execute("insert into runs values ('kept')")
    return path, "its schema is half-made"


@pytest.mark.parametrize("kind", ["not a database", "a folder", "half-made"])
def test_a_broken_store_is_one_line(tmp_path, kind):
    path, message = _make(kind, tmp_path)
    single = run_train(tmp_path, f"tracking.uri=sqlite:///{path}", *QUICK, timeout=120)
    assert single.returncode == 2 and "Traceback" not in single.stderr, single.stderr[-2000:]
    (line,) = [line for line in single.stderr.splitlines() if line.strip() and "INFO" not in line]
    assert line.startswith(f"error: tracking.uri sqlite:///{path}") and message in line


def test_a_broken_store_stops_a_sweep_and_the_report_too(tmp_path):
    path, message = _make("not a database", tmp_path)
    uri = f"tracking.uri=sqlite:///{path}"
    sweep = run_train(tmp_path, uri, "k=2,3", *QUICK, multirun=True, timeout=120)
    assert sweep.returncode == 2 and "Traceback" not in sweep.stderr, sweep.stderr[-2000:]
    (line,) = [line for line in sweep.stderr.splitlines() if line.startswith("error: ")]
    assert message in line
    assert not (tmp_path / "multirun" / "0").exists()  # no job ran

    report = subprocess.run([sys.executable, "src/report.py", uri, f"report.out={tmp_path / 'r'}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 2 and "Traceback" not in report.stderr and message in report.stderr
    assert not (tmp_path / "r").exists()


def test_a_deleted_experiment_says_how_to_restore_it(tmp_path):
    from mlflow.tracking import MlflowClient

    assert run_train(tmp_path, *QUICK).returncode == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nmfstudy")
    client.delete_experiment(experiment.experiment_id)
    result = run_train(tmp_path, *QUICK)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (f"error: tracking.experiment 'nmfstudy' was deleted (experiment id {experiment.experiment_id}): restore "
            f"it with `mlflow experiments restore --experiment-id {experiment.experiment_id}`") in result.stderr
    study = run_train(tmp_path, "hparams_search=nmf_k", *QUICK, "hydra.sweeper.n_trials=1",
                      f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", multirun=True)
    assert study.returncode == 2 and "Traceback" not in study.stderr and "was deleted" in study.stderr
    from mlflow.entities import ViewType

    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # nothing logged before is lost


def test_study_errors_are_one_line_and_a_new_storage_folder_is_made(tmp_path):
    storage = tmp_path / "new" / "folder" / "optuna.db"
    made = run_train(tmp_path, "hparams_search=nmf_k", *QUICK, "hydra.sweeper.n_trials=1",
                     f"hydra.sweeper.storage=sqlite:///{storage}", multirun=True)
    assert made.returncode == 0, made.stderr[-2000:]
    assert storage.is_file()
    # a missing data folder passes the config check and fails each trial's job
    failing = run_train(tmp_path, "hparams_search=nmf_k", "dataset=mnist", f"dataset.dir={tmp_path / 'none'}",
                        "hydra.sweeper.n_trials=1", "hydra.sweeper.max_failure_rate=0",
                        f"hydra.sweeper.storage=sqlite:///{storage}", multirun=True)
    assert failing.returncode == 1 and "Traceback" not in failing.stderr
    assert "1 of 1 trials failed, more than hydra.sweeper.max_failure_rate=0.0" in failing.stderr


def test_two_studies_get_folders_of_their_own(compose):
    from helpers import CONF
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        dirs = {preset: hydra_compose("config", overrides=[f"hparams_search={preset}"],
                                      return_hydra_config=True).hydra.sweep.dir
                for preset in ("nmf_k", "kmeans_k")}
    assert dirs["nmf_k"].endswith("-nmf_k-mnist_5k") and dirs["kmeans_k"].endswith("-kmeans_k-mnist_5k")


def test_a_study_with_a_bad_objective_stops_before_any_trial(tmp_path):
    result = run_train(tmp_path, "hparams_search=nmf_k", *QUICK, "objective=foo",
                       f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", multirun=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "objective must be one of accuracy, hungarian_accuracy" in result.stderr and "got 'foo'" in result.stderr
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "multirun" / "0").exists()


def test_a_half_made_store_without_runs_is_set_aside_and_made_anew(tmp_path):
    """A first start that hit a full disk left a partial schema: once space is back, the next run works."""
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        connection.execute("create table spans (x int)")
    result = run_train(tmp_path, *QUICK)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "had a half-made schema and no runs" in result.stdout + result.stderr
    (aside,) = tmp_path.glob("mlflow.db.half-made-*")
    with sqlite3.connect(aside) as connection:
        assert connection.execute("select name from sqlite_master").fetchall() == [("spans",)]


def test_full_mnist_offline_without_a_folder_says_where_to_get_it(tmp_path):
    """No dataset.dir, no cached copy, no network (a dead proxy stands in for it): one line, before any run."""
    dead = "http://127.0.0.1:9"
    result = run_train(tmp_path, "dataset=mnist", env={"SCIKIT_LEARN_DATA": str(tmp_path / "sk"), "HTTP_PROXY": dead,
                                                       "HTTPS_PROXY": dead, "https_proxy": dead, "http_proxy": dead},
                       fresh_store=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()  # one line: no warning of sklearn's retries, no traceback
    assert line.startswith("error: ")
    assert "dataset.dir: not set, no cached copy of MNIST, and OpenML cannot be reached" in line
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in line  # where to get the IDX files
    assert "pass dataset.dir=FOLDER" in line and not (tmp_path / "mlflow.db").exists()
