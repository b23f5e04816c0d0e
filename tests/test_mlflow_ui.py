"""What a user sees in the real `mlflow ui`: the links the project prints open the study's runs table.

MLflow 3 opens an experiment on its GenAI overview ("Traces 0") unless the experiment says it is
model training; these tests start the real UI on a small sweep's store and render its pages in
headless Chromium.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from helpers import mlflow_runs, run_train
from servers import HOST, free_port, process_group

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
METRIC_COLUMNS = ("accuracy", "hungarian_accuracy", "nmi", "test_accuracy", "fit_time_s")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                       reason="needs Debian's chromium (apt-get install -y chromium) to render the UI"),
]


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


def test_a_run_link_opens_its_page_and_artifacts(ui, tmp_path):
    runs = [link for link in printed_links(ui["log"]) if re.search(r"/runs/[0-9a-f]{32}$", link)]
    assert runs, ui["log"][-3000:]
    text = text_of(render(ui["base"] + runs[0] + "/artifacts", tmp_path / "profile"))
    assert "config.yaml" in text and "figures" in text, text[:3000]
