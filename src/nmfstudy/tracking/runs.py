"""A job's run: the context that never leaves it RUNNING, and what the run logs (params, metrics, figures, text)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import mlflow
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis

from nmfstudy.study_names import ERROR_TAG, RUN_NAME_TAG

from .experiments import experiment_id
from .heartbeat import Heartbeat
from .reaping import process_tags
from .store import Store


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'method': {'tol': 1e-4}} -> {'method.tol': 1e-4}; lists are kept whole.

    Parameters
    ----------
    tree : object
        A nested dict (a resolved config), or a leaf.
    prefix : str
        The key path so far.

    Returns
    -------
    dict
        Dotted key -> leaf value.
    """
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


@contextmanager
def run(
    client: MlflowClient,
    experiment: str,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    store: Store,
    run_id: str | None = None,
    heartbeat_s: float = 0.0,
) -> Iterator[mlflow.ActiveRun]:
    """An active MLflow run that ends FINISHED, FAILED (with the error as a tag) or KILLED, never RUNNING.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    experiment : str
        The experiment of a new run.
    run_name : str or None
        Its name.
    parent_run_id : str or None
        The run it nests under (a sweep's parent run).
    tags : dict or None
        Its tags (the owner and heartbeat tags are added).
    store : Store
        The store.
    run_id : str or None
        A run made for this job beforehand (an Optuna trial's run, made when the trial starts) to
        continue; this process then becomes its owner.
    heartbeat_s : float
        Seconds between two heartbeat tags (tracking servers only); 0: none.

    Yields
    ------
    mlflow.ActiveRun
        The active run.
    """
    heartbeat = Heartbeat(client, store, heartbeat_s)
    tags = {**(tags or {}), **process_tags(), **heartbeat.tags()}
    status = RunStatus.to_string(RunStatus.FAILED)
    # The run is started inside the try: a SIGTERM that lands while its tags are set must still end it
    # KILLED here. Left active, MLflow's exit handler would end it FINISHED, over the sweeper's KILLED.
    try:
        if run_id is not None:
            active = mlflow.start_run(run_id=run_id)
            mlflow.set_tags({**tags, **({RUN_NAME_TAG: run_name} if run_name else {})})
        else:
            exp_id = experiment_id(client, store, experiment)
            active = mlflow.start_run(experiment_id=exp_id, run_name=run_name, parent_run_id=parent_run_id,
                                      tags=tags)
        heartbeat.add(active.info.run_id)
        yield active
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt as err:
        status = RunStatus.to_string(RunStatus.KILLED)
        reason = getattr(err, "reason", None)  # why a scheduler stopped the job (processes.Terminated)
        _tag_active(ERROR_TAG, f"interrupted: {reason}" if reason else "interrupted")
        raise
    except BaseException as err:
        _tag_active(ERROR_TAG, f"{type(err).__name__}: {err}"[:5000])
        raise
    finally:
        heartbeat.stop()
        if mlflow.active_run() is not None:  # none when the store refused to start it
            mlflow.end_run(status)


def _tag_active(key: str, value: str) -> None:
    """Tag the active run, if one was started (mlflow.set_tag alone would start one)."""
    if mlflow.active_run() is not None:
        mlflow.set_tag(key, value)


def log_params(params: dict[str, Any]) -> None:
    """Log params of the active run (values rendered as text, None as 'null') in batches.

    Parameters
    ----------
    params : dict
        Name -> value.
    """
    items = [Param(key, "null" if value is None else str(value)) for key, value in params.items()]
    client, run_id = MlflowClient(), mlflow.active_run().info.run_id
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def log_metrics(metrics: dict[str, float]) -> None:
    """Log metrics of the active run.

    Parameters
    ----------
    metrics : dict
        Name -> number.
    """
    mlflow.log_metrics({key: float(value) for key, value in metrics.items()})


def log_history(name: str, values) -> None:
    """Log one metric with a step per value (step 1 = first iteration), e.g. the loss per iteration.

    Parameters
    ----------
    name : str
        The metric.
    values : iterable of float
        Its value at each step.
    """
    now = get_current_time_millis()
    metrics = [Metric(name, float(v), now, step) for step, v in enumerate(values, start=1)]
    client, run_id = MlflowClient(), mlflow.active_run().info.run_id
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def log_figure(figure, artifact_file: str) -> None:
    """Log a matplotlib Figure to the active run as a PNG artifact (90 dpi).

    Parameters
    ----------
    figure : matplotlib.figure.Figure
        The figure; one that pyplot made (and keeps) is closed once logged.
    artifact_file : str
        Its path among the run's artifacts, e.g. "figures/components.png".
    """
    mlflow.log_figure(figure, artifact_file, save_kwargs={"dpi": 90})
    if getattr(figure.canvas, "manager", None) is not None:  # pyplot's: it keeps the figure until closed
        import matplotlib.pyplot as plt  # already imported by whoever made it

        plt.close(figure)


def log_text(text: str, artifact_file: str) -> None:
    """Log a text artifact of the active run.

    Parameters
    ----------
    text : str
        Its content.
    artifact_file : str
        Its path among the run's artifacts, e.g. "config.yaml".
    """
    mlflow.log_text(text, artifact_file)


def set_tags(tags: dict[str, Any]) -> None:
    """Set tags of the active run (values as text).

    Parameters
    ----------
    tags : dict
        Name -> value.
    """
    mlflow.set_tags({key: str(value) for key, value in tags.items()})
