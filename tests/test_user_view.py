"""What a user sees: the links the project prints open the study's runs table in the real `mlflow ui`,
and sweeps, studies and trials say what they are.

MLflow 3 opens an experiment on its GenAI overview ("Traces 0") unless the experiment says it is
model training; the UI tests start the real UI on a small sweep's store and render its pages in
headless Chromium.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys

import pytest
from helpers import mlflow_runs
from helpers import run_train as _run_train
from servers import HOST, free_port, process_group

from nmfstudy.hydra_callbacks import run_label, sweep_label
from nmfstudy.study_names import TrialHook, short_overrides, short_value

# what a run keeps is under test here: every run draws its figures and logs its model
run_train = functools.partial(_run_train, figures_and_model=True)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
METRIC_COLUMNS = ("accuracy", "hungarian_accuracy", "nmi", "test_accuracy", "fit_time_s")

needs_chromium = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                    reason="needs Debian's chromium (apt-get install -y chromium) to render the UI")


def render(url: str, profile, screenshot=None, budget_ms: int = 20000, width: int = 3200) -> str:
    """The page's DOM once its JavaScript app has rendered (`budget_ms` of virtual time).

    The runs table draws only the columns in view: a wide window shows them all.
    """
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--window-size={width},900", f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
    if screenshot is not None:
        subprocess.run([*args, f"--screenshot={screenshot}", url], capture_output=True, timeout=180)
    return subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout


def text_of(dom: str) -> str:
    """The page's visible text, roughly: no styles, scripts or tags."""
    dom = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A sweep of 2 runs on digits, and `mlflow ui` started on its store (as a user would)."""
    tmp = tmp_path_factory.mktemp("ui")
    result = run_train(tmp, "dataset=digits", "method=nmf,kmeans", "k=6", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    with open(tmp / "ui.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
             "--host", HOST, "--port", str(port), "--workers", "1"],
            cwd=tmp, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        import urllib.request

        from helpers import wait_until

        def healthy():
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(healthy, "mlflow ui answers /health", server, timeout=120)
        yield {"tmp": tmp, "log": result.stdout + result.stderr, "base": f"http://{HOST}:{port}",
               "runs": mlflow_runs(tmp)}
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        assert not process_group(server.pid) or os.killpg(server.pid, 9) is None


def printed_links(log: str) -> list[str]:
    return re.findall(r"http://127\.0\.0\.1:5000(/#/experiments/\S+?)(?=[\s)]|$)", log)


@pytest.mark.slow
@needs_chromium
def test_the_printed_link_opens_the_runs_table_with_the_metrics(ui, tmp_path):
    tables = [link for link in printed_links(ui["log"]) if "/runs?" in link]
    assert tables, ui["log"][-3000:]
    dom = render(ui["base"] + tables[0], tmp_path / "profile")
    text = text_of(dom)
    jobs = [r for r in ui["runs"] if r.data.tags.get("nmfstudy.kind") == "run"]
    assert len(jobs) == 2
    for run in ui["runs"]:  # the jobs and the sweep's parent run
        assert run.info.run_name in text, (run.info.run_name, text[:3000])
    for column in METRIC_COLUMNS:
        assert re.search(rf"\b{column}\b", text), (column, text[:3000])
    assert "Runs" in text and not re.search(r"Traces\s*0|Overview", text), text[:3000]


RUNS_TABLE = "location.hash.includes('/runs?')"


@pytest.mark.slow
@needs_chromium
def test_from_the_home_page_the_experiment_opens_its_runs_table_once_model_training_is_chosen(ui, tmp_path):
    """What the README says happens at `mlflow ui`'s home page, clicked as a user clicks, in a fresh browser.

    MLflow 3.17's UI lays an experiment out by the browser's GenAI / Model training switch (stored in
    the browser, GenAI at first), not by the experiment's tags: a first click on the experiment opens
    the GenAI overview, whatever `mlflow.experimentKind` says. Model training, chosen once on the home
    page, opens the runs table, then and on later visits.
    """
    from browser import Chromium

    (sweep,) = [r.info.run_name for r in ui["runs"] if r.data.tags.get("nmfstudy.kind") == "sweep"]
    with Chromium(CHROMIUM, tmp_path / "fresh") as browser:
        browser.open(ui["base"] + "/")
        browser.click("nmfstudy", "a")
        browser.wait_for("location.hash.includes('/overview')", "MLflow's GenAI overview (the README says so)")
        assert "workflowType=genai" in browser.url()
    profile = tmp_path / "user"
    with Chromium(CHROMIUM, profile) as browser:
        browser.open(ui["base"] + "/")
        browser.click("Model training")  # the switch at the top left
        browser.click("nmfstudy", "a")
        browser.wait_for(RUNS_TABLE, "the runs table after choosing Model training")
        browser.wait_for(f"document.body.innerText.includes({sweep!r})", "the sweep's run in the table")
        text = browser.text()
        assert "Run Name" in text and "Detect Issues" not in text and "Traces | 0" not in text, text[:3000]
    with Chromium(CHROMIUM, profile) as browser:  # the same browser later: the choice is remembered
        browser.open(ui["base"] + "/")
        browser.click("nmfstudy", "a")
        browser.wait_for(RUNS_TABLE, "the runs table on a later visit")
        browser.wait_for(f"document.body.innerText.includes({sweep!r})", "the sweep's run in the table")


@pytest.mark.slow
@needs_chromium
def test_a_run_link_opens_its_page_and_artifacts(ui, tmp_path):
    jobs = {r.info.run_id for r in ui["runs"] if r.data.tags.get("nmfstudy.kind") == "run"}
    # the sweep's end line: its own run's link, then its best job's
    runs = [link for link in printed_links(ui["log"])
            if (found := re.search(r"/runs/([0-9a-f]{32})\?", link)) and found.group(1) in jobs]
    assert runs, ui["log"][-3000:]
    text = text_of(render(ui["base"] + runs[0], tmp_path / "profile"))
    assert "Model metrics" in text and "hungarian_accuracy" in text, text[:3000]
    assert "Evaluation runs" not in text and "Evaluations" not in text, text[:3000]  # not MLflow's GenAI layout
    text = text_of(render(ui["base"] + runs[0].replace("?", "/artifacts?"), tmp_path / "profile"))
    assert "config.yaml" in text and "figures" in text and "Evaluations" not in text, text[:3000]


@pytest.mark.slow
def test_a_sweep_ends_with_its_runs_name_and_link_and_the_best_runs(ui):
    runs = {r.info.run_id: r for r in ui["runs"]}
    (parent,) = [r for r in runs.values() if r.data.tags.get("nmfstudy.kind") == "sweep"]
    assert parent.info.run_name == "sweep method=nmf,kmeans k=6 · digits"
    best = max((r for r in runs.values() if r.data.tags.get("nmfstudy.kind") == "run"),
               key=lambda r: r.data.metrics["accuracy"])
    exp = parent.info.experiment_id
    line = next(line for line in ui["log"].splitlines() if "sweep run " in line)
    assert (f"sweep run {parent.info.run_name!r} (http://127.0.0.1:5000/#/experiments/{exp}/runs/"
            f"{parent.info.run_id}?") in line
    assert f"run {best.info.run_name!r} (http://127.0.0.1:5000/#/experiments/{exp}/runs/{best.info.run_id}?" in line


# --- names ----------------------------------------------------------------------------------

def test_names_show_numbers_to_3_significant_digits():
    assert [short_value(v) for v in ("0.000123456", "10", "1e-05", "0.5", "nndsvda", "12345.678")] == [
        "0.000123", "10", "1e-05", "0.5", "nndsvda", "1.23e+04"]
    assert short_overrides(["method.alpha=0.3333333", "init=random", "+x"]) == "method.alpha=0.333 init=random +x"


def test_a_trials_run_name_says_it_is_a_trial_with_rounded_values():
    cfg = {"method": {"name": "nmf"}, "k": 20}
    hook = TrialHook(study_name="s", number=3, storage=None)
    name = run_label(cfg, ["k=20", "method=nmf", "sparsity.alpha_W=0.000123456789", "trial={study_name:s}",
                           "tracking.uri=sqlite:///x.db", "dataset=digits"], hook)
    assert name == "trial 3 nmf k=20 [sparsity.alpha_W=0.000123 dataset=digits]"
    assert run_label(cfg, ["k=20"], None) == "nmf k=20"


def test_a_sweeps_name_says_what_it_sweeps_and_on_what_data():
    overrides = ["method=nmf,kmeans", "k=10,20,50", "tracking.uri=sqlite:///x.db", "dataset=mnist_5k",
                 "method.tol=0.000123456"]
    assert sweep_label(overrides, "mnist_5k") == "sweep method=nmf,kmeans k=10,20,50 method.tol=0.000123 · mnist_5k"
    assert sweep_label(["k=range(5,20,5)"], "digits", 1000) == "sweep k=range(5,20,5) · digits n_samples=1000"


@pytest.mark.slow
def test_an_optuna_studys_trials_show_rounded_values_and_it_ends_with_its_links(tmp_path):
    result = run_train(tmp_path, "hparams_search=nmf_k", "dataset=digits", "dataset.n_samples=1000",
                       "hydra.sweeper.n_trials=2", "k=5",
                       "method.tol=interval(0.0001,0.001)", "method.max_iter=10",
                       f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", multirun=True)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    runs = mlflow_runs(tmp_path)
    (study,) = [r for r in runs if r.data.tags.get("nmfstudy.kind") == "study"]
    # the default study name says the data size (nmf_k-digits without dataset.n_samples)
    assert study.data.tags["optuna.study_name"] == "nmf_k-digits-n1000"
    trials = [r for r in runs if "optuna.trial_number" in r.data.tags]
    assert len(trials) == 2
    for run in trials:
        tol = run.data.params["method.tol"]
        assert len(tol.replace("0.", "").lstrip("0")) > 3  # the param keeps every digit
        assert run.info.run_name.startswith(f"trial {run.data.tags['optuna.trial_number']} nmf k=5 [")
        assert f"method.tol={float(tol):.3g}" in run.info.run_name.split()
    exp = study.info.experiment_id
    (line,) = [line for line in log.splitlines() if "MLflow run 'study " in line]
    assert f"(http://127.0.0.1:5000/#/experiments/{exp}/runs/{study.info.run_id}?" in line
    (best,) = [r for r in trials if r.data.tags["optuna.trial_number"] == study.data.tags["best.trial_number"]]
    assert f"run {best.info.run_name!r} (http://127.0.0.1:5000/#/experiments/{exp}/runs/{best.info.run_id}?" in line


# --- the report groups by data --------------------------------------------------------------

def _record(run_id, n_samples, accuracy, k=10, method="nmf", parent=None):
    from nmfstudy.report import RunRecord

    params = {"method": method, "sparsity": "none", "k": str(k), "dataset": "digits",
              "dataset.n_samples": str(n_samples) if n_samples else "null"}
    tags = {"nmfstudy.kind": "run", "dataset_fingerprint": f"fp{n_samples or 'all'}",
            **({"mlflow.parentRunId": parent, "optuna.trial_number": run_id[-1]} if parent else {})}
    metrics = {"accuracy": accuracy, "hungarian_accuracy": accuracy, "loss": 1.0, "fit_time_s": 0.1}
    return RunRecord(run_id, f"{method} k={k}", "FINISHED", params, metrics, tags, 0)


def test_the_report_has_one_section_per_data_setting_and_never_ranks_across_them(tmp_path):
    from nmfstudy import report

    study = report.RunRecord("study1", "study nmf_k-digits-n1000", "FINISHED",
                             {"optuna.direction": "maximize", "optuna.objective": "accuracy"},
                             {}, {"nmfstudy.kind": "study", "optuna.study_name": "nmf_k-digits-n1000"}, 0)
    small = [_record("trial0", 1000, 0.9, parent="study1"), _record("trial1", 1000, 0.8, parent="study1")]
    full = [_record("fullnmf", None, 0.5), _record("fullkm", None, 0.6, method="kmeans")]
    exp = report.Experiment("3", "mixed", "sqlite:///x.db", full + small, [study])
    html = report.render(exp, lambda *_: None, tmp_path, report.Settings()).html.read_text()
    sections = re.findall(r'<section class="data" id="data-\d">(.*?)</section>', html, re.S)
    assert len(sections) == 2
    header = html[:html.index("<section")]
    assert "digits, all samples (data fpall)" in header and "digits, n_samples=1000 (data fp1000)" in header
    by_label = {re.search(r"<h2>Data: (.*?)</h2>", s).group(1): s for s in sections}
    full_part = by_label["digits, all samples (data fpall)"]
    small_part = by_label["digits, n_samples=1000 (data fp1000)"]
    # each best table holds only its own setting's runs: trial0 (0.9) never outranks fullnmf (0.5)
    full_best = re.search(r'<table id="best(?:-\d)?">.*?</table>', full_part, re.S).group(0)
    small_best = re.search(r'<table id="best(?:-\d)?">.*?</table>', small_part, re.S).group(0)
    assert "fullnmf" in full_best and "fullkm" in full_best and "trial0" not in full_best
    assert "trial0" in small_best and "fullnmf" not in small_best and "trial1" not in small_best
    assert "nmf_k-digits-n1000" in small_part and "Optuna studies" not in full_part
    assert "<table id=\"best\">" in html and "<table id=\"best-2\">" in html  # ids stay unique
    assert (tmp_path / "data1" / "accuracy_vs_k.png").exists() and (tmp_path / "data2" / "accuracy_vs_k.png").exists()


def test_a_report_on_one_data_setting_names_it_and_keeps_its_layout(tmp_path):
    from nmfstudy import report

    exp = report.Experiment("3", "one", "sqlite:///x.db", [_record("a", None, 0.5), _record("b", None, 0.6)], [])
    html = report.render(exp, lambda *_: None, tmp_path, report.Settings()).html.read_text()
    assert "<section" not in html and "<h2>Best run per method and k</h2>" in html
    assert "<li>digits, all samples (data fpall)</li>" in html
    assert (tmp_path / "accuracy_vs_k.png").exists()
