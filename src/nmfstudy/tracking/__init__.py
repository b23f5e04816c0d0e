"""MLflow: the store, experiments, runs, and what a run logs.

The only package of the library that knows MLflow. The default store is a SQLite
database plus an artifact folder in the project root, so that plain `mlflow ui`
started there shows everything. Callers use the names below (`tracking.run`,
`tracking.log_params`, ...); the modules, one per concern:

- `store`: where runs are logged (`resolve_store`), the store opened ready or refused in one line;
- `experiments`: experiments found or created with the UI's tags, links into the UI and how to start it;
- `reaping`: which process owns a run, and RUNNING runs whose process is gone ended KILLED;
- `heartbeat`: the thread that tags runs on a tracking server with the time;
- `runs`: a job's run (never left RUNNING) and the `log_*` wrappers;
- `parents`: the parent run of a plain sweep;
- `study`: an Optuna study as one MLflow run (the sweeper's tracker, reached through its config);
- `models`, `model_flavor`: a run's fitted estimator as an MLflow model (its pyfunc checks the images),
  its data as an MLflow input; `registry`: a study's best model in the Model Registry (these are
  imported by name: `from nmfstudy.tracking import models`).
"""
from __future__ import annotations

# Tag names callers read through this package (tracking.HOST_TAG, ...), as before it was split.
from nmfstudy.study_names import (
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    HEARTBEAT_INTERVAL_TAG,
    HEARTBEAT_TAG,
    HOST_TAG,
    KIND_STUDY,
    KIND_TAG,
    PARENT_RUN_TAG,
    PID_START_TAG,
    PID_TAG,
    RUN_NAME_TAG,
    RUNS_VIEW_KEY,
    SHARED_VIEW_PREFIX,
)

from .experiments import experiment_id, ui_hint, ui_link
from .heartbeat import Heartbeat
from .parents import (
    PARENT_RUN_FILE,
    best_child,
    end_parent_run,
    read_parent_run_id,
    start_parent_run,
    write_parent_run_id,
)
from .reaping import end_dead_runs, end_dead_runs_in, kill_run, kill_running_children, process_tags, run_alive
from .runs import flatten, log_figure, log_history, log_metrics, log_params, log_text, run, set_tags
from .store import ARTIFACT_DIR, DB_NAME, SQLITE_HEADER, Store, TrackingError, open_store, resolve_store

__all__ = [
    "ARTIFACT_DIR", "DB_NAME", "ERROR_TAG", "EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "HEARTBEAT_INTERVAL_TAG",
    "HEARTBEAT_TAG", "HOST_TAG", "KIND_STUDY", "KIND_TAG", "PARENT_RUN_FILE", "PARENT_RUN_TAG", "PID_START_TAG",
    "PID_TAG", "RUNS_VIEW_KEY", "RUN_NAME_TAG", "SHARED_VIEW_PREFIX", "SQLITE_HEADER", "Heartbeat", "Store",
    "TrackingError", "best_child", "end_dead_runs", "end_dead_runs_in", "end_parent_run", "experiment_id",
    "flatten", "kill_run", "kill_running_children", "log_figure", "log_history", "log_metrics", "log_params",
    "log_text", "open_store", "process_tags", "read_parent_run_id", "resolve_store", "run", "run_alive",
    "set_tags", "start_parent_run", "ui_hint", "ui_link", "write_parent_run_id",
]
