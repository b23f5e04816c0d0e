"""The real command line, end to end, against a temporary MLflow store."""
from pathlib import Path

import pytest
from helpers import make_mnist_folder, mlflow_runs, run_train

SMALL = ["dataset.n_samples=400", "method.max_iter=60"]


def test_single_run_logs_params_metrics_figures_and_tags(tmp_path):
    result = run_train(tmp_path, *SMALL, "k=12", figures_and_model=True)
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stderr + result.stdout and "mlflow ui" in result.stderr + result.stdout
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["k"], params["method"], params["init"], params["sparsity"], params["dataset"], params["seed"]) == (
        "12", "nmf", "nndsvda", "none", "mnist_5k", "0")
    assert params["method.solver"] == "hals" and params["dataset.n_samples"] == "400"
    metrics = run.data.metrics
    for name in ("accuracy", "hungarian_accuracy", "nmi", "ari", "silhouette", "test_accuracy", "loss", "j_clust",
                 "fit_time_s", "n_iter", "sparsity_W", "sparsity_H"):
        assert name in metrics, name
    assert 0.2 < metrics["accuracy"] <= 1 and metrics["hungarian_accuracy"] <= metrics["accuracy"]
    assert 0 <= metrics["sparsity_H"] <= 1
    tags = run.data.tags
    assert tags["dataset_fingerprint"].startswith("mnist_5k-400x784-") and "train.py" in tags["command"]
    assert len(tags["git_commit"]) in (40, 7) or tags["git_commit"] == "unknown"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    history = client.get_metric_history(run.info.run_id, "loss")
    assert len(history) == int(metrics["n_iter"]) > 1
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert losses[-1] == pytest.approx(metrics["loss"]) and losses[-1] < losses[0]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"config.yaml", "environment.txt", "figures"} <= artifacts
    assert figures == {f"figures/{n}.png"
                       for n in ("components", "confusion", "reconstructions", "cluster_samples", "loss_curve")}
    # artifacts live beside the temporary database, not in the project
    assert (tmp_path / "mlruns").is_dir()
    config_text = (tmp_path / "mlruns").glob("*/*/artifacts/config.yaml").__next__().read_text()
    assert "k: 12" in config_text


def test_multirun_nests_every_job_under_one_parent(tmp_path):
    result = run_train(tmp_path, "method=nmf,kmeans", "k=3,5", "dataset.n_samples=200", "method.max_iter=30",
                       multirun=True)
    assert result.returncode == 0, result.stderr
    runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("nmfstudy.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("nmfstudy.kind") == "run"]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {(r.data.params["method"], r.data.params["k"]) for r in children} == {
        ("nmf", "3"), ("nmf", "5"), ("kmeans", "3"), ("kmeans", "5")}
    assert all(r.info.status == "FINISHED" for r in runs)
    params = {(r.data.params["method"], r.data.params["k"]): r.data.params for r in children}
    # each run logs its own method's settings, not another's
    assert params["kmeans", "3"]["init"] == "kmeans++" and params["kmeans", "3"]["method.n_init"] == "10"
    assert "method.solver" not in params["kmeans", "3"] and params["nmf", "3"]["method.solver"] == "hals"


BAD_INPUT = [
    (["k=0"], "error: k must be an integer >= 1, got 0"),
    (["k=-1"], "error: k must be an integer >= 1, got -1"),
    (["k=5000"], "error: k must be at most the number of training samples (4000); got 5000"),
    (["k=ten"], "error: k must be an integer >= 1, got 'ten'"),
    (["method=kmeans", "init=nndsvd"],
     "error: init must be one of kmeans++, random, data, gaussian for method=kmeans; got 'nndsvd'"),
    (["dataset=mnist", "dataset.dir=/nonexistent/mnist"], "error: dataset.dir: /nonexistent/mnist is not a folder"),
    (["dataset=mnist", "dataset.dir={empty}"], "error: dataset.dir: {empty} has no train-images-idx3-ubyte[.gz]"),
    # the available methods follow, sorted (any new method's config file joins the list)
    (["method=spectral"], "Could not find 'method/spectral'\n\nAvailable options in 'method':\n\t"),
    (["tracking.uri=http://127.0.0.1:9"], "error: tracking.uri http://127.0.0.1:9 cannot be used: "),
    (["tracking.uri=ftp://example/store"], "error: tracking.uri must be sqlite:///path/to/mlflow.db, an http(s)://"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUT, ids=[" ".join(o) for o, _ in BAD_INPUT])
def test_bad_input_stops_with_one_line_and_logs_nothing(tmp_path, overrides, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    overrides = [o.format(empty=empty) for o in overrides]
    result = run_train(tmp_path, *overrides, fresh_store=True)
    assert result.returncode != 0
    assert message.format(empty=empty) in result.stderr
    assert "Traceback" not in result.stderr
    # the command stopped before its run began: the store holds no run (a bad store is not even made)
    store_error = any(o.startswith("tracking.uri=") for o in overrides)
    assert not (tmp_path / "mlflow.db").exists() if not store_error else True
    if (tmp_path / "mlflow.db").exists():
        assert mlflow_runs(tmp_path) == []


def test_full_mnist_from_an_idx_folder(tmp_path):
    folder = make_mnist_folder(tmp_path / "mnist", n_train=60, n_test=20)
    result = run_train(tmp_path, "dataset=mnist", f"dataset.dir={folder}", "method=kmeans", "k=4", "method.n_init=1")
    assert result.returncode == 0, result.stderr
    (run,) = mlflow_runs(tmp_path)
    assert run.data.tags["dataset_fingerprint"].startswith("mnist-60x784-") and run.data.params["dataset"] == "mnist"


def test_graph_methods_run_end_to_end_and_cache_their_graph(tmp_path):
    cache = tmp_path / "graphs"
    result = run_train(tmp_path, "method=gnmf,symnmf", "k=5", "dataset.n_samples=300", "method.max_iter=40",
                       f"graph.cache_dir={cache}", multirun=True)
    assert result.returncode == 0, result.stderr
    runs = {r.data.params["method"]: r for r in mlflow_runs(tmp_path) if r.data.tags["nmfstudy.kind"] == "run"}
    assert set(runs) == {"gnmf", "symnmf"}
    for run in runs.values():
        assert run.info.status == "FINISHED"
        assert 0.2 < run.data.metrics["accuracy"] <= 1 and "test_accuracy" in run.data.metrics
    graph = {key: runs["gnmf"].data.params[f"graph.{key}"] for key in ("n_neighbors", "weight", "normalize", "pca")}
    assert graph == {"n_neighbors": "15", "weight": "fuzzy", "normalize": "False", "pca": "50"}  # conf/graph/fuzzy.yaml
    assert "sparsity_H" in runs["gnmf"].data.metrics
    # symnmf's relative loss decrease is tiny from the start: a K-means-like tol would stop it at once
    assert runs["symnmf"].data.params["method.tol"] == "1e-09" and runs["symnmf"].data.metrics["n_iter"] > 10
    assert len(list(cache.glob("knn-*.npz"))) == 1, "both methods share one cached graph"


def test_artifacts_of_a_run_stay_under_2_mb_at_large_k(tmp_path):
    # the galleries grow with k: k=64 draws more components than any study in the README
    result = run_train(tmp_path, "method=nmf,kmeans", "k=64", "dataset.n_samples=700", "method.max_iter=20",
                       multirun=True, figures_and_model=True)
    assert result.returncode == 0, result.stderr
    runs = [r for r in mlflow_runs(tmp_path) if r.data.tags["nmfstudy.kind"] == "run"]
    assert len(runs) == 2
    for run in runs:
        folder = Path(run.info.artifact_uri.removeprefix("file://"))
        assert folder.is_relative_to(tmp_path)
        files = [f for f in folder.rglob("*") if f.is_file()]
        assert len(files) >= 6, files  # the figures, config.yaml, environment.txt
        assert sum(f.stat().st_size for f in files) < 2 * 2**20
