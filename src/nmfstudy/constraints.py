"""A degenerate fit as a constraint of its Optuna trial, so that the sampler learns to avoid its region.

A fit whose components died (all-zero factors, an empty cluster) or that uses fewer clusters than
asked scores low, but a low score only says "worse"; a constraint says "not this region". The job
sets, on its trial, the constraint values `dead_components` = k - n_live_components and
`unused_clusters` = k - n_clusters_used (Optuna: > 0 violates, <= 0 is feasible) with Optuna's
public `Trial.set_constraint` (Optuna 5; it deprecates the samplers' `constraints_func`). TPE and
NSGA-II read them from every finished trial, and `Study.best_trial` is the best feasible one.

Knows Optuna but neither Hydra nor MLflow; optuna is imported only when a trial is given.
"""
from __future__ import annotations

import logging
from typing import Mapping

from .pruning import job_storage
from .study_names import TrialHook

log = logging.getLogger(__name__)

# constraint name -> the metric that must reach k
DEGENERATE = {"dead_components": "n_live_components", "unused_clusters": "n_clusters_used"}


def degenerate_fit(scores: Mapping[str, float], k: int) -> dict[str, float]:
    """The constraint values of a fit: how many of its k components are dead, how many clusters unused.

    Parameters
    ----------
    scores : mapping
        The run's metrics (`nmfstudy.metrics.evaluate`).
    k : int
        The components (clusters) asked for.

    Returns
    -------
    dict
        Constraint name -> value (> 0: violated), for the metrics the run has.
    """
    return {name: float(k) - float(scores[metric]) for name, metric in DEGENERATE.items() if metric in scores}


def record(hook: TrialHook | None, constraints: Mapping[str, float]) -> bool:
    """Set the constraint values on the job's trial in its storage.

    Parameters
    ----------
    hook : TrialHook or None
        The trial (None: the run is not a trial).
    constraints : mapping
        Constraint name -> value.

    Returns
    -------
    bool
        Whether they were set; False without a trial or an RDB storage, or when the storage failed
        (logged: a lost storage must not fail a finished fit).
    """
    if hook is None or not hook.storage or not constraints:
        return False
    try:
        import optuna

        storage = job_storage(hook.storage)
        study = optuna.load_study(study_name=hook.study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
        trial_id = hook.trial_id
        if trial_id is None:
            study_id = storage.get_study_id_from_name(hook.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, hook.number)
        trial = optuna.trial.Trial(study, trial_id)
        for name, value in constraints.items():
            trial.set_constraint(name, value)
    except Exception as err:
        log.warning("trial %d: cannot record its constraints %s in %s: %s", hook.number, dict(constraints),
                    hook.storage, err)
        return False
    return True
