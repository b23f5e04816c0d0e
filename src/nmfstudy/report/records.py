"""What a report is made of, as plain data: run records, Optuna studies, an experiment, settings.

A `RunRecord` holds what the report needs of one MLflow run (params, metrics, tags, status);
the functions here group and rank records (the best run of each method and k, the series of a
metric against k, the trials of a study). Nothing here imports MLflow or matplotlib: `store`
reads the records from MLflow, `render` turns them into figures and a page.
"""
from __future__ import annotations

import ast
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from .. import study_names as names
from .. import ui_links

FINISHED = "FINISHED"
NO_SPARSITY = ("", "none", "null")
# Smaller is better for these objectives (used only when a study does not say its direction).
MINIMIZED = ("loss", "j_clust", "fit_time_s", "n_iter")

#: fetch(run_id, artifact path) -> the artifact as a local file, or None when the run lacks it.
Fetch = Callable[[str, str], "Path | None"]


class ReportError(RuntimeError):
    """Nothing to report on, or a bad report setting.

    Raised for a missing store or experiment, an experiment without runs of train.py, or a
    `report.rank_by` that no completed run has. The message is one line that names the key
    (``tracking.experiment``, ``report.rank_by``, ...) and, where there are any, the allowed values.
    """


@dataclass(frozen=True)
class RunRecord:
    """What the report needs of one MLflow run, as plain data.

    Parameters
    ----------
    run_id : str
        The MLflow run id.
    name : str, default=""
        The run's name.
    status : str, default="FINISHED"
        MLflow's status: FINISHED, FAILED, KILLED, RUNNING, ...
    params : dict of str to str
        The run's params (train.py logs the flattened config: ``method``, ``k``, ``sparsity``, ...).
    metrics : dict of str to float
        The latest value of each metric.
    tags : dict of str to str
        The run's tags (parent run, Optuna trial number and state, error, ...).
    start_time : int, default=0
        Start time in milliseconds since the epoch; orders runs, and breaks ties between them.
    """

    run_id: str
    name: str = ""
    status: str = FINISHED
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    start_time: int = 0

    @property
    def method(self) -> str:
        """The method's name (``method`` or ``method.name`` param), ``"?"`` when it has none."""
        return self.params.get("method") or self.params.get("method.name") or "?"

    @property
    def sparsity(self) -> str:
        """The sparsity variant (``sparsity`` or ``sparsity.name`` param), ``"none"`` when it has none."""
        return self.params.get("sparsity") or self.params.get("sparsity.name") or "none"

    @property
    def label(self) -> str:
        """The run's group: its method, with its sparsity variant when it has one (see `group_label`)."""
        return group_label(self.method, self.sparsity)

    @property
    def k(self) -> int | None:
        """The number of clusters or components, None when the run has no integer ``k`` param."""
        try:
            return int(self.params["k"])
        except (KeyError, ValueError):
            return None

    @property
    def parent_id(self) -> str | None:
        """The id of the run it is nested under (a sweep or an Optuna study), if any."""
        return self.tags.get(names.PARENT_RUN_TAG)

    @property
    def pruned(self) -> bool:
        """Whether Optuna pruned the trial this run belongs to."""
        return self.tags.get(names.TRIAL_STATE_TAG) == "PRUNED"

    @property
    def trial_number(self) -> int | None:
        """The Optuna trial's number, None for a run outside a study."""
        try:
            return int(self.tags[names.TRIAL_NUMBER_TAG])
        except (KeyError, ValueError):
            return None

    def metric(self, name: str) -> float | None:
        """Return the metric's (latest) value.

        Parameters
        ----------
        name : str
            The metric's name.

        Returns
        -------
        float or None
            None when the run lacks the metric or its value is not finite.
        """
        value = self.metrics.get(name)
        return value if value is not None and math.isfinite(value) else None

    def complete(self, rank_by: str) -> bool:
        """Whether the run can count as the best of its method and k.

        A failed, unfinished or pruned run never counts, nor one without k or without a finite score.

        Parameters
        ----------
        rank_by : str
            The metric runs are ranked by.

        Returns
        -------
        bool
            Finished, not pruned, with a k and a finite `rank_by`.
        """
        return self.status == FINISHED and not self.pruned and self.k is not None and self.metric(rank_by) is not None


def group_label(method: str, sparsity: str | None) -> str:
    """Name a group of runs: the method, with its sparsity variant when it has one.

    Parameters
    ----------
    method : str
        The method's name.
    sparsity : str or None
        The sparsity variant; "", "none", "null" and None mean none.

    Returns
    -------
    str
        ``"nmf"``, ``"nmf+l1"``, ``"kmeans"``, ...
    """
    return method if (sparsity or "none") in NO_SPARSITY else f"{method}+{sparsity}"


def best_runs(runs: Iterable[RunRecord], rank_by: str = "accuracy") -> list[RunRecord]:
    """Pick the best run of each method and k.

    Parameters
    ----------
    runs : iterable of RunRecord
        Any runs; only complete ones (see `RunRecord.complete`) count.
    rank_by : str, default="accuracy"
        The metric to maximize.

    Returns
    -------
    list of RunRecord
        The run with the highest `rank_by` of each (label, k), ordered by label then k; of
        equal scores, the earliest run.
    """
    best: dict[tuple[str, int], RunRecord] = {}
    for run in sorted(runs, key=lambda r: r.start_time):  # ties go to the earliest run
        if run.complete(rank_by):
            key = (run.label, run.k)
            if key not in best or run.metric(rank_by) > best[key].metric(rank_by):
                best[key] = run
    return [best[key] for key in sorted(best)]


def rankable_metrics(runs: Iterable[RunRecord]) -> list[str]:
    """List the metrics a report can rank by.

    Parameters
    ----------
    runs : iterable of RunRecord
        The experiment's runs.

    Returns
    -------
    list of str
        Sorted names of the metrics that some complete run has with a finite value.
    """
    return sorted({name for run in runs for name in run.metrics if run.complete(name)})


def check_rank_by(runs: Iterable[RunRecord], rank_by: str, experiment: str) -> None:
    """Check that `rank_by` is a metric some completed run has.

    Without any completed run there is nothing to choose from: the report then says so itself.

    Parameters
    ----------
    runs : iterable of RunRecord
        The experiment's runs.
    rank_by : str
        The metric asked for (``report.rank_by``).
    experiment : str
        The experiment's name, for the message.

    Raises
    ------
    ReportError
        Naming the metrics to choose from, when some completed run exists but none has `rank_by`.
    """
    names = rankable_metrics(runs)
    if names and rank_by not in names:
        raise ReportError(f"report.rank_by must be one of {', '.join(names)} (the metrics of the completed runs "
                          f"of experiment {experiment!r}); got {rank_by!r}")


def group_counts(runs: Iterable[RunRecord]) -> dict[tuple[str, int | None], int]:
    """Count the runs of each method and k, whatever their status.

    Parameters
    ----------
    runs : iterable of RunRecord
        The experiment's runs.

    Returns
    -------
    dict of (str, int or None) to int
        (label, k) -> number of runs.
    """
    counts: dict[tuple[str, int | None], int] = {}
    for run in runs:
        counts[(run.label, run.k)] = counts.get((run.label, run.k), 0) + 1
    return counts


def series(runs: Iterable[RunRecord], metric: str) -> dict[str, list[tuple[int, float]]]:
    """Gather a metric against k, one series per method.

    Parameters
    ----------
    runs : iterable of RunRecord
        The runs to draw (usually the best of each label and k).
    metric : str
        The metric's name.

    Returns
    -------
    dict of str to list of (int, float)
        label -> [(k, value)] sorted by k, for the runs that have a k and a finite `metric`;
        labels in sorted order.
    """
    out: dict[str, list[tuple[int, float]]] = {}
    for run in runs:
        if run.k is not None and run.metric(metric) is not None:
            out.setdefault(run.label, []).append((run.k, run.metric(metric)))
    return {label: sorted(points) for label, points in sorted(out.items())}


def components_by_k(best: Iterable[RunRecord]) -> dict[int, list[RunRecord]]:
    """Group the best runs by k, for the gallery of basis images beside centroids.

    Parameters
    ----------
    best : iterable of RunRecord
        The best run of each label and k (see `best_runs`).

    Returns
    -------
    dict of int to list of RunRecord
        k (ascending) -> the best run of each label at that k; factorizations (runs with
        Hoyer sparsity metrics) before the others, then by label.
    """
    out: dict[int, list[RunRecord]] = {}
    for run in best:
        out.setdefault(run.k, []).append(run)
    parts_first = lambda r: (r.metric("sparsity_H") is None, r.label)  # noqa: E731
    return {k: sorted(rs, key=parts_first) for k, rs in sorted(out.items())}


def sparse_runs(runs: Iterable[RunRecord], rank_by: str = "accuracy") -> list[RunRecord]:
    """Pick the runs for the figure of accuracy against sparseness.

    Parameters
    ----------
    runs : iterable of RunRecord
        The experiment's runs.
    rank_by : str, default="accuracy"
        The metric runs are ranked by; only runs complete for it count.

    Returns
    -------
    list of RunRecord
        The complete runs with a Hoyer sparseness metric (``sparsity_H`` or ``sparsity_W``),
        when at least one of them is a sparse variant; else an empty list (plain NMF alone
        has nothing to compare).

    References
    ----------
    P. O. Hoyer, "Non-negative matrix factorization with sparseness constraints",
    Journal of Machine Learning Research 5, 1457-1469 (2004).
    """
    measured = [r for r in runs if r.complete(rank_by) and (r.metric("sparsity_H") is not None
                                                            or r.metric("sparsity_W") is not None)]
    return measured if any(r.sparsity not in NO_SPARSITY for r in measured) else []


# --- Optuna studies -----------------------------------------------------------------

@dataclass
class Study:
    """An Optuna study as logged in MLflow: its parent run and its trials' runs.

    Parameters
    ----------
    run : RunRecord
        The study's parent run (kind ``study``).
    trials : list of RunRecord
        The runs nested under it, by trial number.
    objective : str
        The metric optimized; the first one of a multi-objective study.
    direction : {"maximize", "minimize"}
        The direction of `objective`.
    """

    run: RunRecord
    trials: list[RunRecord]  # by trial number
    objective: str  # the first objective, for a multi-objective study
    direction: str  # maximize | minimize

    @property
    def name(self) -> str:
        """The study's name: ``optuna.study_name`` (tag or param), else the run's name."""
        return self.run.tags.get(names.STUDY_NAME_TAG) or self.run.params.get(names.STUDY_NAME_TAG) or self.run.name

    def scored(self) -> list[RunRecord]:
        """List the trials that count for the study's best.

        Returns
        -------
        list of RunRecord
            The trials that finished, unpruned, with a finite objective, by trial number.
        """
        return [t for t in self.trials
                if t.status == FINISHED and not t.pruned and t.metric(self.objective) is not None]

    def best_trial(self) -> RunRecord | None:
        """Find the study's best trial.

        Returns
        -------
        RunRecord or None
            The trial the sweeper logged as best (``best.trial_number``), else the scored trial
            with the best objective, else None.
        """
        # The sweeper keeps the best trial in tags (a shared study's best changes); older stores: params.
        number = self.run.tags.get(names.BEST_TRIAL_TAG) or self.run.params.get(names.BEST_TRIAL_TAG)
        logged = [t for t in self.trials if number is not None and str(t.trial_number) == number]
        if logged:
            return logged[0]
        scored = self.scored()
        pick = max if self.direction == "maximize" else min
        return pick(scored, key=lambda t: t.metric(self.objective)) if scored else None

    def best_params(self) -> dict[str, tuple[str, str]]:
        """Tabulate the searched parameters with their best values.

        Returns
        -------
        dict of str to (str, str)
            param -> (search space, best value), sorted by param: the sweeper's
            ``optuna.space.*`` params and ``best.*`` tags when it logged them, else the params
            the trials vary and the best trial's values ("" where unknown).
        """
        params = self.run.params
        space = {k.removeprefix(names.SPACE_PREFIX): v for k, v in params.items() if k.startswith(names.SPACE_PREFIX)}
        best = {k.removeprefix(names.BEST_PREFIX): v for k, v in {**params, **self.run.tags}.items()
                if k.startswith(names.BEST_PREFIX) and k != names.BEST_TRIAL_TAG}
        if not best and (trial := self.best_trial()) is not None:
            keys = set(space) or {key for t in self.trials for key in t.params
                                  if len({u.params.get(key) for u in self.trials}) > 1}
            best = {key: trial.params.get(key, "") for key in keys}
        return {key: (space.get(key, ""), best.get(key, "")) for key in sorted(set(space) | set(best))}


def _objectives(study_run: RunRecord, trials: list[RunRecord]) -> list[str]:
    """Name the objective metrics, in the study's order."""
    named = study_run.params.get(names.SETTING_PREFIX + "objective")
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
    """Tell the first objective's direction: the study's `optuna.direction`, else a guess from its name."""
    given = (study_run.params.get(names.SETTING_PREFIX + "direction") or "").split(",")[0].strip().lower()
    if given in ("maximize", "minimize"):
        return given
    return "minimize" if objective in MINIMIZED else "maximize"


def studies(study_runs: Iterable[RunRecord], runs: Iterable[RunRecord]) -> list[Study]:
    """Pair each Optuna study run with its trials.

    Parameters
    ----------
    study_runs : iterable of RunRecord
        The studies' parent runs (kind ``study``).
    runs : iterable of RunRecord
        The job runs; those nested under a study are its trials.

    Returns
    -------
    list of Study
        By start time, each with its trials ordered by trial number, its objective (the
        sweeper's ``optuna.objective``, else the trials' ``objective`` param, else its
        ``best_*`` metrics) and its direction (the sweeper's ``optuna.direction``, else
        minimize for loss, j_clust, fit_time_s and n_iter and maximize for the others).
    """
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
    """One MLflow experiment's runs, as the report reads them.

    Parameters
    ----------
    id : str
        The experiment's id, for the links into the MLflow UI.
    name : str
        The experiment's name.
    tracking_uri : str
        The store it was read from.
    runs : list of RunRecord
        The job runs (kind ``run``), whatever their status.
    study_runs : list of RunRecord
        The Optuna studies' parent runs (kind ``study``).
    n_sweeps : int, default=0
        How many sweeps (multiruns) the experiment holds.
    best_models : dict of str to str
        Study name -> the version of its registered model at the alias ``best``.
    """

    id: str
    name: str
    tracking_uri: str
    runs: list[RunRecord]  # the job runs (kind=run), any status
    study_runs: list[RunRecord]  # Optuna study parents (kind=study)
    n_sweeps: int = 0
    best_models: dict[str, str] = field(default_factory=dict)


@dataclass
class Settings:
    """What to rank by and how to present it (the ``report`` config group).

    Parameters
    ----------
    rank_by : str, default="accuracy"
        The metric that picks the best run of each method and k.
    ui_url : str, default="http://127.0.0.1:5000"
        Base of the links to runs in the MLflow UI (see `ui_base`).
    references : list of dict
        Published results drawn as stars on the accuracy figure, each with keys ``method``,
        ``k``, ``metric`` (accuracy or hungarian_accuracy), ``value`` and optionally ``source``.
    title : str or None, default=None
        The page's title; None for "nmfstudy report: <experiment>".
    """

    rank_by: str = "accuracy"
    ui_url: str = "http://127.0.0.1:5000"
    references: list[dict] = field(default_factory=list)
    title: str | None = None


def ui_base(ui_url: str | None, tracking_uri: str) -> str:
    """Choose where the report's run links point.

    Parameters
    ----------
    ui_url : str or None
        The address asked for (``report.ui_url``), or None.
    tracking_uri : str
        The store the runs come from.

    Returns
    -------
    str
        `ui_url`, else the tracking server itself when it is one (http or https), else
        ``http://127.0.0.1:5000``, where plain ``mlflow ui`` serves; without a trailing slash.
    """
    return ui_links.ui_base(tracking_uri, ui_url)


# --- data settings ------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class DataSetting:
    """The data a run was fitted on: runs of different data are never ranked together.

    Parameters
    ----------
    dataset : str
        The dataset's name (``dataset`` param), "?" when unknown.
    n_samples : str
        ``dataset.n_samples``, or "all".
    fingerprint : str
        The ``dataset_fingerprint`` tag (a hash of the arrays), "" when unknown.
    """

    dataset: str
    n_samples: str = "all"
    fingerprint: str = ""

    @property
    def label(self) -> str:
        """E.g. "digits, n_samples=1000 (data 3f2a9c1d0b7e)" or "mnist_5k, all samples"."""
        size = "all samples" if self.n_samples == "all" else f"n_samples={self.n_samples}"
        return f"{self.dataset}, {size}" + (f" (data {self.fingerprint[:12]})" if self.fingerprint else "")


def data_setting(run: RunRecord) -> DataSetting:
    """The data setting of a job's run (dataset, number of samples, fingerprint).

    Parameters
    ----------
    run : RunRecord
        The run.

    Returns
    -------
    DataSetting
        Its setting; parts the run does not record are "?", "all" and "".
    """
    n_samples = run.params.get("dataset.n_samples")
    return DataSetting(run.params.get("dataset") or run.params.get("dataset.name") or "?",
                       "all" if n_samples in (None, "", "null", "None") else n_samples,
                       run.tags.get(names.DATASET_FINGERPRINT_TAG, ""))


def by_data(exp: Experiment) -> list[tuple[DataSetting, Experiment]]:
    """Split an experiment by data setting: one part per setting, each with its runs and its studies.

    A study goes with the setting of most of its trials (a study searches one setting); one without
    trials goes with the first setting. Runs that record no data setting (no ``dataset`` param) join
    the experiment's only known setting; with several known settings they get a section of their own.

    Parameters
    ----------
    exp : Experiment
        The experiment.

    Returns
    -------
    list of (DataSetting, Experiment)
        In the order of the settings; one part (the whole experiment) when it has one setting or no runs.
    """
    groups: dict[DataSetting, list[RunRecord]] = {}
    for run in exp.runs:
        groups.setdefault(data_setting(run), []).append(run)
    unknown = DataSetting("?")
    if len(groups) == 2 and unknown in groups:
        # Runs that record no data (made by hand, or failed before logging) join the only known setting.
        known = next(setting for setting in groups if setting != unknown)
        return [(known, exp)]
    if len(groups) <= 1:
        setting = next(iter(groups), DataSetting("?"))
        return [(setting, exp)]
    order = sorted(groups)
    study_runs: dict[DataSetting, list[RunRecord]] = {setting: [] for setting in order}
    for study_run in exp.study_runs:
        trials = Counter(data_setting(r) for r in exp.runs if r.parent_id == study_run.run_id)
        study_runs[trials.most_common(1)[0][0] if trials else order[0]].append(study_run)
    return [(setting, replace(exp, runs=groups[setting], study_runs=study_runs[setting], n_sweeps=0))
            for setting in order]
