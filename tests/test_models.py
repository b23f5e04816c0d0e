"""Results that outlive their run: every run's fitted model in MLflow, a study's best in the Model Registry."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
from helpers import ROOT, answers, free_port, mlflow_runs, the_one_line, wait_until
from helpers import run_train as _run_train
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from nmfstudy import NMFR, NMFClustering
from nmfstudy.data import load_dataset

# what a run keeps is under test here: every run draws its figures and logs its model
run_train = functools.partial(_run_train, figures_and_model=True)

STUDY = "nmf_k-digits-n300"


def _uri(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'mlflow.db'}"


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """The default run (NMF on mnist_5k), an NMFR run on digits, and a 4-trial nmf_k study on 300 digits."""
    tmp = tmp_path_factory.mktemp("models")
    plain = run_train(tmp, "tracking.experiment=plain")
    nmfr = run_train(tmp, "tracking.experiment=nmfr", "method=nmfr", "dataset=digits")
    study = run_train(tmp, "hparams_search=nmf_k", "dataset=digits", "dataset.n_samples=300", "method.max_iter=20",
                      "k=choice(2,9,3,10)", "hydra/sweeper/sampler=bruteforce", "hydra.sweeper.n_trials=4",
                      f"hydra.sweeper.storage=sqlite:///{tmp}/optuna.db", multirun=True)
    for result in (plain, nmfr, study):
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    mlflow.set_tracking_uri(_uri(tmp))
    return tmp


def _only_run(tmp: Path, experiment: str):
    (run,) = mlflow_runs(tmp, experiment)
    return run


def _copy_folder(tmp_path: Path, name: str) -> str:
    """Where `load_model` copies a model: without `dst_path`, MLflow makes a temporary folder it never removes."""
    folder = tmp_path / name
    folder.mkdir()
    return str(folder)


def _labels(model, X: np.ndarray) -> np.ndarray:
    """Predicted labels: the clusters of the pyfunc model through the cluster-to-label map it carries."""
    return np.asarray(model.metadata.metadata["cluster_labels"])[model.predict(X)]


@pytest.mark.parametrize("experiment, dataset", [("plain", "mnist_5k"), ("nmfr", "digits")])
def test_a_runs_model_predicts_the_held_out_images_with_the_test_accuracy_it_logged(logged, experiment, dataset,
                                                                                   tmp_path):
    run = _only_run(logged, experiment)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model", dst_path=_copy_folder(tmp_path, "pyfunc"))
    data = load_dataset(dataset, seed=0, test_size=0.2)
    accuracy = float(np.mean(_labels(model, data.X_test) == data.y_test))
    assert accuracy == run.data.metrics["test_accuracy"]
    estimator = mlflow.sklearn.load_model(f"runs:/{run.info.run_id}/model", dst_path=_copy_folder(tmp_path, "sklearn"))
    assert type(estimator) is {"plain": NMFClustering, "nmfr": NMFR}[experiment]
    assert np.array_equal(estimator.labels_, model.get_raw_model().labels_)
    assert estimator.get_params()["random_state"] == 0 and estimator.n_features_in_ == data.X_train.shape[1]


def test_a_run_records_its_data_and_its_code(logged):
    run = _only_run(logged, "plain")
    (data,) = run.inputs.dataset_inputs
    assert data.dataset.name == "mnist_5k" and data.dataset.digest == run.data.tags["dataset_fingerprint"][-36:]
    assert "mnist_5k.csv.gz" in data.dataset.source and [t.value for t in data.tags] == ["training"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    for run in mlflow_runs(logged, "nmfstudy"):  # the study's run and its trials' (made with create_run)
        assert run.data.tags["mlflow.source.git.commit"] == commit, run.data.tags.get("mlflow.runName")
        assert run.data.tags["nmfstudy.git_dirty"] in ("true", "false")


def test_runs_logging_one_data_set_at_once_all_record_it(tmp_path):
    """The first trials of a parallel sweep log the same data set together: MLflow's store looks it up, then
    inserts it, so all but one insert break its unique key; each run must still record its input."""
    before = mlflow.get_tracking_uri()  # the module's runs are read through it
    mlflow.set_tracking_uri(_uri(tmp_path))
    try:
        _log_one_data_set_from_eight_runs_at_once(tmp_path)
    finally:
        mlflow.set_tracking_uri(before)


def _log_one_data_set_from_eight_runs_at_once(tmp_path):
    import threading

    from nmfstudy.tracking.models import log_dataset

    experiment = mlflow.set_experiment("race")
    X, y = np.random.default_rng(0).random((50, 4), dtype=np.float32), np.arange(50) % 3
    barrier, errors = threading.Barrier(8), []

    def run():
        with mlflow.start_run():  # MLflow's active run is per thread
            for name in ("one", "two", "three"):  # three races: one alone is sometimes won by every thread
                barrier.wait()
                try:
                    log_dataset(X, y, name=name, digest="digest-of-the-same-data", source=str(tmp_path))
                except MlflowException as error:
                    errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    runs = MlflowClient().search_runs([experiment.experiment_id])
    assert len(runs) == 8
    assert [sorted(d.dataset.name for d in r.inputs.dataset_inputs) for r in runs] == [["one", "three", "two"]] * 8


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 10), np.float32), "Shape of input (2, 10) does not match expected shape (-1, 784)"),
    (np.zeros((2, 784), np.float64), "dtype of input float64 does not match expected dtype float32"),
    (np.zeros((2, 28, 28), np.float32), "does not match expected shape (-1, 784)"),
    (np.full((2, 784), np.nan, np.float32), "this model takes float32 images as rows of 784 non-negative pixels; "
                                            "got NaN or infinite values"),
    (-np.ones((2, 784), np.float32), "this model takes float32 images as rows of 784 non-negative pixels; "
                                     "got a negative value (-1)"),
])
def test_bad_images_sent_to_a_loaded_model_are_one_clear_error(logged, bad, message, tmp_path):
    model = mlflow.pyfunc.load_model(f"runs:/{_only_run(logged, 'plain').info.run_id}/model", dst_path=str(tmp_path))
    with pytest.raises(MlflowException) as err:
        model.predict(bad)
    assert message in str(err.value)


def test_the_studys_best_trial_is_the_registered_model_at_alias_best(logged, tmp_path):
    trials = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{logged}/optuna.db").get_trials()
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in mlflow_runs(logged, "nmfstudy")
            if "optuna.trial_number" in r.data.tags}
    assert sorted(runs) == [0, 1, 2, 3]
    # tracking.model=final: a trial logs (and registers) its model only when it beats every trial finished before it
    leads = [t.value > max([u.value for u in trials[:t.number]] or [-1]) for t in trials]
    assert [bool(runs[n].outputs and runs[n].outputs.model_outputs) for n in range(4)] == leads
    client = MlflowClient(_uri(logged))
    versions = client.search_model_versions(f"name='{STUDY}'")
    assert len(versions) == sum(leads)
    best = max(trials, key=lambda t: t.value)
    at_best = client.get_model_version_by_alias(STUDY, "best")
    assert at_best.run_id == runs[best.number].info.run_id and at_best.tags["optuna.trial_number"] == str(best.number)
    model = mlflow.pyfunc.load_model(f"models:/{STUDY}@best", dst_path=str(tmp_path))
    data = load_dataset("digits", n_samples=300, seed=0, test_size=0.2)
    assert float(np.mean(_labels(model, data.X_test) == data.y_test)) == runs[best.number].data.metrics[
        "test_accuracy"]


def test_tracking_model_none_logs_no_model_and_a_bad_value_is_one_line(tmp_path):
    result = run_train(tmp_path, "dataset=digits", "dataset.n_samples=300", "tracking.model=none")
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = mlflow_runs(tmp_path)
    assert not run.outputs.model_outputs and MlflowClient(_uri(tmp_path)).list_artifacts(run.info.run_id, "model") == []
    bad = run_train(tmp_path, "dataset=digits", "tracking.model=foo")
    assert the_one_line(bad) == "error: tracking.model must be one of all, final, none; got 'foo'"
    assert len(mlflow_runs(tmp_path)) == 1


def test_the_estimator_is_built_once_per_run(tmp_path):
    """A subclass of the run's estimator counts its constructions; the run names it with method._target_."""
    (tmp_path / "counting.py").write_text(
        "import os\nfrom dataclasses import dataclass\nfrom nmfstudy import NMFClustering\n\n\n"
        "@dataclass(repr=False, eq=False)\nclass CountingNMF(NMFClustering):\n"
        "    def __post_init__(self):\n"
        "        with open(os.environ['COUNT_FILE'], 'a') as f:\n            f.write('built\\n')\n")
    count = tmp_path / "count.txt"
    result = run_train(tmp_path, "dataset=digits", "dataset.n_samples=300", "method._target_=counting.CountingNMF",
                       env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                            "COUNT_FILE": str(count)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert count.read_text() == "built\n"
    (run,) = mlflow_runs(tmp_path)
    assert run.data.params["method._target_"] == "counting.CountingNMF"


def _post(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_mlflow_models_serve_answers_with_the_same_clusters(logged, tmp_path):
    port = free_port()
    # TMPDIR: the server copies the model into a temporary folder that it never removes
    env = {**os.environ, "MLFLOW_TRACKING_URI": _uri(logged), "TMPDIR": str(tmp_path)}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{STUDY}@best",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/ping"), "mlflow models serve answering /ping", server,
                   timeout=120)
        data = load_dataset("digits", n_samples=300, seed=0, test_size=0.2)
        status, answer = _post(port, {"inputs": data.X_test[:20].tolist()})
        model = mlflow.pyfunc.load_model(f"models:/{STUDY}@best", dst_path=_copy_folder(tmp_path, "model"))
        expected = model.predict(data.X_test[:20])
        assert status == 200 and answer["predictions"] == expected.tolist()
        status, answer = _post(port, {"inputs": (-data.X_test[:2]).tolist()})
        assert status == 400 and "stack_trace" not in answer
        assert answer["message"].endswith("this model takes float32 images as rows of 64 non-negative pixels; "
                                          "got a negative value (-1)")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    assert server.poll() is not None


def test_the_report_links_the_studys_registered_model(logged):
    out = logged / "report"
    result = subprocess.run([sys.executable, "src/report.py", f"tracking.uri={_uri(logged)}",
                             "tracking.experiment=nmfstudy", "report.log_run=false", f"report.out={out}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    version = MlflowClient(_uri(logged)).get_model_version_by_alias(STUDY, "best").version
    html = (out / "report.html").read_text()
    assert f"Best model: <code>models:/{STUDY}@best</code> (version " in html
    assert f'href="http://127.0.0.1:5000/#/models/{STUDY}/versions/{version}"' in html
