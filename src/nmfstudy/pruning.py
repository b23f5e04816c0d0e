"""A job's side of an Optuna trial: report the fit's loss, stop a fit the pruner gives up on.

The Optuna sweeper (hydra_plugins.nmfstudy_optuna_sweeper) asks a trial, then launches the job
with its `trial` config key (`study_names.TrialHook`: study_name, storage, number, id, run_id,
report_every, pruner). The job may run in another process (joblib launcher), so it re-opens the
trial from the RDB storage by id. `open_storage` is how both sides open that storage (the sweeper
through its `open_storage` key).

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

from .processes import interruption, raise_if_terminated
from .study_names import PRUNED_AT_TAG, STUDY_NAME_TAG, TRIAL_NUMBER_TAG, TRIAL_STATE_TAG, TrialHook

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
    """Open Optuna's RDB storage at `url`, robustly: the sweeper's `open_storage` and the jobs' opener.

    SQLite waits for a lock (parallel jobs write to one file) instead of failing; a database
    server's pooled connections are checked before use, so a restarted server costs no error.
    Workers started at once on a new database race to create Optuna's tables, and all but one
    fail on a duplicate type or table: the losers try again, and then find the tables made.

    Parameters
    ----------
    url : str
        An SQLAlchemy URL: sqlite:///path, postgresql+psycopg://user@host/db, ...
    attempts : int
        Tries when creating the tables collides with another process.
    **kwargs
        Keyword arguments of `optuna.storages.RDBStorage` (heartbeat_interval, grace_period, ...).

    Returns
    -------
    optuna.storages.RDBStorage
        The storage.
    """
    import random
    import time

    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        _check_writable(url.removeprefix("sqlite:///"))
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 + random.random())


def _check_writable(path: str) -> None:
    """An existing SQLite file in a folder that cannot be written opens, then fails at the first trial
    (SQLite writes its journal beside the file): say so before. os.access also answers for root, which
    an immutable folder (chattr +i) or a read-only mount still refuses."""
    import os

    if path in ("", ":memory:") or not os.path.isfile(path):
        return
    folder = os.path.dirname(os.path.abspath(path))
    for where, what in ((folder, "its folder"), (path, "the file")):
        if not os.access(where, os.W_OK):
            raise PermissionError(f"{what} {where} cannot be written (SQLite writes the study and its journal "
                                  "there): make it writable, or point the storage at a file in a writable folder")


@functools.lru_cache(maxsize=8)
def job_storage(url: str):
    """The storage at `url`, one per URL and process: in-process jobs of a study share one connection pool.

    Parameters
    ----------
    url : str
        The storage's URL.

    Returns
    -------
    optuna.storages.RDBStorage
        The storage, opened by `open_storage` on first use.
    """
    return open_storage(url)


class TrialReporter:
    """Reports a fit's loss to its Optuna trial and asks the pruner, every `report_every` iterations.

    Parameters
    ----------
    hook : TrialHook
        The trial, as the sweeper passed it in the job's `trial` config key.
    """

    def __init__(self, hook: TrialHook) -> None:
        self.hook = hook
        self.number, self.report_every = hook.number, int(hook.report_every or 0)
        self.pruner_spec = dict(hook.pruner) if hook.pruner else None
        self.pruned = False
        self.pruned_at: int | None = None
        # whether the study maximizes each objective, once `beats_finished_trials` has read it
        self.maximize: list[bool] | None = None
        self._trial = None
        self._sign = 1.0
        self._off = not hook.storage or self.report_every <= 0  # nothing to report to

    def tags(self) -> dict[str, str]:
        """MLflow tags of the trial's run; the state is PRUNED once pruned (the sweeper sets the others).

        Returns
        -------
        dict
            Study name and trial number; state and iteration once pruned.
        """
        tags = {STUDY_NAME_TAG: self.hook.study_name, TRIAL_NUMBER_TAG: str(self.number)}
        if self.pruned:
            tags.update({TRIAL_STATE_TAG: "PRUNED", PRUNED_AT_TAG: str(self.pruned_at)})
        return tags

    def wrap(self, callback: IterationCallback | None = None) -> IterationCallback:
        """A fit's iteration callback that also reports, and stops the fit when the pruner says so.

        Parameters
        ----------
        callback : callable or None
            `callback(iteration, loss, elapsed_s)`, called first; its answer (True: stop) is kept.

        Returns
        -------
        callable
            `callback(iteration, loss, elapsed_s)` that returns True when the fit should stop.
        """

        def reporting(iteration: int, loss: float, elapsed_s: float) -> bool | None:
            raise_if_terminated()  # a SIGTERM spent where it could not raise (a finalizer) still stops the fit
            stop = callback(iteration, loss, elapsed_s) if callback is not None else None
            if not self._off and iteration % self.report_every == 0 and self.report(iteration, loss):
                return True
            return stop

        return reporting

    def report(self, iteration: int, loss: float) -> bool:
        """Report `loss` at `iteration` to the trial, oriented to the study, and ask the pruner.

        Parameters
        ----------
        iteration : int
            The step of the intermediate value.
        loss : float
            The fit's loss at that iteration.

        Returns
        -------
        bool
            True when the trial should be pruned.
        """
        raise_if_terminated()
        trial = self._open()
        if trial is None or not math.isfinite(loss):
            return False
        try:
            trial.report(self._sign * float(loss), iteration)
            if self.pruner_spec is None or not trial.should_prune():
                return False
        except Exception as err:  # a lost storage must not fail the fit; the run still completes
            stop = interruption(err)
            if stop is not None:  # SIGTERM or Ctrl-C that landed inside the storage call: never swallowed
                raise stop from err
            log.warning("trial %d: reporting to Optuna failed, no more reports: %s", self.number, err)
            self._off = True
            return False
        self.pruned, self.pruned_at = True, iteration
        log.info("trial %d pruned at iteration %d (loss %.6g)", self.number, iteration, loss)
        return True

    def beats_finished_trials(self, values: float | list[float]) -> bool:
        """Whether the trial's objective value(s) beat every trial of the study finished so far.

        With `tracking.figures=final` a trial draws its figures only then: the study's best trial
        always has them (it beat every trial before it), and the others skip the cost. With several
        objectives, "beat" means that no finished trial dominates these values.

        Parameters
        ----------
        values : float or list of float
            The trial's objective value(s), as the job returns them to the sweeper.

        Returns
        -------
        bool
            False only when a finished trial is better; True when none is, or when the study cannot
            be read (an in-memory study, a lost storage): better a figure too many than none.
        """
        if not self.hook.storage:
            return True
        try:
            import optuna

            study = optuna.load_study(study_name=self.hook.study_name, storage=job_storage(self.hook.storage),
                                      sampler=optuna.samplers.RandomSampler())
            finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            maximize = [direction == optuna.study.StudyDirection.MAXIMIZE for direction in study.directions]
        except Exception as err:
            stop = interruption(err)
            if stop is not None:
                raise stop from err
            log.warning("trial %d: cannot read the study in %s, drawing its figures: %s", self.number,
                        self.hook.storage, err)
            return True
        self.maximize = maximize
        mine = _oriented([values] if isinstance(values, (int, float)) else list(values), maximize)
        for trial in finished:
            theirs = _oriented(trial.values, maximize)
            pairs = list(zip(theirs, mine, strict=True))
            if all(a >= b for a, b in pairs) and any(a > b for a, b in pairs):
                return False
        return True

    def pruned_exception(self) -> Exception:
        """The exception a pruned job raises, so that the sweeper tells its trial PRUNED.

        Returns
        -------
        optuna.TrialPruned
            Naming the trial and the iteration.
        """
        import optuna

        return optuna.TrialPruned(f"trial {self.number} pruned at iteration {self.pruned_at}")

    def _open(self):
        if self._trial is not None or self._off:
            return self._trial
        try:
            import optuna

            storage = job_storage(self.hook.storage)
            study = optuna.load_study(study_name=self.hook.study_name, storage=storage,
                                      sampler=optuna.samplers.RandomSampler(), pruner=_instantiate(self.pruner_spec))
            if len(study.directions) > 1:
                self._off = True  # Optuna has no intermediate values for multi-objective studies
                return None
            trial_id = self.hook.trial_id
            if trial_id is None:
                study_id = storage.get_study_id_from_name(self.hook.study_name)
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
            self._trial = optuna.trial.Trial(study, trial_id)
            self._sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        except Exception as err:
            stop = interruption(err)
            if stop is not None:
                raise stop from err
            log.warning("trial %d: cannot open it in %s, no reports: %s", self.number, self.hook.storage, err)
            self._off = True
        return self._trial


def _oriented(values: list[float], maximize: list[bool]) -> list[float]:
    """Values turned so that larger is better for every objective."""
    return [float(value) if up else -float(value) for value, up in zip(values, maximize, strict=True)]
