"""The Sweeper Hydra finds; the work (and the optuna import) lives in _impl, loaded on first use.

Hydra imports every public module of hydra_plugins.* at each start, in every entry point, so
this module stays light.
"""
from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Runs an Optuna study, one Hydra job per trial.

    Parameters
    ----------
    sampler, pruner, direction, study_name, storage, n_trials, n_jobs, max_failure_rate, report_every, params,
    max_trials, heartbeat_interval, grace_period, max_retry, check, root, open_storage, tracker, seeds, seed_key,
    fit_ignores
        The keys of `hydra.sweeper` (config.OptunaSweeperConf documents each).
    """

    def __init__(self, sampler: Any, pruner: Any, direction: Any, study_name: Optional[str], storage: Optional[str],
                 n_trials: int, n_jobs: int, max_failure_rate: float, report_every: int, params: Any,
                 max_trials: Optional[int] = None, heartbeat_interval: int = 60, grace_period: Optional[int] = None,
                 max_retry: int = 3, check: Optional[str] = None, root: Optional[str] = None,
                 open_storage: Optional[str] = None, tracker: Any = None, seeds: int = 1, seed_key: str = "seed",
                 fit_ignores: Any = None) -> None:
        from ._impl import OptunaSweeperImpl

        self.sweeper = OptunaSweeperImpl(
            sampler=sampler, pruner=pruner, direction=direction, study_name=study_name, storage=storage,
            n_trials=n_trials, n_jobs=n_jobs, max_failure_rate=max_failure_rate, report_every=report_every,
            params=params, max_trials=max_trials, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
            max_retry=max_retry, check=check, root=root, open_storage=open_storage, tracker=tracker,
            seeds=seeds, seed_key=seed_key, fit_ignores=fit_ignores,
        )

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Hand Hydra's context, the job and the config to the sweeper's work.

        Parameters
        ----------
        hydra_context : HydraContext
            Hydra's context.
        task_function : TaskFunction
            The job.
        config : DictConfig
            The primary config, with `hydra`.
        """
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        """Run the study.

        Parameters
        ----------
        arguments : list of str
            The command line's overrides.

        Returns
        -------
        None
            Results are in the storage (and optimization_results.yaml in the sweep folder).
        """
        return self.sweeper.sweep(arguments)
