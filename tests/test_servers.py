"""The real servers of tests/servers.py: PostgreSQL holds Optuna studies and MLflow's store,
the MLflow server proxies artifacts to disk, a PostgreSQL restart keeps data, and stopping
leaves no process behind."""
from __future__ import annotations

import os
import socket
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.storages import RDBStorage
from servers import descendants, local_study_servers, pid_alive, process_group, servers_missing


def test_postgres_accepts_connections_and_has_both_databases(study_servers):
    pg = study_servers.postgres
    assert pg.running and study_servers.optuna_url == f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/optuna"
    assert {"optuna", "mlflow"} <= set(pg.databases())
    # counted by a name of its own: an engine another test left to the garbage collector may open or close a
    # connection to the same database at any moment
    me = f"test-servers-{os.getpid()}"
    assert pg.connections("optuna", me) == 0
    with pg.connect("optuna", application_name=me) as conn:
        assert conn.execute("SELECT current_database(), 1 + 1").fetchone() == ("optuna", 2)
        assert pg.connections("optuna", me) == 1 and pg.connections("mlflow", me) == 0
    # the server ends the session's backend just after the client leaves
    deadline = time.monotonic() + 10
    while pg.connections("optuna", me) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pg.connections("optuna", me) == 0


def test_optuna_rdb_storage_on_postgres(study_servers, unique_name):
    storage = RDBStorage(study_servers.optuna_url)
    try:
        study = optuna.create_study(study_name=unique_name, storage=storage, direction="maximize")
        trial = study.ask()
        trial.suggest_int("k", 2, 50)
        study.tell(trial, 0.5)
    finally:
        storage.engine.dispose()
    again = RDBStorage(study_servers.optuna_url)
    try:
        loaded = optuna.load_study(study_name=unique_name, storage=again)
        assert [(t.number, t.value, t.state) for t in loaded.trials] == [(0, 0.5, optuna.trial.TrialState.COMPLETE)]
    finally:
        again.engine.dispose()


def test_fresh_optuna_url_is_an_empty_database_of_its_own(study_servers, fresh_optuna_url):
    name = fresh_optuna_url.rsplit("/", 1)[1]
    assert name.startswith("optuna_") and name in study_servers.postgres.databases()
    storage = RDBStorage(fresh_optuna_url)
    try:
        assert optuna.get_all_study_summaries(storage) == []
    finally:
        storage.engine.dispose()


def test_mlflow_server_stores_runs_in_postgres_and_proxies_artifacts(study_servers, unique_name):
    client = MlflowClient(study_servers.mlflow_url)
    exp_id = client.create_experiment(unique_name)
    assert client.get_experiment(exp_id).artifact_location.startswith("mlflow-artifacts:")
    run = client.create_run(exp_id)
    client.log_metric(run.info.run_id, "accuracy", 0.75)
    client.log_text(run.info.run_id, "hello from a test\n", "notes/hello.txt")
    client.set_terminated(run.info.run_id)

    got = client.get_run(run.info.run_id)
    assert got.data.metrics == {"accuracy": 0.75} and got.info.status == "FINISHED"
    on_disk = [p for p in study_servers.artifacts_dir.rglob("hello.txt") if run.info.run_id in p.parts]
    assert len(on_disk) == 1 and on_disk[0].read_text() == "hello from a test\n"
    with study_servers.postgres.connect("mlflow") as conn:  # the backend is PostgreSQL, not a file
        assert conn.execute("SELECT count(*) FROM experiments WHERE name = %s", (unique_name,)).fetchone() == (1,)


def test_postgres_restart_keeps_data(study_servers, unique_name):
    pg = study_servers.postgres
    storage = RDBStorage(study_servers.optuna_url)
    optuna.create_study(study_name=unique_name, storage=storage)
    storage.engine.dispose()
    old_pid, port = pg.pid, pg.port

    pg.restart()

    assert pg.running and pg.pid != old_pid and pg.port == port
    with pg.connect("optuna") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    again = RDBStorage(study_servers.optuna_url)
    try:
        assert unique_name in [s.study_name for s in optuna.get_all_study_summaries(again)]
    finally:
        again.engine.dispose()
    # The MLflow server's pooled connections died with the old postmaster; it recovers.
    assert MlflowClient(study_servers.mlflow_url).get_experiment_by_name("Default") is not None


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# as the study_servers fixture: skipped, with its reason, when PostgreSQL or psycopg is missing (not under CI)
@pytest.mark.skipif(servers_missing() is not None and not os.environ.get("CI"), reason=servers_missing() or "")
def test_stop_leaves_no_process(tmp_path):
    with local_study_servers(tmp_path) as s:
        pg, ml = s.postgres, s.mlflow
        pg_procs = {pg.pid} | descendants(pg.pid)
        ml_procs = process_group(ml.pid) | descendants(ml.pid)
        assert len(pg_procs) > 3 and len(ml_procs) >= 2  # postmaster + its workers; the CLI + uvicorn
        assert all(pid_alive(p) for p in pg_procs | ml_procs)

        ml.stop()
        pg.stop()

        assert not pg.running and not ml.running
        assert [p for p in pg_procs | ml_procs if pid_alive(p)] == []
        assert _refused(pg.port) and _refused(ml.port)
        data_root = pg.root
    assert not data_root.exists()  # the throwaway cluster is deleted; its log is kept
    assert "database system is shut down" in (tmp_path / "postgres.log").read_text()
