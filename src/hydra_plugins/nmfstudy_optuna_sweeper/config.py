"""The sweeper's config, registered as hydra/sweeper=optuna, with sampler and pruner options.

Keys follow hydra-optuna-sweeper where they overlap (sampler, direction, study_name, storage,
n_trials, n_jobs, max_failure_rate, params). Ours: pruner, report_every, a persistent default
storage, and for studies shared by many workers max_trials, heartbeat_interval, grace_period
(as Optuna's RDBStorage names them) and max_retry. Sampler and pruner options are plain dicts (not
typed dataclasses) so that a preset may add any keyword argument its `_target_` takes.

What the sweeper needs of an application comes through these keys too, never by import: `root`
(the folder of the default storage), `open_storage` (how to open an RDB storage), `check` (a
job's config check) and `tracker` (where the study is recorded besides Optuna; see _tracker.py).
nmfstudy sets them in conf/hydra/sweeper/nmfstudy.yaml, which its presets select.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    """The keys of `hydra.sweeper` (see docs/optuna.md, "Keys")."""

    _target_: str = "hydra_plugins.nmfstudy_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # Keep sampler and pruner as configs: the sweeper reseeds the sampler on resume and hands
    # the pruner's config to each job, which needs its own pruner object.
    _recursive_: bool = False
    # _self_ first, so that the chosen sampler/pruner options are merged over the null fields below
    defaults: List[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": None}])

    # `_target_`-instantiable optuna sampler (hydra/sweeper/sampler=tpe|random|nsgaii|bruteforce|qmc)
    sampler: Any = None
    # `_target_`-instantiable optuna pruner, or null
    # (hydra/sweeper/pruner=median|percentile|hyperband|successive_halving)
    pruner: Any = None
    # maximize | minimize, or a list of them for a multi-objective study (one per name in `objective`)
    direction: Any = "maximize"
    # null: "<hparams_search preset>-<dataset>"; the same name in the same storage resumes the study
    study_name: Optional[str] = None
    # null: sqlite:///<root>/optuna.db; "memory": not persisted (no resume, no pruning)
    storage: Optional[str] = None
    # the project root: the folder of the default storage (optuna.db), given to the tracker for its
    # own default store; null: the folder holding the primary config folder (conf/), read from
    # hydra.runtime.config_sources, which is how nmfstudy's jobs find theirs (leave it null there)
    root: Optional[str] = None
    # dotted path of a function (url, **RDBStorage keyword arguments) -> optuna storage, e.g. one
    # that retries and checks pooled connections; null: optuna.storages.RDBStorage
    open_storage: Optional[str] = None
    # new trials added by this invocation (a resumed study keeps its earlier ones; retries of trials
    # whose worker died come on top)
    n_trials: int = 20
    # trials asked, launched as one batch and told together (set hydra.launcher.n_jobs alike)
    n_jobs: int = 1
    # stop when a batch has a larger share of failed trials (1.0: never stop for failures)
    max_failure_rate: float = 1.0
    # iterations between two intermediate values a job reports (and pruning checks); 0: none
    report_every: int = 10
    # search space in Hydra's override grammar: choice(...), range(...), interval(...),
    # tag(log, interval(...)), int(interval(...)); plain values are fixed overrides
    params: Dict[str, Any] = field(default_factory=dict)
    # cap on the study's trials across all workers (COMPLETE, PRUNED, RUNNING and queued; failed
    # ones are not counted), as Optuna's MaxTrialsCallback; null: no cap, only n_trials per command
    max_trials: Optional[int] = None
    # seconds between two heartbeats of a running trial in the storage (Optuna's RDBStorage name)
    heartbeat_interval: int = 60
    # seconds without a heartbeat after which another worker fails the trial; null: 2 x heartbeat_interval
    grace_period: Optional[int] = None
    # times a trial whose worker died (or was preempted with SIGTERM) is queued again
    max_retry: int = 3
    # dotted path of a function that checks a job's resolved config (a dict, without `hydra`) and
    # raises ValueError with one line: run once on the fixed settings before any trial is asked,
    # so that a mistake outside the search space (objective=foo) stops the study, not every trial
    check: Optional[str] = None
    # seeds each point of the space is fitted on (seed key + 0, 1, ...): a trial fits the point's
    # next seed and is told the mean over its seeds so far; a point with all its seeds is not
    # fitted again (a trial proposing it takes its values, user attr `duplicate_of`)
    seeds: int = 1
    # the config key of a fit's seed (seed i of a point sets it to its value + i)
    seed_key: str = "seed"
    # config keys (dotted) that do not change a fit's result: left out when telling whether a
    # trial repeats a finished fit (params, the command's other settings and the seed)
    fit_ignores: List[str] = field(default_factory=list)
    # `_target_`-instantiable object whose open(study, storage=, settings=, root=) records the study
    # and its trials elsewhere (nmfstudy: an MLflow run per study), see _tracker.py; null: none
    tracker: Any = None


_SAMPLERS = {
    "tpe": "optuna.samplers.TPESampler",
    "random": "optuna.samplers.RandomSampler",
    "nsgaii": "optuna.samplers.NSGAIISampler",
    "bruteforce": "optuna.samplers.BruteForceSampler",
    "qmc": "optuna.samplers.QMCSampler",
}
_PRUNERS = {
    "median": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5, "n_warmup_steps": 20},
    "percentile": {"_target_": "optuna.pruners.PercentilePruner", "percentile": 25.0, "n_startup_trials": 5,
                   "n_warmup_steps": 20},
    "hyperband": {"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 20, "max_resource": "auto",
                  "reduction_factor": 3},
    "successive_halving": {"_target_": "optuna.pruners.SuccessiveHalvingPruner", "min_resource": 20,
                           "reduction_factor": 4},
}

cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="nmfstudy_optuna_sweeper")
for _name, _target in _SAMPLERS.items():
    cs.store(group="hydra/sweeper/sampler", name=_name, node={"_target_": _target, "seed": 0},
             provider="nmfstudy_optuna_sweeper")
for _name, _node in _PRUNERS.items():
    cs.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="nmfstudy_optuna_sweeper")
