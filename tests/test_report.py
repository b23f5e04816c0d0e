"""src/report.py: an MLflow experiment -> report.html, figures and a report run.

The end-to-end tests share one small real experiment, made once by train.py in
subprocesses (a sweep of NMF and K-means, plus a sparse NMF run) and completed
through MLflow's API with what train.py cannot make cheaply: a failed run, an
unfinished one, and an Optuna study whose sweeper logged no figures.
"""
from __future__ import annotations

import base64
import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import preloaded
import pytest
from helpers import run_env

from nmfstudy import report, tracking
from nmfstudy.report import RunRecord, records

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "report-test"
TINY = ["dataset=digits", "dataset.n_samples=300", "method.max_iter=30", f"tracking.experiment={EXPERIMENT}"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The fixture's runs go at once: on 2 cores, one's start overlaps another's fits.
_RUNS = ThreadPoolExecutor(max_workers=3)


def python(script: str, *args: str) -> Future:
    """`python src/SCRIPT args...`, started now in the preloaded interpreter (tests/preloaded.py), as run_train's."""
    return _RUNS.submit(preloaded.run_script, [sys.executable, f"src/{script}", *args], ROOT, run_env(), 300)


def finish(*runs: Future) -> list[str]:
    """Every run's output (stdout, then stderr), once all have ended; the first to fail fails the test."""
    results = [run.result() for run in runs]
    for result in results:
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return [result.stdout + result.stderr for result in results]


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    # The store and experiment exist before three processes open them: MlflowClient() migrates a new
    # SQLite store, and tracking.open_store makes its client before it takes its lock.
    client = MlflowClient(uri)
    exp_id = tracking.experiment_id(client, tracking.resolve_store(uri, ROOT), EXPERIMENT)
    sweep = python("train.py", "-m", "method=nmf,kmeans", "k=4,8", *TINY, f"tracking.uri={uri}",
                   f"hydra.sweep.dir={tmp / 'multi'}")
    sparse = python("train.py", "sparsity=hoyer", "k=8", *TINY, f"tracking.uri={uri}", f"hydra.run.dir={tmp / 'one'}")
    unknown = python("report.py", f"tracking.uri={uri}", "tracking.experiment=nope", "report.log_run=false")
    finish(sweep, sparse)

    job = {"nmfstudy.kind": "run"}
    failed = client.create_run(exp_id, run_name="nmf k=4 failed", tags={**job, "error": "ValueError: boom"})
    client.log_param(failed.info.run_id, "method", "nmf")
    client.log_param(failed.info.run_id, "k", "4")
    client.set_terminated(failed.info.run_id, "FAILED")
    running = client.create_run(exp_id, run_name="kmeans k=8 running", tags=job)  # left RUNNING
    for key, value in {"method": "kmeans", "k": "8", "sparsity": "none"}.items():
        client.log_param(running.info.run_id, key, value)
    client.log_metric(running.info.run_id, "accuracy", 0.99)  # unfinished: must not become the best

    parent = client.create_run(exp_id, run_name="study demo", tags={"nmfstudy.kind": "study",
                                                                    "optuna.study_name": "demo"})
    for key, value in {"best.k": "6", "best.trial_number": "1", "optuna.space.k": "range(5, 8)",
                       "optuna.objective": "accuracy", "optuna.direction": "maximize"}.items():
        client.log_param(parent.info.run_id, key, value)
    client.log_metric(parent.info.run_id, "best_accuracy", 0.61)
    trials = []
    for number, (accuracy, state) in enumerate([(0.55, "COMPLETE"), (0.61, "COMPLETE"), (0.40, "PRUNED")]):
        trial = client.create_run(exp_id, run_name=f"trial {number}", tags={
            **job, "mlflow.parentRunId": parent.info.run_id, "optuna.study_name": "demo",
            "optuna.trial_number": str(number), "optuna.state": state})
        for key, value in {"method": "minibatch_kmeans", "k": str(5 + number), "sparsity": "none"}.items():
            client.log_param(trial.info.run_id, key, value)
        client.log_metric(trial.info.run_id, "accuracy", accuracy)
        client.set_terminated(trial.info.run_id)
        trials.append(trial.info.run_id)
    client.set_terminated(parent.info.run_id)

    out = tmp / "out"
    (log,) = finish(python("report.py", f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}",
                        f"report.out={out}", "report.ui_url=http://mlflow.test:5000"))
    runs = client.search_runs([exp_id], "tags.`nmfstudy.kind` = 'run'")
    return {"uri": uri, "exp_id": exp_id, "client": client, "out": out, "log": log,
            "html": (out / "report.html").read_text(), "runs": runs, "failed": failed.info.run_id,
            "running": running.info.run_id, "study": parent.info.run_id, "trials": trials,
            "unknown": (unknown.result().returncode, unknown.result().stdout + unknown.result().stderr),
            "sweep": client.search_runs([exp_id], "tags.`nmfstudy.kind` = 'sweep'")[0].info.run_id}


def best_table(html: str) -> str:
    return re.search(r'<table id="best">.*?</table>', html, re.S).group(0)


# --- end to end ---------------------------------------------------------------------

def test_tables_hold_the_runs_and_link_them_to_mlflow(study):
    html, exp_id = study["html"], study["exp_id"]
    assert len(study["runs"]) == 10  # 4 sweep jobs, 1 sparse run, failed, running, 3 trials
    for run in study["runs"]:
        assert f"http://mlflow.test:5000/#/experiments/{exp_id}/runs/{run.info.run_id}" in html
    best = best_table(html)
    for label, k in [("nmf", 4), ("nmf", 8), ("kmeans", 4), ("kmeans", 8), ("nmf+hoyer", 8)]:
        assert re.search(rf"<td class=l>{re.escape(label)}</td><td>{k}</td>", best), (label, k)
    assert study["running"] not in best and study["failed"] not in best
    assert study["trials"][2] not in best  # pruned
    assert study["sweep"] not in html  # parents are not runs of the study
    assert "ValueError: boom" in html and "RUNNING" in html


def test_images_are_embedded_and_saved_beside_the_page(study):
    out, html = study["out"], study["html"]
    sources = re.findall(r'<img src="([^"]*)"', html)
    assert len(sources) >= 9  # 4 study figures, 5 components (one per best NMF/K-means run)
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ["accuracy_vs_k.png", "elbow.png", "fit_time.png", "sparsity.png", "components/nmf_k8.png",
                 "components/kmeans_k8.png", "components/nmf+hoyer_k8.png", "optuna/study0_history.png"]:
        assert (out / name).stat().st_size > 1000, name
    assert "logged no figures/components.png" in html  # the fake trials have none


def test_optuna_study_shows_its_best_trial(study):
    html = study["html"]
    section = html[html.index("<h2>Optuna studies</h2>"):]
    assert "demo" in section and study["study"] in section
    assert re.search(rf"Best trial: #1 <a [^>]*{study['trials'][1]}", section)
    assert "<code>k</code></td><td class=l>range(5, 8)</td><td class=l>6</td>" in section  # as the sweeper logs it


def test_report_is_logged_as_a_run_of_the_experiment(study):
    client = study["client"]
    logged = client.search_runs([study["exp_id"]], "tags.`nmfstudy.kind` = 'report'")
    assert len(logged) == 1 and logged[0].info.status == "FINISHED"
    paths = {f.path for f in client.list_artifacts(logged[0].info.run_id)}
    assert {"report.html", "accuracy_vs_k.png", "components"} <= paths
    assert f"logged as run {logged[0].info.run_id}" in study["log"]


def test_unknown_experiment_is_one_line_and_fails(study):
    returncode, out = study["unknown"]
    assert returncode == 2
    (line,) = out.strip().splitlines()
    assert line.startswith("error: tracking.experiment='nope': no such experiment") and EXPERIMENT in line


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="needs Debian's chromium (apt-get install -y chromium) to render the page")
def test_page_renders_in_headless_chromium(study, tmp_path):
    assert CHROMIUM, "CI must install chromium: apt-get install -y chromium"
    # A probe, added to a copy only: the report itself carries no script.
    probe = """<script>window.addEventListener('load', () => {
      const images = [...document.images];
      document.body.dataset.images = images.length;
      document.body.dataset.broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).length;
      document.body.dataset.bestRows = document.querySelectorAll('#best tr').length - 1;
      // legible as drawn: no image shown narrower than its pixels (fonts sized for 90 dpi)
      document.body.dataset.shrunk = images.filter(i => i.width < i.naturalWidth - 1).length;
      document.body.dataset.widest = Math.max(...images.map(i => i.naturalWidth));
    });</script></body>"""
    page = tmp_path / "probe.html"
    page.write_text(study["html"].replace("</body>", probe))
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    found = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body))
    assert found, "the probe did not run: " + dom[:500]
    assert int(found["images"]) >= 9 and found["broken"] == "0"
    assert found["shrunk"] == "0" and int(found["widest"]) > 900, found  # the widest, accuracy_vs_k, at full size
    assert int(found["best-rows"]) == 7  # nmf, kmeans at k=4, 8; nmf+hoyer at 8; the trials' k=5, 6 (7 was pruned)
    for run in study["runs"]:
        assert run.info.run_id in dom


# --- the logic, on fake runs ----------------------------------------------------------

def run(run_id, method="nmf", k=10, status="FINISHED", sparsity="none", tags=None, start=0, **metrics):
    params = {"method": method, "sparsity": sparsity} | ({} if k is None else {"k": str(k)})
    tags = {"nmfstudy.kind": "run", **(tags or {})}
    return RunRecord(run_id, f"{method} k={k}", status, params, metrics, tags, start)


def test_labels_name_the_sparsity_variant():
    assert records.group_label("nmf", "none") == "nmf"
    assert records.group_label("nmf", "l1") == "nmf+l1"
    assert records.group_label("gnmf", "hoyer") == "gnmf+hoyer"
    assert records.group_label("kmeans", None) == "kmeans"
    assert run("a", sparsity="hoyer").label == "nmf+hoyer"


def test_best_run_per_label_and_k_skips_failed_unfinished_pruned_and_unscored():
    runs = [
        run("low", accuracy=0.4), run("high", accuracy=0.6), run("tie", accuracy=0.6, start=5),
        run("failed", status="FAILED", accuracy=0.9), run("running", status="RUNNING", accuracy=0.9),
        run("pruned", tags={"optuna.state": "PRUNED"}, accuracy=0.9), run("nan", accuracy=math.nan),
        run("no-metrics"), run("no-k", k=None, accuracy=0.9),
        run("sparse", sparsity="l1", accuracy=0.5), run("k20", k=20, accuracy=0.3),
        run("km", method="kmeans", fit_time_s=1.0, accuracy=0.55),  # a different metric set
    ]
    best = records.best_runs(runs)
    assert [(r.label, r.k, r.run_id) for r in best] == [
        ("kmeans", 10, "km"), ("nmf", 10, "high"), ("nmf", 20, "k20"), ("nmf+l1", 10, "sparse")]
    assert records.best_runs(runs, rank_by="fit_time_s") == [runs[-1]]
    assert records.group_counts(runs)[("nmf", 10)] == 8


def test_series_components_and_sparse_runs():
    runs = [run("n10", k=10, accuracy=0.5, sparsity_H=0.6), run("n20", k=20, accuracy=0.4, sparsity_H=0.7),
            run("km", method="kmeans", k=10, accuracy=0.6)]
    assert records.series(runs, "accuracy") == {"kmeans": [(10, 0.6)], "nmf": [(10, 0.5), (20, 0.4)]}
    assert records.series(runs, "loss") == {}
    by_k = records.components_by_k(records.best_runs(runs))
    assert [r.run_id for r in by_k[10]] == ["n10", "km"]  # parts before wholes
    assert records.sparse_runs(runs) == []  # plain NMF only: no sparsity section
    sparse = runs + [run("h", sparsity="hoyer", accuracy=0.45, sparsity_H=0.8)]
    assert {r.run_id for r in records.sparse_runs(sparse)} == {"n10", "n20", "h"}


def test_study_without_logged_best_falls_back_to_its_trials():
    trials = [run(f"t{n}", k=k, tags={"mlflow.parentRunId": "s", "optuna.trial_number": str(n),
                                         "optuna.state": state}, loss=loss)
              for n, (k, loss, state) in enumerate([(5, 3.0, "COMPLETE"), (6, 1.0, "COMPLETE"), (7, 0.5, "PRUNED")])]
    trials = [replace(t, params={**t.params, "objective": "loss"}) for t in trials]
    parent = RunRecord("s", "study", tags={"nmfstudy.kind": "study"})
    (found,) = records.studies([parent], trials + [run("other", loss=0.1)])
    assert found.objective == "loss" and found.direction == "minimize"
    assert [t.run_id for t in found.trials] == ["t0", "t1", "t2"]
    assert found.best_trial().run_id == "t1"  # the pruned trial's lower loss does not count
    assert found.best_params() == {"k": ("", "6")}


def test_study_logged_by_the_sweeper_is_read_as_logged():
    params = {"optuna.objective": "fit_time_s,accuracy", "optuna.direction": "maximize,minimize",
              "optuna.space.k": "range(5, 8)", "best.k": "5", "best.trial_number": "0"}
    parent = RunRecord("s", "study", params=params, tags={"nmfstudy.kind": "study", "optuna.study_name": "x"})
    trials = [run(f"t{n}", k=5 + n, tags={"mlflow.parentRunId": "s", "optuna.trial_number": str(n)},
                  fit_time_s=1.0 + n) for n in range(2)]
    (found,) = records.studies([parent], trials)
    assert (found.name, found.objective, found.direction) == ("x", "fit_time_s", "maximize")
    assert found.best_trial().run_id == "t0" and found.best_params() == {"k": ("range(5, 8)", "5")}


def test_render_with_failed_runs_and_uneven_metrics(tmp_path):
    runs = [run("good", accuracy=0.5, hungarian_accuracy=0.4, loss=10.0, fit_time_s=1.0, j_clust=2.0),
            run("bare", method="kmeans", accuracy=0.6),  # no loss, no time, no figures
            run("broken", status="FAILED", tags={"error": "MemoryError: <big>"})]
    exp = report.Experiment("7", "fake", "sqlite:///x.db", runs, [])
    fetched = []
    result = report.render(exp, lambda run_id, path: fetched.append((run_id, path)), tmp_path,
                           report.Settings(ui_url="http://ui", references=[
                               {"method": "nmf", "k": 10, "metric": "hungarian_accuracy", "value": 0.34}]))
    html = result.html.read_text()
    assert ("good", "figures/components.png") in fetched
    assert "http://ui/#/experiments/7/runs/broken" in html and "MemoryError: &lt;big&gt;" in html
    assert "&mdash;" in html  # the missing metrics
    assert "sparsity.png" not in {p.name for p in result.files}
    assert len(re.findall(r"<tr><td", best_table(html))) == 2


def test_render_with_only_failed_runs_says_so(tmp_path):
    exp = report.Experiment("7", "fake", "sqlite:///x.db", [run("broken", status="FAILED")], [])
    html = report.render(exp, lambda *_: None, tmp_path, report.Settings()).html.read_text()
    assert "No completed run has the metric <code>accuracy</code>" in html and "broken" in html


def test_empty_and_unknown_experiments_name_tracking_experiment(study):
    client = study["client"]
    tracking.experiment_id(client, tracking.resolve_store(study["uri"], ROOT), "empty-report-test")
    with pytest.raises(report.ReportError, match=r"tracking.experiment='empty-report-test' has no runs"):
        report.collect(client, "empty-report-test", study["uri"])
    with pytest.raises(report.ReportError, match=r"tracking.experiment='missing': no such experiment.*report-test"):
        report.collect(client, "missing", study["uri"])


def test_records_figures_and_page_import_without_mlflow_or_pyplot():
    # A notebook keeps its matplotlib backend (no pyplot, no matplotlib.use) and needs no MLflow until it reads a store.
    code = ("import sys, nmfstudy.plots, nmfstudy.report\n"
            "from nmfstudy.report import RunRecord, figures, html, records, render\n"
            "print(sorted(m for m in ('mlflow', 'matplotlib.pyplot') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_rank_by_must_be_a_metric_of_the_completed_runs():
    runs = [run("a", accuracy=0.5, loss=3.0), run("b", method="kmeans", accuracy=0.6, j_clust=1.0),
            run("failed", status="FAILED", only_failed=1.0), run("nan", silhouette=math.nan)]
    assert records.rankable_metrics(runs) == ["accuracy", "j_clust", "loss"]
    records.check_rank_by(runs, "j_clust", "x")
    with pytest.raises(report.ReportError) as err:
        records.check_rank_by(runs, "foo", "x")
    assert str(err.value) == ("report.rank_by must be one of accuracy, j_clust, loss (the metrics of the completed "
                              "runs of experiment 'x'); got 'foo'")
    with pytest.raises(report.ReportError, match="got 'only_failed'"):
        records.check_rank_by(runs, "only_failed", "x")
    records.check_rank_by([run("broken", status="FAILED")], "foo", "x")  # nothing to choose from: the page says so


# --- the figures, on fake runs ---------------------------------------------------------

def _extent(fig, artist):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    return artist.get_window_extent(renderer)


def test_accuracy_vs_k_legend_below_the_panels_and_star_values_inside_them():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from nmfstudy.report import figures

    runs = [run(f"{m}{k}", method=m, k=k, accuracy=a, hungarian_accuracy=a - 0.1)
            for m, base in [("nmf", 0.5), ("kmeans", 0.6)] for k, a in [(10, base), (20, base + 0.1), (50, base + 0.2)]]
    references = [{"method": "kmeans", "k": 50, "metric": "accuracy", "value": 0.8134},
                  {"method": "nmf", "k": 10, "metric": "hungarian_accuracy", "value": 0.34}]
    fig = figures.accuracy_vs_k(records.best_runs(runs), runs, figures.label_colors(r.label for r in runs), references)
    FigureCanvasAgg(fig).draw()
    axes = fig.axes
    assert all(ax.get_legend() is None for ax in axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["kmeans", "nmf", "published: kmeans", "published: nmf"]
    box = _extent(fig, legend)
    assert all(box.y1 < _extent(fig, ax).y0 for ax in axes)  # below every panel, covering no point
    stars = [t for ax in axes for t in ax.texts]
    assert [t.get_text() for t in stars] == ["0.81", "0.34"]
    for ax, text in zip(axes, stars, strict=True):
        inner, outer = _extent(fig, text), _extent(fig, ax)
        assert outer.x0 <= inner.x0 and inner.x1 <= outer.x1, text.get_text()  # not clipped at the panel's edge


def test_sparsity_panels_are_titled_unlabelled_and_tell_the_assignment_rules_apart():
    from nmfstudy.report import figures

    def nmf(run_id, k, assign, sparsity="none", **metrics):
        base = run(run_id, k=k, sparsity=sparsity, **metrics)
        return replace(base, params={**base.params, "method.assign": assign})

    runs = [nmf("a", 10, "argmax", accuracy=0.5, sparsity_H=0.6, sparsity_W=0.3),
            nmf("b", 10, "kmeans", accuracy=0.55, sparsity_H=0.6, sparsity_W=0.3),
            nmf("c", 50, "argmax", "hoyer", accuracy=0.4, sparsity_H=0.9, sparsity_W=0.2)]
    fig = figures.sparsity(runs, "accuracy", figures.label_colors(r.label for r in runs))
    left, right = fig.axes
    assert "basis images" in left.get_title() and "coefficients" in right.get_title()
    assert not left.texts and not right.texts  # k is the marker's shape, not a number written beside it
    fills = {tuple(c.get_offsets()[0]): c.get_facecolors() for c in left.collections}
    assert len(fills[(0.6, 0.5)]) == 1 and len(fills[(0.6, 0.55)]) == 0  # argmax filled, k-means hollow
    (legend,) = fig.legends
    assert {"nmf", "nmf+hoyer", "k=10", "k=50", "hollow: k-means on coefficients"} <= {
        t.get_text() for t in legend.get_texts()}


def test_study_values_to_three_digits_and_captions_say_the_number_of_trials(tmp_path):
    from nmfstudy.report import html

    trials = [run(f"t{n}", k=5 + n, tags={"mlflow.parentRunId": "s", "optuna.trial_number": str(n)}, accuracy=0.5)
              for n in range(4)]
    parent = RunRecord("s", "study", params={"optuna.space.method.lam": "tag(log, interval(1e-3, 1e3))",
                                            "optuna.space.alpha": "interval(0, 1)"},
                       tags={"nmfstudy.kind": "study", "best.method.lam": "369.0441834", "best.trial_number": "1",
                             "best.alpha": "0.007257005721594277"})
    (study_record,) = records.studies([parent], trials)
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    page = html.Page(report.Experiment("7", "fake", "sqlite:///x.db", trials, [parent]), report.Settings(), [], {})
    page.study(study_record, {"param_importances": png, "intermediate_values": png})
    (section,) = page.studies
    assert "<td class=l>369</td>" in section and "<td class=l>0.00726</td>" in section and "05721" not in section
    assert "from 4 completed trials: with fewer than about 20 a rough guide only" in section
    assert "told -loss" in section
