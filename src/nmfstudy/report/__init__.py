"""An MLflow experiment as a report: the best run per method and k, figures, Optuna studies.

Three steps, so that the middle one can be used and tested without MLflow:
`collect` reads the runs through MLflow's API into plain `RunRecord`s, `render` turns
records (and a function that fetches a run's artifact) into PNG figures and one
self-contained report.html, and `log_report_run` logs them as a run of kind `report` in the
same experiment; `build` is collect + render. Report runs and the parent runs of sweeps
never enter the tables.

Modules, each importing only those above it:

- `records`: the plain data (RunRecord, Study, Experiment, Settings) and the grouping and
  ranking of runs;
- `figures`: the study's figures, as matplotlib Figures (no pyplot);
- `html`: the page;
- `render`: records -> figures + page;
- `store`: MLflow (collect, artifact_fetcher, log_report_run, build), imported on first use
  of one of its names, so that `import nmfstudy.report` does not import MLflow.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .records import (
    Experiment,
    Fetch,
    ReportError,
    RunRecord,
    Settings,
    Study,
    best_runs,
    studies,
    ui_base,
)
from .render import Report, render

if TYPE_CHECKING:
    from .store import artifact_fetcher, build, collect, log_report_run

_FROM_STORE = ("artifact_fetcher", "build", "collect", "log_report_run")

__all__ = ["Experiment", "Fetch", "Report", "ReportError", "RunRecord", "Settings", "Study", "artifact_fetcher",
           "best_runs", "build", "collect", "log_report_run", "render", "studies", "ui_base"]


def __getattr__(name: str):
    """Import the MLflow side (`store`'s functions) when one of its names is first asked for."""
    if name in _FROM_STORE:
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
