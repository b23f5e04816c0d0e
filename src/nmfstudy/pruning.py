"""A job's side of an Optuna trial: report the fit's loss, stop a fit the pruner gives up on.

The Optuna sweeper (hydra_plugins.nmfstudy_optuna_sweeper) asks a trial, then launches the job
with `trial={study_name, storage, number, id, report_every, pruner}`. The job may run in another
process (joblib launcher), so it re-opens the trial from the RDB storage by id.

What is reported: every `report_every` iterations, the loss ||X - WH||_F, oriented to the study:
`loss` in a minimizing study, `-loss` in a maximizing one, so that "better" means the same to the
pruner (and to TPE, which ranks pruned trials by their last intermediate value) as it does for the
objective. All trials report on the same iteration grid, so a pruner compares trials at equal
iterations. The pruner thus bets that a fit whose loss lags the others at the same iteration ends
with a worse objective: exact when the objective is the loss, a heuristic for accuracy (the loss
also depends on k and on penalties, so pruning favours large k and weak penalties; see
docs/optuna.md). Multi-objective studies get no intermediate values (Optuna cannot prune them).

Knows Optuna but neither Hydra nor MLflow; optuna is imported only when a trial is given.
"""
from __future__ import annotations

import functools
import importlib
import logging
import math
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

IterationCallback = Callable[[int, float, float], "bool | None"]


def _instantiate(spec: Mapping[str, Any] | None):
    """A pruner from {'_target_': 'optuna.pruners.MedianPruner', **kwargs}; None for none."""
    if not spec:
        return None
    kwargs = {key: value for key, value in spec.items() if key != "_target_"}
    module, _, name = str(spec["_target_"]).rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs)


def open_storage(url: str, attempts: int = 5, **kwargs: Any):
    """Optuna's RDB storage (keyword arguments: RDBStorage's, e.g. heartbeat_interval).

    SQLite waits for a lock (parallel jobs write to one file) instead of failing; a database
    server's pooled connections are checked before use, so a restarted server costs no error.
    Workers started at once on a new database race to create Optuna's tables, and all but one
    fail on a duplicate type or table: the losers try again, and then find the tables made.
    """
    import random
    import time

    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 + random.random())


@functools.lru_cache(maxsize=8)
def job_storage(url: str):
    """One storage per URL and process: in-process jobs of a study then share one connection pool."""
    return open_storage(url)


class TrialReporter:
    """Reports a fit's loss to its Optuna trial and asks the pruner, every `report_every` iterations."""

    def __init__(self, study_name: str, storage: str | None, number: int, trial_id: int | None = None,
                 report_every: int = 10, pruner: Mapping[str, Any] | None = None) -> None:
        self.study_name, self.storage, self.number, self.trial_id = study_name, storage, int(number), trial_id
        self.report_every = int(report_every or 0)
        self.pruner_spec = dict(pruner) if pruner else None
        self.pruned = False
        self.pruned_at: int | None = None
        self._trial = None
        self._sign = 1.0
        self._off = not storage or self.report_every <= 0  # nothing to report to

    @classmethod
    def from_config(cls, trial: Mapping[str, Any] | None) -> "TrialReporter | None":
        """The reporter for the `trial` config key; None when the run is not a trial."""
        if not trial:
            return None
        missing = [key for key in ("study_name", "number") if trial.get(key) is None]
        if missing:
            raise ValueError(f"trial needs {', '.join(missing)}; got {dict(trial)}")
        return cls(trial["study_name"], trial.get("storage"), trial["number"], trial.get("id"),
                   trial.get("report_every", 10), trial.get("pruner"))

    def tags(self) -> dict[str, str]:
        """MLflow tags of the trial's run; `optuna.state` is PRUNED once pruned (the sweeper sets the others)."""
        tags = {"optuna.study_name": self.study_name, "optuna.trial_number": str(self.number)}
        if self.pruned:
            tags.update({"optuna.state": "PRUNED", "optuna.pruned_at_iteration": str(self.pruned_at)})
        return tags

    def wrap(self, callback: IterationCallback | None = None) -> IterationCallback:
        """callback(iteration, loss, elapsed_s) that also reports and returns True when the pruner stops the fit."""

        def reporting(iteration: int, loss: float, elapsed_s: float) -> bool | None:
            stop = callback(iteration, loss, elapsed_s) if callback is not None else None
            if not self._off and iteration % self.report_every == 0 and self.report(iteration, loss):
                return True
            return stop

        return reporting

    def report(self, iteration: int, loss: float) -> bool:
        """Report `loss` at `iteration`; True when the trial should be pruned."""
        trial = self._open()
        if trial is None or not math.isfinite(loss):
            return False
        try:
            trial.report(self._sign * float(loss), iteration)
            if self.pruner_spec is None or not trial.should_prune():
                return False
        except Exception as err:  # a lost storage must not fail the fit; the run still completes
            log.warning("trial %d: reporting to Optuna failed, no more reports: %s", self.number, err)
            self._off = True
            return False
        self.pruned, self.pruned_at = True, iteration
        log.info("trial %d pruned at iteration %d (loss %.6g)", self.number, iteration, loss)
        return True

    def pruned_exception(self) -> Exception:
        import optuna

        return optuna.TrialPruned(f"trial {self.number} pruned at iteration {self.pruned_at}")

    def _open(self):
        if self._trial is not None or self._off:
            return self._trial
        try:
            import optuna

            storage = job_storage(self.storage)
            study = optuna.load_study(study_name=self.study_name, storage=storage,
                                      sampler=optuna.samplers.RandomSampler(), pruner=_instantiate(self.pruner_spec))
            if len(study.directions) > 1:
                self._off = True  # Optuna has no intermediate values for multi-objective studies
                return None
            trial_id = self.trial_id
            if trial_id is None:
                trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, self.number)
            self._trial = optuna.trial.Trial(study, trial_id)
            self._sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        except Exception as err:
            log.warning("trial %d: cannot open it in %s, no reports: %s", self.number, self.storage, err)
            self._off = True
        return self._trial
