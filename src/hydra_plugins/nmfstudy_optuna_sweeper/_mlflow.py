"""The study in MLflow: one run per study, shared by every worker, with each trial's run nested under it.

The first worker to open a study creates its run and records the id with the study (user attr
`mlflow_run_id`); the others, and later resumes, find it there. Two workers that start at the
same moment may both create one: the earlier run wins, the other is deleted. A trial's run is
created here when the trial starts, so it exists even when the job dies before logging, and the
job (in any process) continues it by id. MLflow trouble while the study runs is logged, never
fatal: the Optuna storage is the record of the study.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException

from nmfstudy import tracking
from nmfstudy.hydra_callbacks import project_root

log = logging.getLogger(__name__)

STUDY_RUN_ATTR = "mlflow_run_id"


class StudyRun:
    def __init__(self, client, store, run_id: str, experiment_id: str, study_name: str,
                 heartbeat: tracking.Heartbeat) -> None:
        self.client, self.store, self.run_id = client, store, run_id
        self.experiment_id, self.study_name, self.heartbeat = experiment_id, study_name, heartbeat

    @classmethod
    def open(cls, config, study, storage_label: str, params: dict[str, Any]) -> "StudyRun":
        """The study's run, found or created; raises tracking.TrackingError when the store cannot be used."""
        store = tracking.resolve_store(config.tracking.uri, project_root(config.hydra))
        client = tracking.open_store(store)
        try:
            experiment_id = tracking.experiment_id(client, store, config.tracking.experiment)
        except MlflowException as err:
            raise tracking.TrackingError(f"tracking.experiment {config.tracking.experiment!r}: {err.message}") from None
        heartbeat = tracking.Heartbeat(client, store, config.tracking.get("heartbeat_interval") or 0)
        key = f"{study.study_name} @ {storage_label}"
        run_id = cls._find(client, study, experiment_id)
        if run_id is None:
            run_id = cls._create(client, study, experiment_id, key, params, heartbeat)
        else:
            client.update_run(run_id, status="RUNNING")
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tracking.process_tags().items()])
        heartbeat.add(run_id)
        return cls(client, store, run_id, experiment_id, study.study_name, heartbeat)

    @staticmethod
    def _find(client, study, experiment_id: str) -> str | None:
        run_id = study.user_attrs.get(STUDY_RUN_ATTR)
        if not run_id:
            return None
        try:
            run = client.get_run(run_id)
        except MlflowException:
            return None
        if run.info.lifecycle_stage != "active" or run.info.experiment_id != experiment_id:
            log.warning("the study's MLflow run %s is deleted or in another experiment: starting a new one", run_id)
            return None
        return run_id

    @staticmethod
    def _create(client, study, experiment_id: str, key: str, params: dict[str, Any],
                heartbeat: tracking.Heartbeat) -> str:
        tags = {tracking.KIND_TAG: "study", "optuna.study_name": study.study_name, "optuna.study_key": key,
                **tracking.process_tags(), **heartbeat.tags()}
        mine = client.create_run(experiment_id, run_name=f"study {study.study_name}", tags=tags).info.run_id
        rivals = client.search_runs([experiment_id], f"tags.`optuna.study_key` = '{key.replace(chr(39), '')}'"
                                    f" and tags.`{tracking.KIND_TAG}` = 'study'", max_results=100)
        winner = min(rivals, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if rivals else mine
        if winner != mine:
            client.delete_run(mine)
            log.info("another worker created the study's MLflow run %s at the same moment: using it", winner)
        else:
            client.log_batch(mine, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        study.set_user_attr(STUDY_RUN_ATTR, winner)
        return winner

    def _safely(self, what: str, action, *args, **kwargs) -> Any:
        try:
            return action(*args, **kwargs)
        except Exception as err:
            log.warning("MLflow: %s failed: %s", what, err)
            return None

    def link(self) -> str:
        """The run's page in the MLflow UI (the tracking server's, or `mlflow ui`'s default address)."""
        uri = self.store.tracking_uri
        base = uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"
        return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def start_trial(self, number: int, trial_id: int, retry_of: int | None, params: str) -> str | None:
        """Create the trial's run, nested under the study's; the job continues it. None if MLflow failed."""
        tags = {"mlflow.parentRunId": self.run_id, tracking.KIND_TAG: "run", "optuna.study_name": self.study_name,
                "optuna.trial_number": str(number), "optuna.trial_id": str(trial_id), "optuna.state": "RUNNING",
                **tracking.process_tags(), **self.heartbeat.tags()}
        if retry_of is not None:
            tags["optuna.retry_of"] = str(retry_of)
        name = f"trial {number}" + (f" {params}" if params else "")
        run = self._safely("creating a trial's run", self.client.create_run, self.experiment_id, run_name=name,
                           tags=tags)
        if run is None:
            return None
        self._safely("marking the study's run RUNNING", self.client.update_run, self.run_id, status="RUNNING")
        return run.info.run_id

    def end_trial(self, run_id: str, state: str, error: str | None, status: str = "FAILED") -> None:
        """Record the trial's final state; end its run if the job could not (as `status` for a failure)."""
        self._safely("tagging a trial's run", self.client.set_tag, run_id, "optuna.state", state)
        if state == "FAIL":
            self._safely("ending a trial's run", tracking.kill_run, self.client, run_id, error or "trial failed", status)

    def recovered(self, run_id: str, names: Sequence[str]):
        """(state, values) from a trial's finished run when its job's return was lost; None if it did not finish."""
        from optuna.trial import TrialState

        run = self._safely("reading a trial's run", self.client.get_run, run_id)
        if run is None or run.info.status != "FINISHED":
            return None
        if run.data.tags.get("optuna.state") == "PRUNED":
            return TrialState.PRUNED, None
        if not all(name in run.data.metrics for name in names):
            return None
        return TrialState.COMPLETE, [float(run.data.metrics[name]) for name in names]

    def finish(self, study, objective_names: Sequence[str], n_params: int, status: str) -> None:
        """Log the best trial and the plots; end the run unless other workers' trials still run."""
        from optuna.trial import TrialState

        self.heartbeat.stop()
        self._safely("logging the best trial", self._log_best, study, objective_names)
        self._safely("logging the plots", self._log_plots, study, objective_names, n_params)
        # This worker's trials are all told by now; queued retries wait for a worker, not in one.
        others = self._safely("listing running trials", study.get_trials, deepcopy=False, states=(TrialState.RUNNING,))
        if others:
            log.info("study %r: %d trial(s) of other workers still running: its MLflow run stays RUNNING",
                     study.study_name, len(others))
            return
        self._safely("ending the study's run", self.client.set_terminated, self.run_id, status)

    def _log_best(self, study, names: Sequence[str]) -> None:
        """Trial counts and the best values as metrics (step: trials so far), the best params as tags.

        Tags, not params: MLflow params never change, and the best trial of a shared study does.
        """
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counts = {state.name.lower(): sum(t.state == state for t in trials)
                  for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        now, step = get_current_time_millis(), len(trials)
        metrics = [Metric(f"trials_{state}", count, now, step) for state, count in counts.items()]
        tags = []
        best = _best_trial(study)
        if best is not None:
            metrics += [Metric(f"best_{name}", float(value), now, step) for name, value in zip(names, best.values, strict=False)]
            tags = [RunTag(f"best.{key}", str(value)) for key, value in best.params.items()]
            tags.append(RunTag("best.trial_number", str(best.number)))
            if len(study.directions) > 1:
                metrics.append(Metric("pareto_front_size", len(study.best_trials), now, step))
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)

    def _log_plots(self, study, names: Sequence[str], n_params: int) -> None:
        import warnings

        import matplotlib

        matplotlib.use("Agg")
        logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # chatty about categorical axes
        import matplotlib.pyplot as plt
        import numpy as np
        from optuna.trial import TrialState
        from optuna.visualization import matplotlib as plots

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            log.info("no completed trial: no Optuna plots")
            return
        multi = len(study.directions) > 1
        first = {"target": (lambda t: t.values[0]) if multi else None, "target_name": names[0]}
        makers = {"optimization_history": lambda: plots.plot_optimization_history(study, **first),
                  "slice": lambda: plots.plot_slice(study, **first)}
        if n_params >= 2 and len(complete) >= 3:  # fANOVA needs variation in at least two params
            makers["param_importances"] = lambda: plots.plot_param_importances(study, **first)
        if multi:
            makers["pareto_front"] = lambda: plots.plot_pareto_front(study, target_names=list(names))
        elif any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
            makers["intermediate_values"] = lambda: plots.plot_intermediate_values(study)
        for name, make in makers.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "experimental" notices from optuna.visualization
                    axes = make()
                figure = np.asarray(axes).ravel()[0].figure
                figure.set_size_inches(max(figure.get_size_inches()[0], 6.4), max(figure.get_size_inches()[1], 4.8))
                self.client.log_figure(self.run_id, figure, f"optuna/{name}.png", save_kwargs={"dpi": 90,
                                                                                               "bbox_inches": "tight"})
                plt.close(figure)
            except Exception as err:
                log.info("skipped optuna/%s.png: %s", name, err)


def _best_trial(study):
    """The best trial; for several objectives, the Pareto-optimal trial best in the first one."""
    try:
        if len(study.directions) == 1:
            return study.best_trial
        front = study.best_trials
    except ValueError:  # no completed trial
        return None
    if not front:
        return None
    sign = 1.0 if study.directions[0].name == "MINIMIZE" else -1.0
    return min(front, key=lambda t: sign * t.values[0])
