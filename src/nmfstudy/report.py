"""An MLflow experiment as a report: the best run per method and k, figures, Optuna studies.

Three steps, so that the middle one can be tested without MLflow:
`collect` reads the runs through MLflow's API into plain `RunRecord`s,
`render` turns records (and a function that fetches a run's artifact) into
PNG figures and one self-contained report.html, and `log_report_run` logs them
as a run of kind `report` in the same experiment. Report runs and the parent
runs of sweeps never enter the tables.
"""
from __future__ import annotations

import ast
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from .study_names import KIND_TAG
from .study_names import PARENT_RUN_TAG as PARENT_TAG

FINISHED = "FINISHED"
NO_SPARSITY = ("", "none", "null")
# Artifacts an Optuna study run may carry, drawn by the sweeper; the history is drawn here when absent.
OPTUNA_FIGURES = ("optimization_history", "param_importances", "slice", "pareto_front", "intermediate_values")
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
        return [t for t in self.trials if t.status == FINISHED and not t.pruned and t.metric(self.objective) is not None]

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


# --- reading MLflow -----------------------------------------------------------------

@dataclass
class Experiment:
    id: str
    name: str
    tracking_uri: str
    runs: list[RunRecord]  # the job runs (kind=run), any status
    study_runs: list[RunRecord]  # Optuna study parents (kind=study)
    n_sweeps: int = 0


def _record(run) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.run_name or "", run.info.status, dict(run.data.params),
                     dict(run.data.metrics), dict(run.data.tags), run.info.start_time or 0)


def _search(client, experiment_id: str, kind: str) -> list[RunRecord]:
    """Every active run of `kind`, page by page."""
    from mlflow.entities import ViewType

    records, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{KIND_TAG}` = '{kind}'",
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        records += [_record(run) for run in page]
        token = page.token
        if not token:
            return records


def collect(client, experiment: str, tracking_uri: str) -> Experiment:
    """The experiment's job runs and study runs; ReportError when it is unknown or holds no job run."""
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage != "active":
        known = sorted(e.name for e in client.search_experiments())
        raise ReportError(f"tracking.experiment={experiment!r}: no such experiment in {tracking_uri}; "
                          f"it has {', '.join(map(repr, known)) or 'none'}")
    runs = _search(client, found.experiment_id, "run")
    if not runs:
        raise ReportError(f"tracking.experiment={experiment!r} has no runs of train.py "
                          f"({KIND_TAG}=run) in {tracking_uri}; nothing to report")
    return Experiment(found.experiment_id, experiment, tracking_uri, runs, _search(client, found.experiment_id, "study"),
                      n_sweeps=len(_search(client, found.experiment_id, "sweep")))


def artifact_fetcher(tracking_uri: str, folder: Path) -> Fetch:
    """fetch(run_id, path): the artifact downloaded under `folder`, or None when the run lacks it."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    def fetch(run_id: str, path: str) -> Path | None:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                       dst_path=str(folder / run_id), tracking_uri=tracking_uri)
        except (MlflowException, OSError):
            return None
        return Path(local) if Path(local).is_file() else None

    return fetch


def ui_base(ui_url: str | None, tracking_uri: str) -> str:
    """Where run links point: `ui_url`, else the tracking server itself, else `mlflow ui`'s default address."""
    if ui_url:
        return ui_url.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return "http://127.0.0.1:5000"


# --- writing ------------------------------------------------------------------------

@dataclass
class Settings:
    rank_by: str = "accuracy"
    ui_url: str = "http://127.0.0.1:5000"
    references: list[dict] = field(default_factory=list)
    title: str | None = None


@dataclass
class Report:
    html: Path
    files: list[Path]  # every file written, report.html first


def render(exp: Experiment, fetch: Fetch, out: Path, settings: Settings) -> Report:
    """Write the figures and report.html into `out`; nothing here talks to MLflow but `fetch`."""
    from . import report_figures as figs
    from .report_html import Page

    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    rank_by = settings.rank_by
    best = best_runs(exp.runs, rank_by)
    colors = figs.label_colors(run.label for run in exp.runs)
    page = Page(exp, settings, best, group_counts(exp.runs))

    def save(figure, name: str) -> Path:
        files.append(figs.save(figure, out / name))
        return files[-1]

    def copy(source: Path, name: str) -> Path:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        files.append(target)
        return target

    complete = [r for r in exp.runs if r.complete(rank_by)]
    if best:
        page.figure("Accuracy against k", save(figs.accuracy_vs_k(best, complete, colors, settings.references),
                                                "accuracy_vs_k.png"),
                    "Lines: the best run of each method and k; faint dots: its other completed runs. "
                    "Stars: reference results, labelled with the accuracy they report.", references=True)
        page.figure("Loss and J_clust against k (the elbow view)",
                    save(figs.elbow(best, complete, colors), "elbow.png"),
                    "J_clust, the mean distance of a sample to its reconstruction or centroid, is comparable "
                    "across methods. Loss is each method's own objective (NMF: Frobenius reconstruction error; "
                    "K-means: inertia), so it is drawn relative to its value at the smallest k: compare shapes. "
                    "Absolute losses are in the table.")
        page.figure("Fit time against k", save(figs.fit_time(best, complete, colors), "fit_time.png"))

    for k, runs in components_by_k(best).items():
        row = []
        for run in runs:
            local = fetch(run.run_id, "figures/components.png")
            row.append((run, copy(local, f"components/{run.label}_k{k}.png") if local else None))
        page.components(k, row)

    sparse = sparse_runs(exp.runs, rank_by)
    if sparse:
        page.figure("Sparsity against accuracy", save(figs.sparsity(sparse, rank_by, colors), "sparsity.png"),
                    "Hoyer's sparseness (0: flat, 1: a single non-zero) of the basis images (sparsity_H) and of "
                    "each component's coefficients (sparsity_W), for every completed NMF run; numbers are k.")

    for i, study in enumerate(studies(exp.study_runs, exp.runs)):
        images = {}
        for name in OPTUNA_FIGURES:
            local = fetch(study.run.run_id, f"optuna/{name}.png")
            if local:
                images[name] = copy(local, f"optuna/study{i}_{name}.png")
        if "optimization_history" not in images and study.trials:
            images["optimization_history"] = save(figs.optimization_history(study), f"optuna/study{i}_history.png")
        page.study(study, images)

    files.insert(0, page.write(out / "report.html"))
    return Report(files[0], files)


def log_report_run(client, store, experiment: str, report: Report, out: Path, tags: dict[str, str]) -> str:
    """Log the report's files as artifacts of a new run of kind `report`; returns its id."""
    import mlflow

    from . import tracking

    name = f"report {datetime.now(timezone.utc):%Y-%m-%d %H:%M}"
    with tracking.run(client, experiment, run_name=name, tags={KIND_TAG: "report", **tags}, store=store) as active:
        for path in report.files:
            folder = path.parent.relative_to(out).as_posix()
            mlflow.log_artifact(str(path), None if folder == "." else folder)
        return active.info.run_id


def build(client, store, experiment: str, out: Path, settings: Settings) -> Report:
    """collect + render, with artifacts downloaded to a temporary folder; nothing is written when
    `settings.rank_by` is no metric of the experiment's runs."""
    exp = collect(client, experiment, store.tracking_uri)
    check_rank_by(exp.runs, settings.rank_by, experiment)
    with tempfile.TemporaryDirectory(prefix="nmfstudy-report-") as tmp:
        return render(exp, artifact_fetcher(store.tracking_uri, Path(tmp)), out, settings)
