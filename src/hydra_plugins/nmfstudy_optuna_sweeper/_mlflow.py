"""The study in MLflow: the multirun's parent run becomes the study's run.

nmfstudy.hydra_callbacks.MlflowParentRun creates the parent run before the sweep starts and writes
its id into the sweep folder; every job nests under it. Here, in the sweeper's process, that run
gets the study's settings, its best trial and Optuna's plots, and each child run its final
`optuna.state`. MLflow trouble is logged, never fatal: the Optuna storage is the record of the study.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

log = logging.getLogger(__name__)


class StudyRun:
    def __init__(self, client, run_id: str, study_name: str) -> None:
        self.client, self.run_id, self.study_name = client, run_id, study_name

    @classmethod
    def open(cls, config, study_name: str) -> "StudyRun | None":
        try:
            from nmfstudy import tracking
            from nmfstudy.hydra_callbacks import project_root

            run_id = tracking.read_parent_run_id(config.hydra.sweep.dir)
            if run_id is None:
                log.warning("no MLflow parent run in %s: the study is not logged to MLflow", config.hydra.sweep.dir)
                return None
            store = tracking.resolve_store(config.tracking.uri, project_root(config.hydra))
            return cls(tracking.open_store(store), run_id, study_name)
        except Exception as err:
            log.warning("MLflow: cannot open the parent run, the study is not logged there: %s", err)
            return None

    def _safely(self, what: str, action, *args) -> Any:
        try:
            return action(*args)
        except Exception as err:
            log.warning("MLflow: %s failed: %s", what, err)
            return None

    def start(self, params: dict[str, Any]) -> None:
        def _start():
            from mlflow.entities import Param, RunTag

            tags = {"nmfstudy.kind": "study", "optuna.study_name": self.study_name,
                    "mlflow.runName": f"study {self.study_name}"}
            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                                  tags=[RunTag(k, v) for k, v in tags.items()])

        self._safely("logging the study settings", _start)

    def child_runs(self) -> dict[int, str]:
        """{trial number: run id} of this study's child runs so far."""

        def _find():
            experiment = self.client.get_run(self.run_id).info.experiment_id
            runs = self.client.search_runs([experiment], f"tags.mlflow.parentRunId = '{self.run_id}'",
                                           max_results=50000)
            return {int(r.data.tags["optuna.trial_number"]): r.info.run_id for r in runs
                    if r.data.tags.get("optuna.study_name") == self.study_name
                    and "optuna.trial_number" in r.data.tags}

        return self._safely("finding the trials' runs", _find) or {}

    def set_state(self, run_id: str, state: str) -> None:
        self._safely("tagging a trial's run", self.client.set_tag, run_id, "optuna.state", state)

    def finish(self, study, objective_names: Sequence[str], n_params: int) -> None:
        self._safely("logging the best trial", self._log_best, study, objective_names)
        self._safely("logging the plots", self._log_plots, study, objective_names, n_params)

    def _log_best(self, study, names: Sequence[str]) -> None:
        from mlflow.entities import Metric, Param
        from mlflow.utils.time import get_current_time_millis
        from optuna.trial import TrialState

        counts = {state.name.lower(): 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        for trial in study.get_trials(deepcopy=False):
            if trial.state.name.lower() in counts:
                counts[trial.state.name.lower()] += 1
        now = get_current_time_millis()
        metrics = [Metric(f"trials_{state}", count, now, 0) for state, count in counts.items()]
        params = []
        best = _best_trial(study)
        if best is not None:
            metrics += [Metric(f"best_{name}", float(value), now, 0) for name, value in zip(names, best.values)]
            params = [Param(f"best.{key}", str(value)) for key, value in best.params.items()]
            params.append(Param("best.trial_number", str(best.number)))
            if len(study.directions) > 1:
                metrics.append(Metric("pareto_front_size", len(study.best_trials), now, 0))
        self.client.log_batch(self.run_id, metrics=metrics, params=params)

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
