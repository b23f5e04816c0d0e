"""The parent run of a plain sweep: made before its jobs, which find its id in the sweep folder, and ended after."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from nmfstudy.study_names import PARENT_RUN_TAG

from .experiments import experiment_id
from .reaping import process_tags
from .store import Store

PARENT_RUN_FILE = ".mlflow_parent_run_id"


def start_parent_run(client: MlflowClient, store: Store, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """Create the run that the jobs of one sweep nest under, left RUNNING.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    store : Store
        The store.
    experiment : str
        The experiment's name.
    run_name : str
        The run's name.
    tags : dict
        Its tags (the owner tags are added).

    Returns
    -------
    str
        The run's id.
    """
    exp_id = experiment_id(client, store, experiment)
    parent = client.create_run(exp_id, run_name=run_name, tags={**tags, **process_tags()})
    return parent.info.run_id


def end_parent_run(client: MlflowClient, run_id: str, status: str = "FINISHED") -> None:
    """End a sweep's parent run.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    run_id : str
        The run.
    status : str
        FINISHED, FAILED or KILLED.
    """
    client.set_terminated(run_id, status)


def best_child(client: MlflowClient, parent_run_id: str, metric: str, maximize: bool = True):
    """The finished run nested under `parent_run_id` with the best `metric`.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    parent_run_id : str
        The parent run.
    metric : str
        The metric that ranks them.
    maximize : bool
        Whether larger is better.

    Returns
    -------
    mlflow.entities.Run or None
        None when no finished child has the metric.
    """
    experiment = client.get_run(parent_run_id).info.experiment_id
    query = f"attributes.status = 'FINISHED' and tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'"
    found = client.search_runs([experiment], query, max_results=1,
                               order_by=[f"metrics.`{metric}` {'DESC' if maximize else 'ASC'}"])
    return found[0] if found and metric in found[0].data.metrics else None


def write_parent_run_id(sweep_dir: str | Path, run_id: str) -> None:
    """Record the parent run's id in the sweep folder, where jobs in any process read it.

    Parameters
    ----------
    sweep_dir : str or Path
        The sweep folder (made if missing).
    run_id : str
        The parent run.
    """
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=sweep_dir, delete=False) as tmp:
        tmp.write(run_id)
    os.replace(tmp.name, sweep_dir / PARENT_RUN_FILE)


def read_parent_run_id(sweep_dir: str | Path) -> str | None:
    """The parent run's id recorded in the sweep folder.

    Parameters
    ----------
    sweep_dir : str or Path
        The sweep folder.

    Returns
    -------
    str or None
        None when the sweep has no parent run.
    """
    path = Path(sweep_dir) / PARENT_RUN_FILE
    return path.read_text().strip() if path.exists() else None
