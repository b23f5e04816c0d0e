"""Shared helpers: run the real entry point in a subprocess against a temporary MLflow store;
fixtures for real PostgreSQL and MLflow servers (tests/servers.py)."""
from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def run_train(tmp_path: Path, *overrides: str, multirun: bool = False, timeout: int = 300,
              script: str = "src/train.py", env: dict | None = None) -> subprocess.CompletedProcess:
    """`python src/train.py [-m] overrides...` logging to <tmp_path>/mlflow.db, outputs under tmp_path."""
    args = [sys.executable, script]
    if multirun:
        args += ["-m", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    else:
        args += [f"hydra.run.dir={tmp_path / 'run'}"]
    if not any(o.startswith("tracking.uri=") for o in overrides):
        args.append(f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}")
    args += overrides
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env.update({"PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", **(env or {})})
    full_env.pop("HYDRA_FULL_ERROR")
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)


def default_sigint() -> None:
    """preexec_fn for a child that the test interrupts with SIGINT, as Ctrl-C does.

    A background job of a non-interactive shell (`pytest &` in a script) starts with SIGINT
    ignored, Python keeps that, and children inherit it: their Ctrl-C would then do nothing.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def mlflow_runs(tmp_path: Path, experiment: str = "nmfstudy"):
    """All runs of `experiment` in the temporary store, newest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], max_results=1000)


@pytest.fixture
def compose():
    """compose(overrides) -> the resolved config as Hydra builds it for train.py."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    def _compose(*overrides: str) -> dict:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            cfg = hydra_compose("config", overrides=list(overrides))
            return OmegaConf.to_container(cfg, resolve=True)

    return _compose


# ----------------------------------------------------------------------------- real servers
# PostgreSQL and an MLflow tracking server, as in "Studies on many machines" (tests/servers.py).

@pytest.fixture(scope="session")
def study_servers(tmp_path_factory):
    """PostgreSQL (databases `optuna`, `mlflow`) and an `mlflow server` on it with proxied
    artifacts, shared by the whole session and always stopped at its end.

    Attributes: .postgres (PostgresServer), .mlflow (MlflowServer), .optuna_url, .mlflow_url,
    .artifacts_dir. Skipped when PostgreSQL or psycopg is missing; under CI that is a failure.
    """
    from servers import local_study_servers, postgres_bindir

    missing = None
    if postgres_bindir() is None:
        missing = "PostgreSQL is not installed (no initdb/pg_ctl; apt-get install postgresql)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            missing = "psycopg is not installed (pip install -e '.[cluster]')"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the study servers: {missing}", pytrace=False)
        pytest.skip(missing)
    with local_study_servers(tmp_path_factory.mktemp("study_servers")) as servers:
        yield servers


_unique_counter = itertools.count()


@pytest.fixture
def unique_name(request) -> str:
    """A name no other test uses, for an Optuna study or MLflow experiment on the shared
    servers (the MLflow server has one database, so tests separate by experiment):
    lowercase [a-z0-9_], at most 40 characters, e.g. `test_resume_3_5f2a9c`."""
    base = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:24]
    return f"{base}_{next(_unique_counter)}_{uuid.uuid4().hex[:6]}"


@pytest.fixture
def fresh_optuna_url(study_servers):
    """The URL of an empty database of its own on the session's PostgreSQL, dropped after
    the test (for tests that need a whole Optuna storage to themselves)."""
    name = f"optuna_{uuid.uuid4().hex[:12]}"
    url = study_servers.postgres.create_database(name)
    yield url
    study_servers.postgres.drop_database(name)
