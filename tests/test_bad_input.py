"""Bad input, round two (issue 13), through the real command line: every mistake ends in one line
before any work, with a non-zero exit and no traceback; a damaged cache is rebuilt; a degenerate fit,
alone or as trials of an Optuna study, is scored, not raised.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    ROOT,
    corrupt_deflate,
    make_image_folder,
    make_mnist_folder,
    mlflow_runs,
    run_train,
    the_one_line,
    write_idx,
    write_typed_idx,
)

# Inside the nmf_sparse preset's own search space: on mnist_5k every component dies.
DEGENERATE = ["sparsity=l1", "sparsity.alpha_W=0.1", "sparsity.alpha_H=0.01", "sparsity.l1_ratio=1"]


# --- settings checked at the door, before any data is fitted or any MLflow run made ---------------

AT_THE_DOOR = [
    (["objective=foo"], "error: objective must be one of accuracy, hungarian_accuracy, nmi, ari, test_accuracy, loss, "
                        "j_clust, fit_time_s, n_iter, n_clusters_used, n_live_components, silhouette, sparsity_W, "
                        "sparsity_H (the metrics a run of method=nmf logs), or a list of them; got 'foo'"),
    (["dataset=digits", "k=65"], "error: k must be at most the number of pixels (64) with init=nndsvda, an SVD-based "
                                 "start; got 65 (init=random allows any k)"),
    (["dataset=digits", "method=gnmf", "graph.pca=0"], "error: graph.pca must be an integer >= 1, got 0"),
    (["seed=4294967296"], "error: seed must be an integer in [0, 4294967295], got 4294967296"),
    (["dataset.n_samples=5"], "error: dataset.n_samples must be at least the number of labels (10), so that the "
                              "subsample keeps every one; got 5"),
]


@pytest.mark.parametrize("overrides, line", AT_THE_DOOR, ids=[" ".join(o) for o, _ in AT_THE_DOOR])
def test_settings_are_refused_before_any_fit_or_run(tmp_path, overrides, line):
    result = run_train(tmp_path, *overrides, fresh_store=True)
    assert the_one_line(result) == line
    assert not (tmp_path / "mlflow.db").exists()  # no store opened, no run made


# --- damaged or unusual IDX files ------------------------------------------------------------------

def _deflate(folder):
    corrupt_deflate(folder / "train-images-idx3-ubyte.gz")
    return "train-images-idx3-ubyte.gz", "damaged or truncated gzip data (Error -3 while decompressing data"


def _sizes(folder):
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((60, 20, 20)))
    return "t10k-images-idx3-ubyte.gz", f"holds 28x28 images but {folder}/train-images-idx3-ubyte.gz holds 20x20"


def _labels(folder):
    write_typed_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(60) * 300, 0x0C, ">i4")
    return "train-labels-idx1-ubyte.gz", "holds 32-bit integer values (IDX type 0x0C)"


@pytest.mark.parametrize("damage", [_deflate, _sizes, _labels],
                         ids=["corrupt deflate", "20x20 vs 28x28", "int32 labels"])
def test_damaged_idx_files_are_one_line_naming_the_file(tmp_path, damage):
    folder = make_mnist_folder(tmp_path / "mnist", n_train=60, n_test=20)
    name, what = damage(folder)
    result = run_train(tmp_path, "dataset=mnist", f"dataset.dir={folder}", "k=4",
                       fresh_store=True)
    line = the_one_line(result)
    assert line.startswith("error: dataset.dir: ") and str(folder / name) in line and what in line
    assert not (tmp_path / "mlflow.db").exists()


# --- a folder of images --------------------------------------------------------------------------

IMAGES_NEEDED = ("error: dataset.dir: not set: dataset=images needs dataset.dir=FOLDER, a folder of PNG/JPEG images "
                 "(one sub-folder per label, or all in the folder itself when unlabelled)")


def _unreadable(folder):
    (folder / "top_left" / "broken.png").write_bytes(b"not a png")
    return [], f"error: dataset.dir: cannot read image {folder}/top_left/broken.png: not a PNG or JPEG image that " \
               "Pillow can read"


def _cut_short(folder):
    path = folder / "bottom_right" / "1_003.png"
    path.write_bytes(path.read_bytes()[:200])
    return [], f"error: dataset.dir: cannot read image {path}: image file is truncated"


def _bad_size(folder):
    return ["dataset.image_size=[20,0]"], ("error: dataset.image_size must be null (the first image's size), an "
                                           "integer N >= 1 (N x N pixels) or [height, width] in pixels, each >= 1 "
                                           "(e.g. [20, 24]); got [20, 0]")


@pytest.mark.parametrize("damage", [None, _unreadable, _cut_short, _bad_size],
                         ids=["no dataset.dir", "not an image", "cut short", "image_size [20,0]"])
def test_bad_images_are_one_line_naming_the_key(tmp_path, damage):
    folder = make_image_folder(tmp_path / "images", shape=(20, 24), n_per_label=4)
    overrides, line = damage(folder) if damage else ([], IMAGES_NEEDED)
    given = [f"dataset.dir={folder}"] if damage else []
    result = run_train(tmp_path, "dataset=images", *given, *overrides, f"dataset.cache_dir={tmp_path / 'cache'}",
                       "k=2", fresh_store=True)
    assert the_one_line(result) == line
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "cache").exists()


def test_a_study_of_a_label_metric_on_unlabelled_images_stops_before_any_trial(tmp_path):
    folder = make_image_folder(tmp_path / "loose", shape=(20, 24), labels=None, n_per_label=4)
    result = run_train(tmp_path, "hparams_search=nmf_k", "dataset=images", f"dataset.dir={folder}",
                       f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", multirun=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert (
        "objective must be one of loss, j_clust, fit_time_s, n_iter, n_clusters_used, n_live_components, silhouette, "
        "sparsity_W, sparsity_H (the metrics a run of method=nmf logs on images without labels: "
        f"dataset.dir={folder} has no sub-folder per label), or a list of them; got 'accuracy'"
    ) in result.stderr.splitlines()
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "multirun" / "0").exists()


# --- a degenerate fit is scored ------------------------------------------------------------------

def test_a_fit_whose_components_all_die_is_scored_and_logged(tmp_path):
    result = run_train(tmp_path, *DEGENERATE, "dataset.n_samples=300", "method.max_iter=30",
                       figures_and_model=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    output = result.stdout + result.stderr
    assert "[WARNING] - 10 of 10 components died (all-zero factors or an empty cluster; n_live_components=0); " \
           "every sample is in one cluster (n_clusters_used=1): the scores are those of a degenerate fit" in output
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["n_live_components"] == 0 and metrics["n_clusters_used"] == 1
    assert metrics["accuracy"] == pytest.approx(0.1) and metrics["test_accuracy"] <= 0.15
    from mlflow.tracking import MlflowClient

    figures = {a.path for a in MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").list_artifacts(run.info.run_id,
                                                                                               "figures")}
    assert {f"figures/{n}.png" for n in ("components", "confusion", "reconstructions", "cluster_samples")} <= figures


def test_a_study_over_the_degenerate_region_completes_every_trial(tmp_path):
    """nmf_sparse at k=30 on digits over alpha_W x l1_ratio (brute force, 4 trials): at alpha_W=0.1, l1_ratio=1
    every component dies (the crash of issue 13); at the others some do."""
    optuna = pytest.importorskip("optuna")
    from optuna.trial import TrialState

    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = run_train(tmp_path, "hparams_search=nmf_sparse", f"hydra.sweeper.storage={storage}", "dataset=digits",
                       "method.max_iter=20", "k=30", "sparsity.alpha_H=0.01", "sparsity.alpha_W=choice(0.01,0.1)",
                       "sparsity.l1_ratio=choice(0.0,1.0)", "hydra/sweeper/sampler=bruteforce",
                       "hydra.sweeper.n_trials=4", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr
    trials = optuna.load_study(study_name="nmf_sparse-digits", storage=storage).get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    value = {(t.params["sparsity.alpha_W"], t.params["sparsity.l1_ratio"]): t.value for t in trials}
    assert value.pop((0.1, 1.0)) == pytest.approx(0.1, abs=0.01)  # one cluster: the share of its majority digit
    assert min(value.values()) > 0.3
    runs = {(r.data.params["sparsity.alpha_W"], r.data.params["sparsity.l1_ratio"]): r
            for r in mlflow_runs(tmp_path) if r.data.tags["nmfstudy.kind"] == "run"}
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs.values())
    assert runs[("0.1", "1.0")].data.metrics["n_live_components"] == 0
    assert runs[("0.01", "0.0")].data.metrics["n_live_components"] > 20
    assert (result.stdout + result.stderr).count("[WARNING] - 30 of 30 components died") == 1


# --- caches and the report -----------------------------------------------------------------------

def test_a_damaged_graph_cache_is_rebuilt_and_the_run_goes_on(tmp_path):
    from nmfstudy.data import load_dataset
    from nmfstudy.nmf.graph import _load_graph, cached_knn_graph, data_key

    cache = tmp_path / "graphs"
    data = load_dataset("digits", n_samples=400, test_size=0.2, seed=0)  # what train.py loads
    cached_knn_graph(data.X_train, data_key(data.X_train), cache, n_neighbors=15, weight="fuzzy", pca=50, seed=0)
    (path,) = cache.glob("*.npz")
    path.write_bytes(path.read_bytes()[:100])  # cut short, as by a full disk
    result = run_train(tmp_path, "dataset=digits", "dataset.n_samples=400", "method=gnmf", "k=5",
                       "method.max_iter=20", f"graph.cache_dir={cache}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = [text for text in (result.stdout + result.stderr).splitlines() if "graph cache" in text]
    assert f"[WARNING] - graph cache {path} is damaged (" in line and line.endswith("; rebuilding it")
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.metrics["accuracy"] > 0.3
    assert _load_graph(path).shape == (400, 400)  # replaced by a sound file


def test_report_rank_by_an_unknown_metric_is_one_line_and_writes_nothing(tmp_path):
    from mlflow.tracking import MlflowClient

    from nmfstudy import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = tracking.experiment_id(client, tracking.resolve_store(uri, ROOT), "nmfstudy")
    run = client.create_run(exp_id, run_name="nmf k=10", tags={"nmfstudy.kind": "run"})
    for key, value in {"method": "nmf", "k": "10", "sparsity": "none"}.items():
        client.log_param(run.info.run_id, key, value)
    for key, value in {"accuracy": 0.5, "nmi": 0.4, "n_live_components": 10}.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    out = tmp_path / "report"
    result = run_train(tmp_path, "report.rank_by=foo", f"report.out={out}", script="src/report.py")
    assert the_one_line(result) == ("error: report.rank_by must be one of accuracy, n_live_components, nmi "
                                    "(the metrics of the completed runs of experiment 'nmfstudy'); got 'foo'")
    assert not out.exists()
    assert [r.info.run_id for r in mlflow_runs(tmp_path)] == [run.info.run_id]  # no report run logged
