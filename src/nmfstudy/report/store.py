"""The report's side of the MLflow store: read an experiment's runs, fetch their artifacts, log the report.

The only module of `nmfstudy.report` that imports MLflow; the package imports it on first use
of one of its names, so that records, figures and the page work without MLflow.
"""
from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path

import mlflow
import mlflow.artifacts
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from .. import study_names as names
from .. import tracking
from .records import Experiment, Fetch, ReportError, RunRecord, Settings, check_rank_by
from .render import Report, render


def _record(run) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.run_name or "", run.info.status, dict(run.data.params),
                     dict(run.data.metrics), dict(run.data.tags), run.info.start_time or 0)


def _search(client, experiment_id: str, kind: str) -> list[RunRecord]:
    """Every active run of `kind`, page by page."""
    records, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{names.KIND_TAG}` = '{kind}'",
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        records += [_record(run) for run in page]
        token = page.token
        if not token:
            return records


def collect(client, experiment: str, tracking_uri: str) -> Experiment:
    """Read an experiment's runs from MLflow.

    Parameters
    ----------
    client : mlflow.MlflowClient
        A client of the store (see `nmfstudy.tracking.open_store`).
    experiment : str
        The experiment's name.
    tracking_uri : str
        The store's URI, for messages and for the page.

    Returns
    -------
    Experiment
        Its active job runs (kind ``run``, any status), its Optuna study runs (kind
        ``study``) and its number of sweeps.

    Raises
    ------
    ReportError
        When the experiment is unknown or deleted (naming those the store has), or holds no
        run of train.py.
    """
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage != "active":
        known = sorted(e.name for e in client.search_experiments())
        raise ReportError(f"tracking.experiment={experiment!r}: no such experiment in {tracking_uri}; "
                          f"it has {', '.join(map(repr, known)) or 'none'}")
    runs = _search(client, found.experiment_id, "run")
    if not runs:
        raise ReportError(f"tracking.experiment={experiment!r} has no runs of train.py "
                          f"({names.KIND_TAG}={names.KIND_RUN}) in {tracking_uri}; nothing to report")
    study_runs = _search(client, found.experiment_id, "study")
    return Experiment(found.experiment_id, experiment, tracking_uri, runs, study_runs,
                      n_sweeps=len(_search(client, found.experiment_id, "sweep")),
                      best_models=_best_models(client, study_runs))


def _best_models(client, study_runs: list[RunRecord]) -> dict[str, str]:
    """Study name -> the version of its registered model at the alias ``best`` (studies without one left out)."""
    from mlflow.exceptions import MlflowException

    found = {}
    for run in study_runs:
        name = run.tags.get(names.STUDY_NAME_TAG)
        try:
            found[name] = str(client.get_model_version_by_alias(name, "best").version) if name else None
        except MlflowException:  # not registered: tracking.model=none, several objectives, or an older study
            continue
    return {name: version for name, version in found.items() if version}


def artifact_fetcher(tracking_uri: str, folder: Path) -> Fetch:
    """Make a `Fetch` that downloads artifacts from the store.

    Parameters
    ----------
    tracking_uri : str
        The store's URI.
    folder : pathlib.Path
        Where artifacts are downloaded, under a folder per run.

    Returns
    -------
    Fetch
        fetch(run_id, path) -> the downloaded file, or None when the run lacks it (or it is
        a folder, or the download fails).
    """

    def fetch(run_id: str, path: str) -> Path | None:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                       dst_path=str(folder / run_id), tracking_uri=tracking_uri)
        except (MlflowException, OSError):
            return None
        return Path(local) if Path(local).is_file() else None

    return fetch


def log_report_run(client, store, experiment: str, report: Report, out: Path, tags: dict[str, str]) -> str:
    """Log a report as a run of the experiment it reports on.

    Parameters
    ----------
    client : mlflow.MlflowClient
        A client of the store.
    store : nmfstudy.tracking.Store
        The store.
    experiment : str
        The experiment's name.
    report : Report
        What `render` wrote.
    out : pathlib.Path
        The folder it wrote into: the files keep their paths relative to it.
    tags : dict of str to str
        Tags of the run, beside ``nmfstudy.kind=report``.

    Returns
    -------
    str
        The new run's id.
    """
    name = f"report {datetime.now(timezone.utc):%Y-%m-%d %H:%M}"
    with tracking.run(client, experiment, run_name=name, tags={names.KIND_TAG: names.KIND_REPORT, **tags},
                      store=store) as active:
        for path in report.files:
            folder = path.parent.relative_to(out).as_posix()
            mlflow.log_artifact(str(path), None if folder == "." else folder)
        return active.info.run_id


def build(client, store, experiment: str, out: Path, settings: Settings) -> Report:
    """Read an experiment and write its report: `collect`, then `render`.

    Artifacts are downloaded to a temporary folder, removed afterwards.

    Parameters
    ----------
    client : mlflow.MlflowClient
        A client of the store.
    store : nmfstudy.tracking.Store
        The store.
    experiment : str
        The experiment's name.
    out : pathlib.Path
        The folder to write into.
    settings : Settings
        What runs are ranked by, the base of the run links, the reference results, the title.

    Returns
    -------
    Report
        What was written.

    Raises
    ------
    ReportError
        As `collect`, or when `settings.rank_by` is no metric of the completed runs; then
        nothing is written.
    """
    exp = collect(client, experiment, store.tracking_uri)
    check_rank_by(exp.runs, settings.rank_by, experiment)
    with tempfile.TemporaryDirectory(prefix="nmfstudy-report-") as tmp:
        return render(exp, artifact_fetcher(store.tracking_uri, Path(tmp)), out, settings)
