"""The names that the Optuna sweeper, the jobs, the tracking and the report share: one place for each.

MLflow tag keys and their values, the study settings' param prefix, the Optuna user attrs that
link a study to its MLflow run, how a run ends, the trial hook (what the sweeper tells a job
about its trial through the job's `trial` config key), and how a run's name shows its overrides.
Names only, in plain Python (standard library only), so that the sweeper plugin can import it
without importing the application. Which process owns a run is `nmfstudy.processes`; links into
the MLflow UI are `nmfstudy.ui_links`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

# --- MLflow run tags -------------------------------------------------------------------------

# What a run is: one job, the parent of a plain sweep, an Optuna study, or a report.
KIND_TAG = "nmfstudy.kind"
KIND_RUN, KIND_SWEEP, KIND_STUDY, KIND_REPORT = "run", "sweep", "study", "report"
# A failed or killed run's error.
ERROR_TAG = "error"
# Which process owns a run (host, pid, the pid's start time), so that any later command can tell a
# dead run from a live one on the same host.
HOST_TAG, PID_TAG, PID_START_TAG = "nmfstudy.host", "nmfstudy.pid", "nmfstudy.pid_start"
# Runs on a tracking server also beat (ms since the epoch), for runs of other machines.
HEARTBEAT_TAG, HEARTBEAT_INTERVAL_TAG = "nmfstudy.heartbeat", "nmfstudy.heartbeat_interval_s"
# What data a job's run was fitted on: a hash of its arrays (its params add dataset and dataset.n_samples).
DATASET_FINGERPRINT_TAG = "dataset_fingerprint"
# MLflow's own: the run a run is nested under, and a run's name.
PARENT_RUN_TAG, RUN_NAME_TAG = "mlflow.parentRunId", "mlflow.runName"

# MLflow's experiment tag that picks what `mlflow ui` shows first: without it, MLflow 3 opens an
# experiment on its GenAI overview ("Traces 0"); "custom_model_development" opens the runs table.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# The runs table's view (columns, order) that the project's links open: the JSON of the experiment
# tag SHARED_VIEW_PREFIX + RUNS_VIEW_KEY, which MLflow's UI loads for `?viewStateShareKey=RUNS_VIEW_KEY`.
SHARED_VIEW_PREFIX, RUNS_VIEW_KEY = "mlflow.sharedViewState.", "nmfstudy"

# An Optuna study's run and its trials' runs.
STUDY_NAME_TAG = "optuna.study_name"
STUDY_KEY_TAG = "optuna.study_key"  # "<study name> @ <storage>": tells two studies of one name apart
TRIAL_NUMBER_TAG, TRIAL_ID_TAG = "optuna.trial_number", "optuna.trial_id"
TRIAL_STATE_TAG = "optuna.state"  # RUNNING, then COMPLETE, PRUNED or FAIL (Optuna's TrialState names)
RETRY_OF_TAG = "optuna.retry_of"  # the number of the trial a retry runs again
PRUNED_AT_TAG = "optuna.pruned_at_iteration"
BEST_PREFIX = "best."  # the study run's best.<param> tags: the best trial's params
BEST_TRIAL_TAG = BEST_PREFIX + "trial_number"

# The study run's params are its settings under this prefix (optuna.direction, optuna.objective, ...),
# its search space under SPACE_PREFIX (optuna.space.k = "range(10, 51, 5)").
SETTING_PREFIX = "optuna."
SPACE_PREFIX = SETTING_PREFIX + "space."

# How a study's or a trial's run ends (MLflow's run statuses).
RUN_FINISHED, RUN_FAILED, RUN_KILLED = "FINISHED", "FAILED", "KILLED"

# --- Optuna user attrs -----------------------------------------------------------------------

# The MLflow run of a study (study user attr) and of a trial (trial user attr).
RUN_ID_ATTR = "mlflow_run_id"

# --- the trial hook --------------------------------------------------------------------------

TRIAL_KEY = "trial"  # the job's config key that carries the hook (null when the run is not a trial)


@dataclass(frozen=True)
class TrialHook:
    """What the sweeper tells a job about its trial, through the job's `trial` config key.

    The job may run in another process or on another machine (joblib, SLURM), so the hook holds
    what is needed to re-open the trial from its storage and to continue its MLflow run.

    Parameters
    ----------
    study_name : str
        The Optuna study.
    number : int
        The trial's number in the study.
    storage : str or None
        The study's RDB storage URL; None when the study is in memory (jobs cannot reach it).
    trial_id : int or None
        The trial's id in the storage (config key `id`); None: looked up from the number.
    run_id : str or None
        The trial's MLflow run, made by the sweeper when the trial started; the job continues it.
    report_every : int
        Iterations between two intermediate values the job reports; 0: none.
    pruner : dict or None
        The pruner's config (`_target_` and keyword arguments); None: no pruning.
    """

    study_name: str
    number: int
    storage: str | None = None
    trial_id: int | None = None
    run_id: str | None = None
    report_every: int = 10
    pruner: Mapping[str, Any] | None = None

    def to_config(self) -> dict[str, Any]:
        """The hook as the `trial` config value (plain types only).

        Returns
        -------
        dict
            `{study_name, storage, number, id, run_id, report_every, pruner}`.
        """
        return {"study_name": self.study_name, "storage": self.storage, "number": self.number, "id": self.trial_id,
                "run_id": self.run_id, "report_every": self.report_every,
                "pruner": dict(self.pruner) if self.pruner else None}

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> TrialHook | None:
        """The hook from a job's `trial` config value, as `to_config` wrote it.

        Parameters
        ----------
        node : mapping or None
            The resolved `trial` config value.

        Returns
        -------
        TrialHook or None
            None when the run is not a trial (`trial` null or empty).

        Raises
        ------
        ValueError
            When `study_name` or `number` is missing.
        """
        if not node:
            return None
        missing = [key for key in ("study_name", "number") if node.get(key) is None]
        if missing:
            raise ValueError(f"{TRIAL_KEY} needs {', '.join(missing)}; got {dict(node)}")
        trial_id = node.get("id")
        return cls(study_name=str(node["study_name"]), number=int(node["number"]), storage=node.get("storage"),
                   trial_id=None if trial_id is None else int(trial_id), run_id=node.get("run_id"),
                   report_every=int(node.get("report_every", 10) or 0),
                   pruner=dict(node["pruner"]) if node.get("pruner") else None)


# --- run names -------------------------------------------------------------------------------

def short_value(text: str) -> str:
    """A value as a run's name shows it: a decimal number to 3 significant digits, anything else as is.

    Parameters
    ----------
    text : str
        The value, as an override writes it ("0.000123456", "10", "nndsvda").

    Returns
    -------
    str
        E.g. "0.000123", "10", "nndsvda".
    """
    try:
        int(text)
        return text
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return f"{number:.3g}"


def short_overrides(overrides: Iterable[str]) -> str:
    """Overrides ("key=value") for a run's name, values shortened by `short_value`; the params keep them whole.

    Parameters
    ----------
    overrides : iterable of str
        E.g. ["method.alpha=0.000123456", "init=random"].

    Returns
    -------
    str
        E.g. "method.alpha=0.000123 init=random".
    """
    parts = []
    for override in overrides:
        key, sep, value = override.partition("=")
        parts.append(f"{key}{sep}{short_value(value)}" if sep else override)
    return " ".join(parts)


# --- what makes a study one experiment -------------------------------------------------------

def _unset(value: Any) -> bool:
    return value is None or str(value).strip().lower() in ("", "none", "null")


def data_label(dataset: Mapping[str, Any]) -> str:
    """A job's data setting in a few characters: the dataset, and whatever makes its data distinct.

    A study records it and adds what follows the dataset's name to its default name, so that
    two data settings never share a study.

    Parameters
    ----------
    dataset : mapping
        The job's `dataset` config: `name`, and `dir`, `image_size`, `n_samples` when set.

    Returns
    -------
    str
        The name; then a folder's own name unless it is the dataset's (``images-cats``, but
        ``mnist`` for ``dataset.dir=../data/mnist``): only the last part of the path, so that
        workers that hold the folder at other places agree; then ``HxW`` for an image size,
        ``n<N>`` for a subsample: ``images-cats-28x28-n500``.
    """
    name = str(dataset.get("name") or "")
    parts = [name]
    folder = dataset.get("dir")
    if not _unset(folder):
        base = Path(str(folder)).expanduser().name
        if base and base != name:
            parts.append(base)
    size = dataset.get("image_size")
    if not _unset(size):
        sides = size if isinstance(size, (list, tuple)) else [size, size]
        parts.append("x".join(str(side) for side in sides))
    if not _unset(dataset.get("n_samples")):
        parts.append(f"n{dataset['n_samples']}")
    return "-".join(parts)
