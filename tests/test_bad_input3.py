"""Bad input, round three (issue 25), through the real command line: a degenerate fit says so in the
same words and metrics for every method; reports to Optuna never repeat a step; names and stores that
cannot be used end in one line; a sweep's jobs print their link once.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import mlflow_runs, run_train, the_one_line

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

def test_dcd_on_a_complete_graph_says_how_many_components_died(tmp_path):
    """20 digits, 19 neighbours, binary edges: the graph is complete and uniform, and DCD leaves one cluster or
    two (which one depends on the CPU's BLAS kernels: one on an AMD EPYC, two on an Intel Xeon, both seed 0). Its other
    clusters' images are W-weighted means, non-zero, yet the clusters are empty: dead, and the line says
    so with the counts the run logs; a single cluster is a degenerate fit."""
    result = run_train(tmp_path, "method=dcd", "dataset=digits", "dataset.n_samples=20", "graph.n_neighbors=19",
                       "graph.weight=binary")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED"
    live, used = int(run.data.metrics["n_live_components"]), int(run.data.metrics["n_clusters_used"])
    assert live == used and used in (1, 2)
    dead = f"{10 - live} of 10 components died (all-zero factors or an empty cluster; n_live_components={live})"
    if used == 1:
        expected = dead + "; every sample is in one cluster (n_clusters_used=1)" + DEGENERATE_END
    else:
        expected = dead + ": the scores are those of the 2 live ones"
    assert _warnings(result) == [expected]


@pytest.mark.parametrize("method", ["dcd", "symnmf", "kmeans", "nmf"])
def test_every_method_on_identical_images_says_its_fit_is_degenerate(tmp_path, method):
    """16 training copies of one image: whatever split a method makes, the line says it is arbitrary,
    and its counts are the metrics the run logs."""
    folder = _same_images(tmp_path / "same")
    result = run_train(tmp_path, f"method={method}", "dataset=images", f"dataset.dir={folder}", "k=3")
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
                       multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "is already reported" not in output and "Traceback" not in output
    (trial,) = optuna.load_study(study_name="dcd-digits-k10-n300", storage=storage).get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == list(range(1, 25))


# --- names and stores that cannot be used: one line ----------------------------------------------

EXPERIMENT_RULE = "error: tracking.experiment must be a name of 1 to 500 characters, not only blanks"


def _no_runs(tmp_path) -> bool:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return not client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize("name, shown", [("''", "''"), ("' '", "' '"), ("x" * 501, "a name of 501 characters"),
                                         ("null", "None"), ("123", "123")],
                         ids=["empty", "blank", "too long", "null", "a number"])
def test_an_experiment_name_mlflow_refuses_is_one_line(tmp_path, name, shown):
    result = run_train(tmp_path, "dataset=digits", "method=kmeans", f"tracking.experiment={name}")
    hint = " (quote a number: tracking.experiment=\"'2024'\")" if name == "123" else ""
    assert the_one_line(result) == f"{EXPERIMENT_RULE}{hint}; got {shown}"
    assert _no_runs(tmp_path)


def test_an_empty_experiment_name_stops_a_study_before_its_first_trial(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = run_train(tmp_path, "hparams_search=kmeans_k", "dataset=digits", f"hydra.sweeper.storage={storage}",
                       "hydra.sweeper.n_trials=1", "tracking.experiment=", multirun=True)
    assert the_one_line(result) == f"{EXPERIMENT_RULE}; got ''"
    assert _no_runs(tmp_path) and not (tmp_path / "multirun" / "0").exists()


@pytest.fixture
def unwritable(tmp_path):
    """A folder that cannot be written, even by root: chattr +i as root (an immutable folder, as a
    read-only mount would be), chmod 555 otherwise; made writable again afterwards."""
    import os
    import subprocess

    folder = tmp_path / "locked"
    folder.mkdir()

    def lock():
        if os.geteuid() != 0:
            folder.chmod(0o555)
        elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("root cannot be denied a folder here: chattr +i is not supported on this file system")

    yield folder, lock
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def test_an_optuna_db_in_a_folder_that_cannot_be_written_is_one_line(tmp_path, unwritable):
    optuna = pytest.importorskip("optuna")
    folder, lock = unwritable
    storage = f"sqlite:///{folder}/optuna.db"
    optuna.create_study(study_name="kmeans_k-digits", storage=storage, direction="maximize")
    lock()
    result = run_train(tmp_path, "hparams_search=kmeans_k", "dataset=digits", f"hydra.sweeper.storage={storage}",
                       "hydra.sweeper.n_trials=1", multirun=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[0] == (
        f"hydra.sweeper.storage {storage} cannot be used: its folder {folder} cannot be written (SQLite writes the "
        "study and its journal there): make it writable, or point the storage at a file in a writable folder")
    assert optuna.load_study(study_name="kmeans_k-digits", storage=storage).get_trials() == []
    assert not (tmp_path / "multirun" / "0").exists() and _no_runs(tmp_path)


@pytest.fixture
def silent_server():
    """A TCP port that takes connections and never answers (a hung server, a wrong service)."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    taken, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                taken.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in taken:
        connection.close()
    server.close()


def test_a_postgresql_tracking_uri_that_refuses_is_one_line_at_once(tmp_path):
    from servers import free_port

    port = free_port()
    uri = f"postgresql+psycopg://postgres:secret@127.0.0.1:{port}/mlflow"
    result = run_train(tmp_path, "dataset=digits", "method=kmeans", f"tracking.uri={uri}",
                       timeout=60)  # MLflow alone retries for about 100 s
    assert the_one_line(result) == (f"error: tracking.uri postgresql+psycopg://postgres:***@127.0.0.1:{port}/mlflow "
                                    f"cannot be used: nothing answers at 127.0.0.1:{port} (Connection refused): start "
                                    "the database server or fix the URI")


def test_a_postgresql_tracking_uri_that_does_not_answer_is_one_line(tmp_path, silent_server):
    pytest.importorskip("psycopg")
    uri = f"postgresql+psycopg://postgres@127.0.0.1:{silent_server}/mlflow"
    result = run_train(tmp_path, "dataset=digits", "method=kmeans", f"tracking.uri={uri}",
                       timeout=60)
    assert the_one_line(result) == (f"error: tracking.uri {uri} cannot be used: 127.0.0.1:{silent_server} took the "
                                    "connection but gave no database answer within 3 s (connection timeout expired): "
                                    "is that a postgresql server, and is it up?")


# --- a sweep's or a study's jobs print their link once, at the end -----------------------------------

UI_HINT = "start `mlflow ui --backend-store-uri sqlite:///"


def test_a_sweeps_jobs_print_the_mlflow_ui_line_once_at_its_end(tmp_path):
    result = run_train(tmp_path, "dataset=digits", "dataset.n_samples=300", "method=kmeans", "k=4,5", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    assert sum("logged to MLflow run " in line for line in lines) == 2  # each job says where it logged
    (hint,) = [line for line in lines if UI_HINT in line]
    assert "sweep run 'sweep k=4,5" in hint and "; to see them, start `mlflow ui" in hint and "all runs: http" in hint
    assert not any("to see it" in line for line in lines)


def test_a_studys_trials_print_the_mlflow_ui_line_once_at_its_end(tmp_path):
    pytest.importorskip("optuna")
    result = run_train(tmp_path, "hparams_search=kmeans_k", "dataset=digits", "dataset.n_samples=300",
                       f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", "hydra.sweeper.n_trials=2",
                       multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    assert sum("logged to MLflow run 'trial " in line for line in lines) == 2
    (hint,) = [line for line in lines if UI_HINT in line]
    assert "to see the study's runs, start `mlflow ui" in hint and "then open the runs table http" in hint


def test_a_single_run_prints_the_mlflow_ui_line(tmp_path):
    result = run_train(tmp_path, "dataset=digits", "dataset.n_samples=300", "method=kmeans")
    assert result.returncode == 0, result.stderr[-3000:]
    (hint,) = [line for line in (result.stdout + result.stderr).splitlines() if UI_HINT in line]
    assert "logged to MLflow run 'kmeans k=10" in hint and "; to see it, start `mlflow ui" in hint


def test_a_postgresql_tracking_uri_without_its_database_is_one_line(tmp_path, study_servers):
    """The server answers: its own words, at once (MLflow alone retries for about 100 s)."""
    uri = study_servers.optuna_url.rsplit("/", 1)[0] + "/no_such_database"
    result = run_train(tmp_path, "dataset=digits", "method=kmeans", f"tracking.uri={uri}",
                       timeout=60)
    line = the_one_line(result)
    assert line.startswith(f"error: tracking.uri {uri} cannot be used: connection failed: ")
    assert line.endswith('database "no_such_database" does not exist')
