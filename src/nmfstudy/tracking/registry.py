"""A study's best model in the Model Registry: registered under the study's name, the alias ``best`` on the best."""
from __future__ import annotations

import time
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

BEST_ALIAS = "best"
# tags of a registered version: the study's objective value there and the trial it came from
VALUE_TAG, TRIAL_TAG, RUN_TAG = "nmfstudy.objective_value", "optuna.trial_number", "nmfstudy.run_id"


def register_best(client: MlflowClient, study_name: str, model: Any, *, value: float, maximize: bool,
                  trial_number: int, run_id: str | None = None) -> str:
    """Register a study trial's model under the study's name and move the alias ``best`` to the best version.

    Every worker that registers a version then points the alias at the best version it can see,
    and repeats while the versions it sees change: the last alias write is made by a worker that
    saw every version registered before it, so concurrent workers never leave ``best`` on a worse
    model.

    Parameters
    ----------
    client : MlflowClient
        A client of the tracking store (whose registry this is).
    study_name : str
        The registered model's name: the Optuna study's.
    model : mlflow.models.model.ModelInfo
        The logged model, as `log_model` returns it.
    value : float
        The trial's objective value.
    maximize : bool
        Whether the study maximizes it.
    trial_number : int
        The trial's number in the study.
    run_id : str or None
        The trial's run; None: the active run.

    Returns
    -------
    str
        The version registered.
    """
    import mlflow

    run_id = run_id or mlflow.active_run().info.run_id
    try:
        client.create_registered_model(study_name, description=f"Best models of the Optuna study {study_name!r}")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # model_id: a tracking server accepts a models:/ source only with the logged model it names
    version = client.create_model_version(study_name, model.model_uri, run_id=run_id, model_id=model.model_id,
                                          tags={VALUE_TAG: repr(float(value)), TRIAL_TAG: str(trial_number),
                                                RUN_TAG: run_id}).version
    seen: set[str] | None = None
    for _ in range(20):
        versions = client.search_model_versions(f"name='{study_name}'")
        now = {v.version for v in versions}
        if now == seen:
            break
        seen = now
        scored = [v for v in versions if VALUE_TAG in v.tags]
        sign = 1.0 if maximize else -1.0  # ties go to the earlier version
        best = max(scored, key=lambda v: (sign * float(v.tags[VALUE_TAG]), -int(v.version)))
        client.set_registered_model_alias(study_name, BEST_ALIAS, best.version)
        time.sleep(0.05)  # let a concurrent registration land before the check that nothing changed
    return str(version)
