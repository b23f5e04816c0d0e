"""Links into the MLflow UI: the UI that shows a store, an experiment's runs table, one run's page.

Plain Python (standard library only), so that the report's pages can link runs without importing MLflow.
"""
from __future__ import annotations

from .study_names import RUNS_VIEW_KEY

# Where plain `mlflow ui` serves.
DEFAULT_UI = "http://127.0.0.1:5000"


def ui_base(tracking_uri: str, ui_url: str | None = None) -> str:
    """The MLflow UI that shows a store: `ui_url`, else the tracking server itself, else plain `mlflow ui`.

    Parameters
    ----------
    tracking_uri : str
        The store.
    ui_url : str or None
        The address asked for, if any.

    Returns
    -------
    str
        Its address, without a trailing slash.
    """
    if ui_url:
        return ui_url.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return DEFAULT_UI


def runs_page(base: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI (its "Runs" tab, in the "machine learning" view).

    Parameters
    ----------
    base : str
        The UI's address (`ui_base`).
    experiment_id : str
        The experiment.

    Returns
    -------
    str
        E.g. http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=nmfstudy
        (the view, when the experiment has it, shows the metrics' columns, best accuracy first).
    """
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={RUNS_VIEW_KEY}"


def run_page(base: str, experiment_id: str, run_id: str, tab: str = "") -> str:
    """One run's page in the MLflow UI; `tab` "artifacts" opens its artifacts.

    Parameters
    ----------
    base : str
        The UI's address (`ui_base`).
    experiment_id : str
        The run's experiment.
    run_id : str
        The run.
    tab : str
        "" (overview) or "artifacts".

    Returns
    -------
    str
        E.g. http://127.0.0.1:5000/#/experiments/1/runs/abc...?workflowType=machine_learning (without
        it, MLflow 3 shows the run in its GenAI layout, as an "evaluation run").
    """
    return (f"{base}/#/experiments/{experiment_id}/runs/{run_id}" + (f"/{tab}" if tab else "")
            + "?workflowType=machine_learning")
