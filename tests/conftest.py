"""Shared helpers: run the real entry point in a subprocess against a temporary MLflow store;
fixtures for real PostgreSQL and MLflow servers (tests/servers.py)."""
from __future__ import annotations

import itertools
import os
import re
import subprocess
import uuid

import preloaded
import pytest
from helpers import CONF

# The longest modules first (wall seconds in one suite on the 2-core machine, 2026-12-07: SLURM 165, the
# distributed studies 115, process death 92, ...): xdist's loadfile hands out whole modules in collection order
# (--no-loadscope-reorder in pyproject.toml; its default orders them by test count, which sent the SLURM module,
# 8 tests and 2.7 minutes, last and alone), so the short modules fill the gaps at the end.
LONGEST_FIRST = ("test_slurm.py", "test_distributed.py", "test_process_death.py", "test_bad_input3.py",
                 "test_reliability.py", "test_train_e2e.py", "test_bad_input.py", "test_optuna_sweeper.py",
                 "test_bad_stores.py", "test_dedup.py", "test_user_view.py", "test_study_identity.py", "test_models.py")


def pytest_sessionfinish(session, exitstatus):
    preloaded.stop_servers()  # the preloaded interpreters of run_train (tests/preloaded.py)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture
def one_thread():
    """One BLAS and OpenMP thread: on small matrices more threads only add overhead, and far worse
    when other jobs hold the cores (their threads spin on each other)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


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
    from servers import local_study_servers, servers_missing

    missing = servers_missing()
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


# ----------------------------------------------------------------------------- a real SLURM
# munged, slurmctld and slurmd of this machine as root, config through SLURM_CONF (tests/servers.py).

@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A single-node SLURM cluster (node `hostname -s`, 2 CPUs, no accounting) for the session,
    always stopped at its end. Attributes: .env (os.environ + SLURM_CONF for clients), .conf,
    .sbatch(), .squeue(), .scancel(), .wait_empty(), .logs(). Skipped when SLURM is missing or
    cannot start; under CI that is a failure."""
    from servers import local_slurm, slurm_missing

    missing = slurm_missing()
    if missing is None:
        try:
            context = local_slurm(tmp_path_factory.mktemp("slurm"))
            cluster = context.__enter__()
        except (RuntimeError, OSError, subprocess.SubprocessError) as err:
            missing = f"the test SLURM cluster did not start: {(str(err).splitlines() or [repr(err)])[0]}"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the test SLURM cluster: {missing}", pytrace=False)
        pytest.skip(missing)
    try:
        yield cluster
    finally:
        context.__exit__(None, None, None)
