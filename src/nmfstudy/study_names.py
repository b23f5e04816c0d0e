"""The names that the Optuna sweeper, the jobs, the tracking and the report share: one place for each.

MLflow tag keys and their values, the study settings' param prefix, the Optuna user attrs that
link a study to its MLflow run, how a run ends, the trial hook (what the sweeper tells a job
about its trial through the job's `trial` config key), and the owner of a run or trial (the
process whose identity the owner tags hold). Plain Python (standard library only), so that the
sweeper plugin can import it without importing the application.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
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


# --- the owner of a run or a trial -----------------------------------------------------------

def _process_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (Linux): [state, ppid, ...]; None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> str | None:
    """The start time of a process, which tells a reused process id apart.

    Parameters
    ----------
    pid : int
        A process of this host.

    Returns
    -------
    str or None
        Clock ticks since boot (Linux); None where /proc cannot tell.
    """
    stat = _process_stat(pid)
    return stat[19] if stat and len(stat) > 19 else None


def owner() -> dict[str, str]:
    """This process as the owner of a run or a trial.

    Returns
    -------
    dict
        `{HOST_TAG: host name, PID_TAG: process id, PID_START_TAG: its start time or ""}`.
    """
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: process_start(pid) or ""}


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether a process of this host still runs (and is the one that started at `start`).

    A zombie (killed, not yet reaped by its parent) is dead.

    Parameters
    ----------
    pid : int
        The process id.
    start : str or None
        Its start time as `process_start` gave it; None or "": any process with that id.

    Returns
    -------
    bool
        True while it runs.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user
    stat = _process_stat(pid)
    if stat is None:  # not Linux: the signal's answer is all there is
        return True
    return stat[0] != "Z" and (not start or stat[19] == start)


# --- termination ---------------------------------------------------------------------------


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler preempting or cancelling, `kill`): ends a run KILLED; a sweeper retries its trials.

    `reason` says why, where the process knows (`TERMINATION_REASONS`); the run's error tag shows it.
    """

    reason: str | None = None


# Signals received by `raise_terminated` in this process. A signal handler raises where the main
# thread happens to be; inside a database driver the library's clean-up may then raise an error of
# its own that hides the interrupt (SQLAlchemy's "can't change 'autocommit' now", wrapped by Optuna
# in StorageInternalError), so code that catches storage errors asks `interruption` first.
_terminations: list[int] = []
# Why a signal ends a run, by signal number, where the process knows more than "signal 15" (a SLURM job).
TERMINATION_REASONS: dict[int, str] = {}


class JobInterrupted(RuntimeError):
    """A job that ended without finishing its trial (cancelled, preempted, timed out, killed): retried.

    A launcher returns it as the job's error; the sweeper fails the trial, ends its run KILLED and
    queues a retry, as for a worker that died.
    """


def raise_terminated(signum: int, frame: Any = None) -> None:
    """SIGTERM's handler: record the signal, then raise `Terminated` (as Ctrl-C raises KeyboardInterrupt).

    Parameters
    ----------
    signum : int
        The signal.
    frame : frame or None
        The interrupted frame (unused).

    Raises
    ------
    Terminated
        Always.
    """
    _terminations.append(signum)
    reason = TERMINATION_REASONS.get(signum)
    err = Terminated(f"signal {signum}: {reason}" if reason else f"signal {signum}")
    err.reason = reason
    raise err


def raise_if_terminated() -> None:
    """Raise `Terminated` when this process received SIGTERM that did not end it.

    A signal whose handler ran inside a finalizer or a weakref callback ("Exception ignored in ...")
    or inside a library's clean-up was spent without stopping anything; long loops call this
    between steps, so that the process still stops.

    Raises
    ------
    Terminated
        When `raise_terminated` ran in this process.
    """
    if _terminations:
        raise Terminated(f"signal {_terminations[-1]}")


def interruption(err: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that `err` hides, if any: the one to raise instead of handling `err`.

    Looks through the error's causes and contexts for a KeyboardInterrupt (a `Terminated`), and
    answers a new `Terminated` when none is there but this process received SIGTERM through
    `raise_terminated`: a terminated process must stop, whatever error the signal turned into.

    Parameters
    ----------
    err : BaseException
        An error caught by an ``except Exception`` around a storage or network call.

    Returns
    -------
    KeyboardInterrupt or None
        The interrupt to raise; None when `err` is an ordinary error.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        cause = todo.pop()
        if cause is None or id(cause) in seen:
            continue
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        todo += [cause.__cause__, cause.__context__]
    if _terminations:
        return Terminated(f"signal {_terminations[-1]} (received during: {type(err).__name__})")
    return None


# --- links into the MLflow UI ----------------------------------------------------------------

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
