"""What the sweeper needs of its `tracker`: a record of the study and its trials besides Optuna's.

`hydra.sweeper.tracker` is a `_target_` config; the sweeper instantiates it once per sweep and
opens the study with it. The Optuna storage stays the record of the study: a tracker's trouble
while trials run should be logged, not raised. nmfstudy's tracker is
`nmfstudy.tracking.study.StudyTracker` (one MLflow run per study, a nested run per trial).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence


class TrackedStudy(Protocol):
    """A study as its tracker holds it for this worker."""

    def describe(self, best: Any = None) -> str:
        """Where to see the study and its best trial (one line for the log).

        Parameters
        ----------
        best : optuna.trial.FrozenTrial or None
            The best trial, if any.

        Returns
        -------
        str
            E.g. "MLflow run ID (URL)".
        """

    def start_trial(self, number: int, trial_id: int, retry_of: int | None, params: str) -> str | None:
        """Record a trial that starts; its job continues the record (the trial hook's `run_id`).

        Parameters
        ----------
        number : int
            The trial's number.
        trial_id : int
            Its id in the storage.
        retry_of : int or None
            The number of the trial it retries.
        params : str
            Its params as overrides, for the record's name.

        Returns
        -------
        str or None
            The record's id; None when it could not be made.
        """

    def end_trial(self, run_id: str, state: str, error: str | None, status: str) -> None:
        """Record a trial's final state, and end its record when the job could not.

        Parameters
        ----------
        run_id : str
            The record `start_trial` returned.
        state : str
            Optuna's state name: COMPLETE, PRUNED or FAIL.
        error : str or None
            Why it failed.
        status : str
            How a failed trial's record ends: FAILED, or KILLED for a dead or stopped worker.
        """

    def annotate_trial(self, run_id: str, tags: Mapping[str, str], metrics: Mapping[str, float],
                       end: bool = False) -> None:
        """Optional: add tags and metrics to a trial's record, and end it when no job ran.

        The sweeper calls it, when the tracker has it, for a trial that took the result of a
        finished fit (tags `duplicate_of`, `duplicate_of_run`; `end`) and for the mean and spread
        over a point's seeds.

        Parameters
        ----------
        run_id : str
            The trial's record.
        tags : mapping
            Tag name -> text.
        metrics : mapping
            Metric name -> value.
        end : bool
            Whether to end the record (finished).
        """

    def recovered(self, run_id: str, names: Sequence[str]) -> tuple[Any, list[float] | None] | None:
        """A trial's result read back from its record, when the launcher lost the job's return.

        Parameters
        ----------
        run_id : str
            The trial's record.
        names : sequence of str
            The objective's metric names.

        Returns
        -------
        tuple or None
            (TrialState, values or None); None when the job did not finish.
        """

    def finish(self, study: Any, names: Sequence[str], n_params: int, status: str, best: Any = None) -> None:
        """Record the study's results once this worker stops.

        Parameters
        ----------
        study : optuna.Study
            The study.
        names : sequence of str
            The objective's metric names.
        n_params : int
            How many params are searched.
        status : str
            How this worker's sweep ended: FINISHED, FAILED or KILLED.
        best : optuna.trial.FrozenTrial or None
            The best trial (for several objectives, the Pareto-optimal one best in the first).
        """


class StudyTracker(Protocol):
    """What `hydra.sweeper.tracker` instantiates to."""

    def open(self, study: Any, *, storage: str, settings: Mapping[str, Any], root: str | Path) -> TrackedStudy:
        """The study's record, found or made.

        Parameters
        ----------
        study : optuna.Study
            The study, opened by the sweeper.
        storage : str
            Where the study is kept, without a password ("memory" for none).
        settings : mapping
            The study's settings: study_name, storage, direction, objective, sampler, pruner,
            max_trials, fixed, and `space.<param>` (the grammar each param is searched with).
        root : str or Path
            The sweeper's `root`, where an application keeps its default stores.

        Returns
        -------
        TrackedStudy
            The study's record.

        Raises
        ------
        RuntimeError or ValueError
            When its store cannot be used: the sweeper stops with the message, before any trial.
        """
