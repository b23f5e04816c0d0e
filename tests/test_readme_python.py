"""README "Use from Python": each snippet, run as written (the study it needs made in a temporary store)."""
from __future__ import annotations

import ast
import functools
import os
import re
import signal
import subprocess
import sys

import pytest
from helpers import ROOT, answers, free_port, wait_until
from helpers import run_train as _run_train

# what a run keeps is under test here: every run draws its figures and logs its model
run_train = functools.partial(_run_train, figures_and_model=True)


def _section_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Use from Python\n", 1)[1].split("\n### ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def _python(code: str, cwd, env=None) -> subprocess.CompletedProcess:
    # the snippets name their store themselves, as a user in the project root would
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **(env or {})}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_the_pipeline_snippet_prints_the_ari_it_states(tmp_path):
    snippet = _section_blocks("python")[0]
    stated = float(re.search(r"# (0\.\d+)", snippet).group(1))
    result = _python(snippet, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert round(float(result.stdout.split()[-1]), 2) == stated


@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    """The README's `python src/train.py -m hparams_search=nmf_k`, two trials, into a temporary store."""
    tmp = tmp_path_factory.mktemp("readme")
    result = run_train(tmp, "hparams_search=nmf_k", "hydra.sweeper.n_trials=2",
                       f"hydra.sweeper.storage=sqlite:///{tmp}/optuna.db", multirun=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return tmp


def test_the_load_model_snippet_predicts_new_images(study_store):
    result = _python(_section_blocks("python")[1], study_store)
    assert result.returncode == 0, result.stderr[-3000:]
    clusters, labels = re.findall(r"\[([\d ]+)\]", result.stdout)
    assert len(clusters.split()) == len(labels.split()) == 5


def test_the_serve_snippet_answers_the_request_snippet(study_store):
    (command,) = [line for line in _section_blocks("bash")[0].splitlines() if "mlflow models serve" in line]
    port = str(free_port())
    assert command.startswith("MLFLOW_TRACKING_URI=sqlite:///mlflow.db mlflow models serve") and "-p 5001" in command
    server = subprocess.Popen(command.replace("-p 5001", f"-p {port}"), shell=True, cwd=study_store,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/ping"), "the README's mlflow models serve", server,
                   timeout=120)
        result = _python(_section_blocks("python")[2].replace(":5001/", f":{port}/"), study_store)
        assert result.returncode == 0, result.stderr[-2000:]
        predictions = ast.literal_eval(result.stdout.strip())["predictions"]  # the dict the snippet prints
        assert len(predictions) == 3 and all(isinstance(p, int) for p in predictions)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
