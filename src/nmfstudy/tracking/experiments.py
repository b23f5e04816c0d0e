"""Experiments: found or created (tagged so that `mlflow ui` opens their runs table), and links into the UI."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_EXPERIMENT_NAME_LENGTH

from nmfstudy.metrics import LABEL_METRICS
from nmfstudy.study_names import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, RUNS_VIEW_KEY, SHARED_VIEW_PREFIX
from nmfstudy.ui_links import run_page, runs_page, ui_base

from .store import DB_NAME, Store, TrackingError

# One logger for the package, as before it was split: log lines name nmfstudy.tracking.
log = logging.getLogger(__package__)


def experiment_id(client: MlflowClient, store: Store, name: str) -> str:
    """The id of experiment `name`, created if missing (safe when parallel jobs race to create it).

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    store : Store
        The store (a local one gets the experiment's artifacts under its artifact root).
    name : str
        The experiment's name.

    Returns
    -------
    str
        The experiment's id.

    Raises
    ------
    TrackingError
        When the name is one MLflow refuses, or the experiment was deleted (the message says how
        to restore it).
    """
    check_experiment_name(name)
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise TrackingError(
                f"tracking.experiment {name!r} was deleted (experiment id {found.experiment_id}): restore it with "
                f"`mlflow experiments restore --experiment-id {found.experiment_id}`, or choose another "
                "tracking.experiment")
        if not _UI_TAGS.keys() <= found.tags.keys():  # made by an older version, or by hand
            _set_ui_tags(client, found.experiment_id)
        return found.experiment_id
    location = None
    if store.artifact_root is not None:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        location = (store.artifact_root / slug).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=_UI_TAGS)
    except MlflowException as err:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise TrackingError(f"tracking.experiment {name!r} cannot be made: {err.message}") from None
        return found.experiment_id


def check_experiment_name(name) -> None:
    """Refuse, in one line naming tracking.experiment, a name MLflow would refuse with a traceback.

    Parameters
    ----------
    name : object
        tracking.experiment as composed (Hydra makes ``123`` an int and ``null`` None).

    Raises
    ------
    TrackingError
        Unless `name` is a string of 1 to MAX_EXPERIMENT_NAME_LENGTH characters, not only blanks
        (MLflow takes those, but its UI then lists an experiment with no visible name).
    """
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        got = repr(name) if not isinstance(name, str) or len(name) <= 60 else f"a name of {len(name)} characters"
        hint = " (quote a number: tracking.experiment=\"'2024'\")" if isinstance(name, (int, float)) else ""
        raise TrackingError(f"tracking.experiment must be a name of 1 to {MAX_EXPERIMENT_NAME_LENGTH} characters, "
                            f"not only blanks{hint}; got {got}")


def ui_hint(store: Store, project_root: str | Path) -> str:
    """How to start the MLflow UI that shows `store`: nothing for a tracking server (it is its own UI).

    Parameters
    ----------
    store : Store
        The store.
    project_root : str or Path
        The project folder (plain `mlflow ui` there reads its `mlflow.db`).

    Returns
    -------
    str
        E.g. "start `mlflow ui` in /path/to/project, then ", or "".
    """
    if not store.tracking_uri.startswith("sqlite:///"):
        return ""
    root = Path(project_root).resolve()
    if Path(store.tracking_uri.removeprefix("sqlite:///")) == root / DB_NAME:
        return f"start `mlflow ui` in {root}, then "
    return f"start `mlflow ui --backend-store-uri {store.tracking_uri}`, then "


# What `mlflow ui` shows of the experiment: its runs table (not MLflow 3's GenAI overview), and the view
# the project's links open: the metrics and the chosen method, k and data as columns, best accuracy first.
_RUNS_VIEW = {
    "orderByKey": "metrics.`accuracy`",
    "orderByAsc": False,
    "selectedColumns": [f"params.`{p}`" for p in ("dataset", "dataset.n_samples", "method", "k")]
    + [f"metrics.`{m}`" for m in (*LABEL_METRICS, "loss", "fit_time_s", "n_iter")],
}
_UI_TAGS = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, SHARED_VIEW_PREFIX + RUNS_VIEW_KEY: json.dumps(_RUNS_VIEW)}


def _set_ui_tags(client: MlflowClient, exp_id: str) -> None:
    """Tag an experiment so that `mlflow ui` opens it on its runs table, in the project's view."""
    try:
        for key, value in _UI_TAGS.items():
            client.set_experiment_tag(exp_id, key, value)
    except MlflowException as err:  # a read-only server: the links still open the runs table
        log.debug("could not tag experiment %s: %s", exp_id, err)


def ui_link(store: Store, experiment_id: str, run_id: str | None = None) -> str:
    """Where the MLflow UI shows an experiment's runs table, or one run.

    Parameters
    ----------
    store : Store
        The store (a tracking server is its own UI; else plain `mlflow ui` at 127.0.0.1:5000).
    experiment_id : str
        The experiment.
    run_id : str or None
        A run; None: the runs table.

    Returns
    -------
    str
        The address.
    """
    base = ui_base(store.tracking_uri)
    return runs_page(base, experiment_id) if run_id is None else run_page(base, experiment_id, run_id)
