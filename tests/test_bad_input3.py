"""Bad input, round three (issue 25), through the real command line: a degenerate fit says so in the
same words and metrics for every method; reports to Optuna never repeat a step; names and stores that
cannot be used end in one line; a sweep's jobs print their link once.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import mlflow_runs, run_train

# One thread: the data are tiny, and BLAS/OpenMP threads only fight over 2 busy cores.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
DEGENERATE_END = ": the scores are those of a degenerate fit"


def _warnings(result) -> list[str]:
    return [line.split("[WARNING] - ", 1)[1] for line in (result.stdout + result.stderr).splitlines()
            if "[nmfstudy.metrics][WARNING] - " in line]


def _same_images(folder, n_per_label=10):
    """Two label folders holding the same 16x16 image n_per_label times each."""
    from PIL import Image

    image = (np.arange(16 * 16).reshape(16, 16) % 7 * 30).astype(np.uint8)
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(n_per_label):
            Image.fromarray(image).save(folder / label / f"{i}.png")
    return folder


# --- a degenerate fit says so, in the same words and metrics for every method ----------------------

def test_dcd_with_every_sample_in_one_cluster_says_its_fit_is_degenerate(tmp_path):
    """20 digits, 19 neighbours: the graph is complete, DCD puts every sample in one cluster. Its
    other clusters' images are W-weighted means, non-zero, yet the clusters are empty: dead."""
    result = run_train(tmp_path, "method=dcd", "dataset=digits", "dataset.n_samples=20", "graph.n_neighbors=19",
                       env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _warnings(result) == ["9 of 10 components died (all-zero factors or an empty cluster; n_live_components=1); "
                                 "every sample is in one cluster (n_clusters_used=1)" + DEGENERATE_END]
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["n_live_components"] == 1 and run.data.metrics["n_clusters_used"] == 1


@pytest.mark.parametrize("method", ["dcd", "symnmf", "kmeans", "nmf"])
def test_every_method_on_identical_images_says_its_fit_is_degenerate(tmp_path, method):
    """16 training copies of one image: whatever split a method makes, the line says it is arbitrary,
    and its counts are the metrics the run logs."""
    folder = _same_images(tmp_path / "same")
    result = run_train(tmp_path, f"method={method}", "dataset=images", f"dataset.dir={folder}", "k=3",
                       env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = _warnings(result)
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED"
    live, used = int(run.data.metrics["n_live_components"]), int(run.data.metrics["n_clusters_used"])
    dead = f"{3 - live} of 3 components died (all-zero factors or an empty cluster; n_live_components={live}); "
    if used == 1:
        expected = (dead if live < 3 else "") + "every sample is in one cluster (n_clusters_used=1); " \
                                                "the 16 training samples are all the same image"
    else:
        expected = (dead if live < 3 else "") + "the 16 training samples are all the same image, so their split " \
                                                f"into n_clusters_used={used} clusters is arbitrary"
    assert line == expected + DEGENERATE_END
    if method in ("symnmf", "kmeans"):  # methods without a basis: an empty cluster is a dead component
        assert live == used


# --- reports to Optuna count iterations across a fit's starts ---------------------------------------

@pytest.mark.parametrize("method", ["NMFR", "DCD", "SymNMF"])
def test_a_multi_start_fit_numbers_its_iterations_on_across_the_starts(one_thread, method):
    """n_init=2: the callback sees 1, 2, ... over every iteration of both starts (SymNMF: the screening's
    and then the winner's), and the fit is the one it is without a callback."""
    import nmfstudy.methods as methods
    from nmfstudy.data import load_dataset

    data = load_dataset("digits", n_samples=300)
    settings = dict(n_neighbors=5, max_iter=25, tol=0.0, n_init=2, random_state=0)
    if method == "SymNMF":
        settings["screen_iter"] = 10
    seen = []
    model = getattr(methods, method)(10, **settings).fit(data.X_train, callback=lambda i, loss, t: seen.append(i))
    alone = getattr(methods, method)(10, **settings).fit(data.X_train)
    assert seen == list(range(1, len(seen) + 1))
    assert len(seen) == (10 + 10 + 15 if method == "SymNMF" else 2 * 25)  # every iteration of every start
    assert np.array_equal(model.labels_, alone.labels_) and np.array_equal(model.components_, alone.components_)
    assert model.loss_ == alone.loss_ and model.n_iter_ == alone.n_iter_ == 25


def test_a_study_of_multi_start_fits_reports_every_step_once(tmp_path):
    """A DCD trial with n_init=2 reports each of its 2 x 12 iterations as its own step: Optuna warns
    of no repeated step, and the intermediate values run 1..24."""
    optuna = pytest.importorskip("optuna")

    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = run_train(tmp_path, "hparams_search=dcd", f"hydra.sweeper.storage={storage}", "dataset=digits",
                       "dataset.n_samples=300", "hydra.sweeper.n_trials=1", "hydra.sweeper.report_every=1",
                       "method.n_init=2", "method.max_iter=12", "method.tol=0", "graph.n_neighbors=5",
                       multirun=True, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "is already reported" not in output and "Traceback" not in output
    (trial,) = optuna.load_study(study_name="dcd-digits-k10-n300", storage=storage).get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == list(range(1, 25))
