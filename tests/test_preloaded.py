"""run_train's preloaded interpreter (tests/preloaded.py) behaves as `python SCRIPT ARGS...` would."""
from __future__ import annotations

import os
import subprocess
import sys

import preloaded
import pytest

SCRIPT = r"""
import atexit, json, os, sys, tempfile
atexit.register(lambda: print("atexit ran", flush=True))
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "env": os.environ.get("NMFSTUDY_PROBE"),
                  "name": __name__, "file": __file__, "path0": sys.path[0], "stdin": sys.stdin.read(),
                  "tmp": tempfile.gettempdir(), "train_loaded": "mlflow" in sys.modules}))
print("to stderr", file=sys.stderr)
if sys.argv[1] == "blas":
    from threadpoolctl import threadpool_info
    print(max(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"))
if sys.argv[1] == "exit":
    sys.exit(int(sys.argv[2]))
if sys.argv[1] == "raise":
    raise ValueError("boom")
if sys.argv[1] == "kill":
    os.kill(os.getpid(), 9)
if sys.argv[1] == "sleep":
    import time
    time.sleep(60)
"""


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text(SCRIPT)
    return path


def _env(tmp_path, **extra):
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path), **extra}


def test_a_script_runs_as_main_with_the_tests_argv_folder_environment_and_streams(tmp_path, script):
    import json

    result = preloaded.run_script([sys.executable, str(script), "exit", "0"], tmp_path,
                                  _env(tmp_path, NMFSTUDY_PROBE="seen"), timeout=30)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[0])
    assert seen == {"argv": [str(script), "exit", "0"], "cwd": str(tmp_path), "env": "seen", "name": "__main__",
                    "file": str(script), "path0": str(tmp_path), "stdin": "", "tmp": str(tmp_path),
                    "train_loaded": True}
    assert result.stdout.splitlines()[1:] == ["atexit ran"]  # the interpreter's exit, handlers included
    assert result.stderr == "to stderr\n"


@pytest.mark.parametrize(("how", "returncode", "stderr_end"), [
    (["exit", "3"], 3, "to stderr\n"),
    (["raise"], 1, "ValueError: boom\n"),
    (["kill"], -9, "to stderr\n"),
])
def test_exit_status_and_traceback_are_the_interpreters(tmp_path, script, how, returncode, stderr_end):
    result = preloaded.run_script([sys.executable, str(script), *how], tmp_path, _env(tmp_path), timeout=30)
    assert result.returncode == returncode
    assert result.stderr.endswith(stderr_end)
    if how == ["raise"]:
        assert "Traceback (most recent call last)" in result.stderr
    assert ("atexit ran" in result.stdout) == (how != ["kill"])


def test_a_run_past_its_timeout_is_killed_and_raises_as_subprocess_run_does(tmp_path, script):
    with pytest.raises(subprocess.TimeoutExpired):
        preloaded.run_script([sys.executable, str(script), "sleep"], tmp_path, _env(tmp_path), timeout=3)
    # its waiter, left without a test to answer, ended without taking the server's socket with it
    again = preloaded.run_script([sys.executable, str(script), "exit", "0"], tmp_path, _env(tmp_path), timeout=30)
    assert again.returncode == 0


def test_blas_threads_are_those_of_the_runs_environment(tmp_path, script):
    """BLAS reads its thread count when it loads, in the server: runs that differ there get a server each."""
    one_thread = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    threads = {}
    for name, extra in (("one", one_thread), ("all", {})):
        env = {k: v for k, v in _env(tmp_path, **extra).items() if extra or k not in one_thread}
        result = preloaded.run_script([sys.executable, str(script), "blas"], tmp_path, env, timeout=30)
        threads[name] = int(result.stdout.splitlines()[1])
    assert threads == {"one": 1, "all": os.cpu_count()}


def test_a_run_logs_and_says_the_same_as_in_a_fresh_interpreter(tmp_path):
    """train.py through run_train, preloaded and fresh: the same metrics logged, the same one line refused."""
    from helpers import mlflow_runs, run_train, the_one_line

    metrics = {}
    for fresh in (False, True):
        where = tmp_path / ("fresh" if fresh else "preloaded")
        where.mkdir()
        result = run_train(where, "dataset=digits", "method=kmeans", "k=4", fresh_interpreter=fresh)
        assert result.returncode == 0, result.stderr[-2000:]
        (run,) = mlflow_runs(where)
        metrics[fresh] = {k: v for k, v in run.data.metrics.items() if k != "fit_time_s"}
        refused = run_train(where, "dataset=digits", "k=0", fresh_interpreter=fresh)
        metrics[fresh, "refused"] = the_one_line(refused)
    assert metrics[False] == metrics[True] and "accuracy" in metrics[False]
    assert metrics[False, "refused"] == metrics[True, "refused"] and "k" in metrics[False, "refused"]
