"""What a report is made of, as plain data: run records, Optuna studies, an experiment, settings.

A `RunRecord` holds what the report needs of one MLflow run (params, metrics, tags, status);
the functions here group and rank records (the best run of each method and k, the series of a
metric against k, the trials of a study). Nothing here imports MLflow or matplotlib: `store`
reads the records from MLflow, `render` turns them into figures and a page.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

PARENT_TAG = "mlflow.parentRunId"
FINISHED = "FINISHED"
NO_SPARSITY = ("", "none", "null")
# Smaller is better for these objectives (used only when a study does not say its direction).
MINIMIZED = ("loss", "j_clust", "fit_time_s", "n_iter")

Fetch = Callable[[str, str], "Path | None"]  # (run_id, artifact path) -> local file, or None when absent


class ReportError(RuntimeError):
    """Nothing to report on (no store, no experiment, no runs); the message names tracking.experiment."""


@dataclass(frozen=True)
class RunRecord:
    """What the report needs of one MLflow run, as plain data."""

    run_id: str
    name: str = ""
    status: str = FINISHED
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    start_time: int = 0

    @property
    def method(self) -> str:
        return self.params.get("method") or self.params.get("method.name") or "?"

    @property
    def sparsity(self) -> str:
        return self.params.get("sparsity") or self.params.get("sparsity.name") or "none"

    @property
    def label(self) -> str:
        return group_label(self.method, self.sparsity)

    @property
    def k(self) -> int | None:
        try:
            return int(self.params["k"])
        except (KeyError, ValueError):
            return None

    @property
    def parent_id(self) -> str | None:
        return self.tags.get(PARENT_TAG)

    @property
    def pruned(self) -> bool:
        return self.tags.get("optuna.state") == "PRUNED"

    @property
    def trial_number(self) -> int | None:
        try:
            return int(self.tags["optuna.trial_number"])
        except (KeyError, ValueError):
            return None

    def metric(self, name: str) -> float | None:
        """The metric's (latest) value, or None when missing or not finite."""
        value = self.metrics.get(name)
        return value if value is not None and math.isfinite(value) else None

    def complete(self, rank_by: str) -> bool:
        """Finished with a score: a failed, unfinished or pruned run never counts as a method's best."""
        return self.status == FINISHED and not self.pruned and self.k is not None and self.metric(rank_by) is not None


def group_label(method: str, sparsity: str | None) -> str:
    """'nmf', 'nmf+l1', 'kmeans': the method, with its sparsity variant when it has one."""
    return method if (sparsity or "none") in NO_SPARSITY else f"{method}+{sparsity}"


def best_runs(runs: Iterable[RunRecord], rank_by: str = "accuracy") -> list[RunRecord]:
    """The run with the highest `rank_by` of each (label, k), ordered by label then k."""
    best: dict[tuple[str, int], RunRecord] = {}
    for run in sorted(runs, key=lambda r: r.start_time):  # ties go to the earliest run
        if run.complete(rank_by):
            key = (run.label, run.k)
            if key not in best or run.metric(rank_by) > best[key].metric(rank_by):
                best[key] = run
    return [best[key] for key in sorted(best)]


def rankable_metrics(runs: Iterable[RunRecord]) -> list[str]:
    """The metrics a report can rank by: those that some completed run has (with a finite value)."""
    return sorted({name for run in runs for name in run.metrics if run.complete(name)})


def check_rank_by(runs: Iterable[RunRecord], rank_by: str, experiment: str) -> None:
    """ReportError naming the metrics to choose from when no completed run has `rank_by`.

    Without any completed run there is nothing to choose from: the report then says so itself.
    """
    names = rankable_metrics(runs)
    if names and rank_by not in names:
        raise ReportError(f"report.rank_by must be one of {', '.join(names)} (the metrics of the completed runs "
                          f"of experiment {experiment!r}); got {rank_by!r}")


def group_counts(runs: Iterable[RunRecord]) -> dict[tuple[str, int | None], int]:
    counts: dict[tuple[str, int | None], int] = {}
    for run in runs:
        counts[(run.label, run.k)] = counts.get((run.label, run.k), 0) + 1
    return counts


def series(runs: Iterable[RunRecord], metric: str) -> dict[str, list[tuple[int, float]]]:
    """label -> [(k, value)] sorted by k, for runs that have `metric`."""
    out: dict[str, list[tuple[int, float]]] = {}
    for run in runs:
        if run.k is not None and run.metric(metric) is not None:
            out.setdefault(run.label, []).append((run.k, run.metric(metric)))
    return {label: sorted(points) for label, points in sorted(out.items())}


def components_by_k(best: Iterable[RunRecord]) -> dict[int, list[RunRecord]]:
    """k -> the best run of each label at that k; factorizations (runs with Hoyer sparsity metrics) first."""
    out: dict[int, list[RunRecord]] = {}
    for run in best:
        out.setdefault(run.k, []).append(run)
    parts_first = lambda r: (r.metric("sparsity_H") is None, r.label)  # noqa: E731
    return {k: sorted(rs, key=parts_first) for k, rs in sorted(out.items())}


def sparse_runs(runs: Iterable[RunRecord], rank_by: str = "accuracy") -> list[RunRecord]:
    """Completed runs with Hoyer sparsity metrics, if any run is a sparse variant; else none."""
    measured = [r for r in runs if r.complete(rank_by) and (r.metric("sparsity_H") is not None
                                                            or r.metric("sparsity_W") is not None)]
    return measured if any(r.sparsity not in NO_SPARSITY for r in measured) else []


# --- Optuna studies -----------------------------------------------------------------

@dataclass
class Study:
    run: RunRecord
    trials: list[RunRecord]  # by trial number
    objective: str  # the first objective, for a multi-objective study
    direction: str  # maximize | minimize

    @property
    def name(self) -> str:
        return self.run.tags.get("optuna.study_name") or self.run.params.get("optuna.study_name") or self.run.name

    def scored(self) -> list[RunRecord]:
        return [t for t in self.trials
                if t.status == FINISHED and not t.pruned and t.metric(self.objective) is not None]

    def best_trial(self) -> RunRecord | None:
        """The trial the sweeper logged as best (`best.trial_number`), else the best scored trial."""
        # The sweeper keeps the best trial in tags (a shared study's best changes); older stores: params.
        number = self.run.tags.get("best.trial_number") or self.run.params.get("best.trial_number")
        logged = [t for t in self.trials if number is not None and str(t.trial_number) == number]
        if logged:
            return logged[0]
        scored = self.scored()
        pick = max if self.direction == "maximize" else min
        return pick(scored, key=lambda t: t.metric(self.objective)) if scored else None

    def best_params(self) -> dict[str, tuple[str, str]]:
        """{param: (search space, best value)}: the sweeper's `optuna.space.*` params and `best.*` tags when
        it logged them, else the params the trials vary and the best trial's values."""
        params = self.run.params
        space = {k.removeprefix("optuna.space."): v for k, v in params.items() if k.startswith("optuna.space.")}
        best = {k.removeprefix("best."): v for k, v in {**params, **self.run.tags}.items()
                if k.startswith("best.") and k != "best.trial_number"}
        if not best and (trial := self.best_trial()) is not None:
            keys = set(space) or {key for t in self.trials for key in t.params
                                  if len({u.params.get(key) for u in self.trials}) > 1}
            best = {key: trial.params.get(key, "") for key in keys}
        return {key: (space.get(key, ""), best.get(key, "")) for key in sorted(set(space) | set(best))}


def _objectives(study_run: RunRecord, trials: list[RunRecord]) -> list[str]:
    """The objective metric names, in the study's order."""
    named = study_run.params.get("optuna.objective")
    if named:
        return named.split(",")
    for text in [t.params.get("objective") for t in trials]:
        if text:
            # train.py logs a list objective as its Python repr, "['accuracy', 'fit_time_s']".
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            return [value] if isinstance(value, str) else [str(v) for v in value]
    return sorted(key.removeprefix("best_") for key in study_run.metrics if key.startswith("best_")) or ["accuracy"]


def _direction(study_run: RunRecord, objective: str) -> str:
    """The first objective's direction: the study's `optuna.direction`, else a guess from the metric's name."""
    given = (study_run.params.get("optuna.direction") or "").split(",")[0].strip().lower()
    if given in ("maximize", "minimize"):
        return given
    return "minimize" if objective in MINIMIZED else "maximize"


def studies(study_runs: Iterable[RunRecord], runs: Iterable[RunRecord]) -> list[Study]:
    """Each Optuna study run with its trial runs (the job runs nested under it)."""
    runs = list(runs)
    out = []
    for study_run in sorted(study_runs, key=lambda r: r.start_time):
        trials = sorted((r for r in runs if r.parent_id == study_run.run_id),
                        key=lambda t: (t.trial_number is None, t.trial_number or 0, t.start_time))
        objective = _objectives(study_run, trials)[0]
        out.append(Study(study_run, trials, objective, _direction(study_run, objective)))
    return out


# --- an experiment, and how to report on it ------------------------------------------

@dataclass
class Experiment:
    id: str
    name: str
    tracking_uri: str
    runs: list[RunRecord]  # the job runs (kind=run), any status
    study_runs: list[RunRecord]  # Optuna study parents (kind=study)
    n_sweeps: int = 0


@dataclass
class Settings:
    rank_by: str = "accuracy"
    ui_url: str = "http://127.0.0.1:5000"
    references: list[dict] = field(default_factory=list)
    title: str | None = None


def ui_base(ui_url: str | None, tracking_uri: str) -> str:
    """Where run links point: `ui_url`, else the tracking server itself, else `mlflow ui`'s default address."""
    if ui_url:
        return ui_url.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return "http://127.0.0.1:5000"
