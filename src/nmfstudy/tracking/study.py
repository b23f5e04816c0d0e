"""An Optuna study in MLflow: one run per study, shared by every worker, with each trial's run nested under it.

The Optuna sweeper reaches this module through its config only (`hydra.sweeper.tracker`, set in
conf/hydra/sweeper/nmfstudy.yaml): it instantiates `StudyTracker` and opens the study's run with it.

The first worker to open a study creates its run and records the id with the study (user attr
`mlflow_run_id`); the others, and later resumes, find it there. Two workers that start at the
same moment may both create one: the earlier run wins, the other is deleted. A trial's run is
created here when the trial starts, so it exists even when the job dies before logging, and the
job (in any process) continues it by id. MLflow trouble while the study runs is logged, never
fatal: the Optuna storage is the record of the study.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis

from nmfstudy.study_names import (
    BEST_PREFIX,
    BEST_TRIAL_TAG,
    KIND_RUN,
    KIND_STUDY,
    KIND_TAG,
    PARENT_RUN_TAG,
    RETRY_OF_TAG,
    RUN_FAILED,
    RUN_ID_ATTR,
    SETTING_PREFIX,
    STUDY_KEY_TAG,
    STUDY_NAME_TAG,
    TRIAL_ID_TAG,
    TRIAL_NUMBER_TAG,
    TRIAL_STATE_TAG,
)
from nmfstudy.versions import git_tags

from .experiments import experiment_id, ui_link
from .heartbeat import Heartbeat
from .reaping import kill_run, process_tags
from .store import Store, TrackingError, open_store, resolve_store

log = logging.getLogger(__name__)


class StudyTracker:
    """The sweeper's `tracker`: opens each Optuna study as one MLflow run (`StudyRun`).

    Parameters
    ----------
    uri : str or None
        The MLflow store (`tracking.uri`); None: SQLite `mlflow.db` in the root the sweeper gives.
    experiment : str
        The MLflow experiment of the study's run and its trials' runs (`tracking.experiment`).
    heartbeat_interval : float
        Seconds between two heartbeat tags of the study's run on a tracking server; 0: none.
    """

    def __init__(self, uri: str | None, experiment: str, heartbeat_interval: float = 0.0) -> None:
        self.uri, self.experiment, self.heartbeat_interval = uri, experiment, float(heartbeat_interval or 0)

    def open(self, study: Any, *, storage: str, settings: Mapping[str, Any], root: str | Path) -> StudyRun:
        """The study's run, found (the study's user attr) or created, and marked RUNNING.

        Parameters
        ----------
        study : optuna.Study
            The study, opened by the sweeper.
        storage : str
            Where the study is kept, without a password ("memory" for none).
        settings : mapping
            The study's settings (direction, objective, sampler, `space.<param>`, ...): params of a
            new run, under the prefix `optuna.`.
        root : str or Path
            The project folder, where the default store lives.

        Returns
        -------
        StudyRun
            The study's run, RUNNING.

        Raises
        ------
        TrackingError
            When the store or the experiment cannot be used (one line naming tracking.uri or .experiment).
        """
        store = resolve_store(self.uri, root)
        client = open_store(store)
        try:
            experiment = experiment_id(client, store, self.experiment)
        except MlflowException as err:
            raise TrackingError(f"tracking.experiment {self.experiment!r}: {err.message}") from None
        if storage != "memory" and not storage.startswith("sqlite") and store.tracking_uri.startswith("sqlite"):
            log.warning("the study is shared on %s but tracking.uri is a local SQLite store: workers on other "
                        "machines will each log to their own; set tracking.uri=http://HOST:PORT", storage)
        heartbeat = Heartbeat(client, store, self.heartbeat_interval)
        # runs made with create_run get no git tags from MLflow: the study's and its trials' are set here
        git = git_tags(root)
        run_id = _find(client, study, experiment)
        if run_id is None:
            params = {f"{SETTING_PREFIX}{key}": value for key, value in settings.items()}
            run_id = _create(client, study, experiment, f"{study.study_name} @ {storage}", params, heartbeat, git)
        else:
            client.update_run(run_id, status="RUNNING")
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in process_tags().items()])
        heartbeat.add(run_id)
        return StudyRun(client, store, run_id, experiment, study.study_name, heartbeat, git)


def _find(client: MlflowClient, study: Any, experiment: str) -> str | None:
    """The run recorded with the study, if it still exists in `experiment`."""
    run_id = study.user_attrs.get(RUN_ID_ATTR)
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    if run.info.lifecycle_stage != "active" or run.info.experiment_id != experiment:
        log.warning("the study's MLflow run %s is deleted or in another experiment: starting a new one", run_id)
        return None
    return run_id


def _create(client: MlflowClient, study: Any, experiment: str, key: str, params: dict[str, Any],
            heartbeat: Heartbeat, git: dict[str, str]) -> str:
    """A new run for the study, recorded with it; of two made at the same moment, the earlier wins."""
    tags = {KIND_TAG: KIND_STUDY, STUDY_NAME_TAG: study.study_name, STUDY_KEY_TAG: key,
            **process_tags(), **heartbeat.tags(), **git}
    mine = client.create_run(experiment, run_name=f"study {study.study_name}", tags=tags).info.run_id
    rivals = client.search_runs([experiment], f"tags.`{STUDY_KEY_TAG}` = '{key.replace(chr(39), '')}'"
                                f" and tags.`{KIND_TAG}` = '{KIND_STUDY}'", max_results=100)
    winner = min(rivals, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if rivals else mine
    if winner != mine:
        client.delete_run(mine)
        log.info("another worker created the study's MLflow run %s at the same moment: using it", winner)
    else:
        client.log_batch(mine, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    study.set_user_attr(RUN_ID_ATTR, winner)
    return winner


class StudyRun:
    """A study's MLflow run, as this worker holds it: trials' runs start and end here.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    store : Store
        The store.
    run_id : str
        The study's run.
    experiment_id : str
        Its experiment.
    study_name : str
        The study's name, tagged on every trial's run.
    heartbeat : Heartbeat
        The heartbeat of the study's run (stopped by `finish`).
    """

    def __init__(self, client: MlflowClient, store: Store, run_id: str, experiment_id: str, study_name: str,
                 heartbeat: Heartbeat, git: dict[str, str] | None = None) -> None:
        self.client, self.store, self.run_id = client, store, run_id
        self.experiment_id, self.study_name, self.heartbeat = experiment_id, study_name, heartbeat
        self.git = git or {}

    def _safely(self, what: str, action: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return action(*args, **kwargs)
        except Exception as err:
            log.warning("MLflow: %s failed: %s", what, err)
            return None

    def describe(self, best: Any = None) -> str:
        """Where to see the study and its best trial: their runs' names and pages in the MLflow UI.

        Parameters
        ----------
        best : optuna.trial.FrozenTrial or None
            The best trial, if any (its run is its user attr RUN_ID_ATTR).

        Returns
        -------
        str
            "MLflow run 'NAME' (URL); best trial N: run 'NAME' (URL)", with the tracking server's
            address, or `mlflow ui`'s default one.
        """
        line = f"MLflow run {self._name(self.run_id)!r} ({ui_link(self.store, self.experiment_id, self.run_id)})"
        best_run = best.user_attrs.get(RUN_ID_ATTR) if best is not None else None
        if best_run:
            line += (f"; best trial {best.number}: run {self._name(best_run)!r} "
                     f"({ui_link(self.store, self.experiment_id, best_run)})")
        return line

    def _name(self, run_id: str) -> str:
        run = self._safely("reading a run's name", self.client.get_run, run_id)
        return run.info.run_name if run is not None else run_id

    def start_trial(self, number: int, trial_id: int, retry_of: int | None, params: str) -> str | None:
        """Create a trial's run, nested under the study's, tagged RUNNING; the job continues it.

        Parameters
        ----------
        number : int
            The trial's number.
        trial_id : int
            Its id in the Optuna storage.
        retry_of : int or None
            The number of the trial it retries.
        params : str
            Its params as overrides ("k=10 init=random"), for the run's name.

        Returns
        -------
        str or None
            The run's id; None if MLflow failed (the trial runs all the same).
        """
        tags = {PARENT_RUN_TAG: self.run_id, KIND_TAG: KIND_RUN, STUDY_NAME_TAG: self.study_name,
                TRIAL_NUMBER_TAG: str(number), TRIAL_ID_TAG: str(trial_id), TRIAL_STATE_TAG: "RUNNING",
                **process_tags(), **self.heartbeat.tags(), **self.git}
        if retry_of is not None:
            tags[RETRY_OF_TAG] = str(retry_of)
        name = f"trial {number}" + (f" {params}" if params else "")
        run = self._safely("creating a trial's run", self.client.create_run, self.experiment_id, run_name=name,
                           tags=tags)
        if run is None:
            return None
        self._safely("marking the study's run RUNNING", self.client.update_run, self.run_id, status="RUNNING")
        return run.info.run_id

    def end_trial(self, run_id: str, state: str, error: str | None, status: str = RUN_FAILED) -> None:
        """Record a trial's final state; end its run if the job could not.

        Parameters
        ----------
        run_id : str
            The trial's run.
        state : str
            Optuna's state name: COMPLETE, PRUNED or FAIL.
        error : str or None
            Why it failed, tagged on a run ended here.
        status : str
            How a failed trial's run still RUNNING ends: FAILED, or KILLED for a dead or stopped worker.
        """
        self._safely("tagging a trial's run", self.client.set_tag, run_id, TRIAL_STATE_TAG, state)
        if state == "FAIL":
            self._safely("ending a trial's run", kill_run, self.client, run_id, error or "trial failed", status)

    def annotate_trial(self, run_id: str, tags: Mapping[str, str], metrics: Mapping[str, float], end=False) -> None:
        """Add what the sweeper knows (`duplicate_of`, the seeds' mean and spread) to a trial's run.

        Parameters
        ----------
        run_id, tags, metrics, end
            The run, tags and metrics to add, and whether to end it FINISHED (no job ran).
        """
        now, added = get_current_time_millis(), [RunTag(key, str(value)) for key, value in tags.items()]
        self._safely("annotating a trial's run", self.client.log_batch, run_id, tags=added,
                     metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()])
        if end:
            self._safely("ending a trial's run", self.client.set_terminated, run_id, "FINISHED")

    def recovered(self, run_id: str, names: Sequence[str]) -> tuple[Any, list[float] | None] | None:
        """A trial's result read back from its finished run, when its job's return was lost.

        Parameters
        ----------
        run_id : str
            The trial's run.
        names : sequence of str
            The objective's metric names.

        Returns
        -------
        tuple or None
            (TrialState.COMPLETE, values) or (TrialState.PRUNED, None); None when the run did not
            finish (or lacks a metric).
        """
        from optuna.trial import TrialState

        run = self._safely("reading a trial's run", self.client.get_run, run_id)
        if run is None or run.info.status != "FINISHED":
            return None
        if run.data.tags.get(TRIAL_STATE_TAG) == "PRUNED":
            return TrialState.PRUNED, None
        if not all(name in run.data.metrics for name in names):
            return None
        return TrialState.COMPLETE, [float(run.data.metrics[name]) for name in names]

    def finish(self, study: Any, names: Sequence[str], n_params: int, status: str, best: Any = None) -> None:
        """Log the trial counts, the best trial and the plots; end the run unless other workers' trials run.

        Parameters
        ----------
        study : optuna.Study
            The study.
        names : sequence of str
            The objective's metric names (one per direction).
        n_params : int
            How many params are searched (param importances need two).
        status : str
            How this worker's sweep ended: FINISHED, FAILED or KILLED.
        best : optuna.trial.FrozenTrial or None
            The sweeper's best trial; None when no trial completed.
        """
        from optuna.trial import TrialState

        self.heartbeat.stop()
        self._safely("logging the best trial", self._log_best, study, names, best)
        self._safely("logging the plots", self._log_plots, study, names, n_params)
        # This worker's trials are all told by now; queued retries wait for a worker, not in one.
        others = self._safely("listing running trials", study.get_trials, deepcopy=False, states=(TrialState.RUNNING,))
        if others:
            log.info("study %r: %d trial(s) of other workers still running: its MLflow run stays RUNNING",
                     study.study_name, len(others))
            return
        self._safely("ending the study's run", self.client.set_terminated, self.run_id, status)

    def _log_best(self, study: Any, names: Sequence[str], best: Any) -> None:
        """Trial counts and the best values as metrics (step: trials so far), the best params as tags.

        Tags, not params: MLflow params never change, and the best trial of a shared study does.
        """
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counts = {state.name.lower(): sum(t.state == state for t in trials)
                  for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        now, step = get_current_time_millis(), len(trials)
        metrics = [Metric(f"trials_{state}", count, now, step) for state, count in counts.items()]
        tags = []
        if best is not None:
            metrics += [Metric(f"best_{name}", float(value), now, step)
                        for name, value in zip(names, best.values, strict=False)]
            tags = [RunTag(f"{BEST_PREFIX}{key}", str(value)) for key, value in best.params.items()]
            tags.append(RunTag(BEST_TRIAL_TAG, str(best.number)))
            if len(study.directions) > 1:
                metrics.append(Metric("pareto_front_size", len(study.best_trials), now, step))
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)

    def _log_plots(self, study: Any, names: Sequence[str], n_params: int) -> None:
        """The study's plots, as artifacts under optuna/.

        Optuna draws the optimization history and the Pareto front; the slices, the intermediate
        losses and the importances are drawn by `nmfstudy.study_plots`, legible at the report's
        width, the loss drawn as the loss (a maximizing study is told -loss) and the importances
        with the number of trials they rest on.
        """
        import optuna
        from optuna.trial import TrialState
        from optuna.visualization import matplotlib as plots

        from nmfstudy import study_plots

        logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # chatty about categorical axes
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            log.info("no completed trial: no Optuna plots")
            return
        multi = len(study.directions) > 1
        first = {"target": (lambda t: t.values[0]) if multi else None, "target_name": names[0]}
        value = first["target"] or (lambda t: t.value)
        searched = sorted({name for t in complete for name in t.params})
        log_scale = sorted({name for t in complete for name, d in t.distributions.items() if getattr(d, "log", False)})
        makers = {"optimization_history": (True, lambda: plots.plot_optimization_history(study, **first))}
        if searched:
            makers["slice"] = (False, lambda: study_plots.slices(
                {name: [t.params.get(name) for t in complete] for name in searched}, [value(t) for t in complete],
                [t.number for t in complete], names[0], log_scale))
        if n_params >= 2 and len(complete) >= 3:  # importances need variation in at least two params
            makers["param_importances"] = (False, lambda: study_plots.importances(
                optuna.importance.get_param_importances(study, target=first["target"]), len(complete), names[0]))
        if multi:
            makers["pareto_front"] = (True, lambda: plots.plot_pareto_front(study, target_names=list(names)))
        else:
            reported = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
            if reported:
                # pruning.TrialReporter reports -loss to a maximizing study: sign turns it back into the loss
                sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
                makers["intermediate_values"] = (False, lambda: study_plots.intermediate_losses(
                    [(t.number, sorted(t.intermediate_values), [t.intermediate_values[s] for s in
                                                                 sorted(t.intermediate_values)],
                      t.state == TrialState.PRUNED) for t in reported], sign))
        for name, (by_optuna, make) in makers.items():
            try:
                if by_optuna:
                    self._log_plot(make, f"optuna/{name}.png")
                else:
                    self.client.log_figure(self.run_id, make(), f"optuna/{name}.png", save_kwargs={"dpi": 90})
            except Exception as err:
                log.info("skipped optuna/%s.png: %s", name, err)

    def _log_plot(self, make: Callable[[], Any], artifact_file: str) -> None:
        """Draw one plot with Optuna (pyplot) and log it; the global pyplot state is left as it was.

        Optuna draws with pyplot and sets its ggplot style for the whole process: the style lasts
        only inside an rc_context here, and the figure is closed once saved. No backend is forced:
        saving works with any of them, and without a display pyplot picks Agg.
        """
        import matplotlib
        import matplotlib.pyplot as plt
        import numpy as np

        with matplotlib.rc_context(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" notices from optuna.visualization
            figure = np.asarray(make()).ravel()[0].figure
            try:
                width, height = figure.get_size_inches()
                figure.set_size_inches(max(width, 6.4), max(height, 4.8))
                self.client.log_figure(self.run_id, figure, artifact_file,
                                       save_kwargs={"dpi": 90, "bbox_inches": "tight"})
            finally:
                plt.close(figure)
