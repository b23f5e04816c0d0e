"""An Optuna study as a Hydra sweep, by ask-and-tell: ask n_jobs trials, launch them as one batch, tell.

Differences from hydra-optuna-sweeper, and why:
- current Optuna (distributions of optuna>=3, public ask-and-tell only), no optuna<3 pin;
- persistent by default (SQLite optuna.db in `root`) and resumable: the same command adds
  n_trials to the same study;
- a worker joins a shared study: the same command started on N machines against one RDB storage
  (PostgreSQL) feeds one study, `max_trials` caps it across workers, and each trial's sampler is
  seeded with seed + trial number, so workers never draw from the same random stream;
- hydra.job.num is the trial number, so job folders of a resumed study never overwrite earlier ones;
- jobs get their trial (the `trial` key, a `TrialHook`) and can report intermediate values, so
  pruning works;
- a failed job is a FAIL trial with its error as user attr `error`, and the study goes on;
- no trial outlives its process as RUNNING: trials beat in the storage while they run; before
  asking, a worker fails the trials of dead workers (same host: process id; any host: heartbeat
  older than grace_period, Optuna's `fail_stale_trials`) and retries them up to `max_retry` times;
  Ctrl-C or SIGTERM marks the unfinished trials FAIL (SIGTERM, a scheduler's preemption, also
  retries them); a job whose process died fails its trial (retried) and the study goes on;
- a `tracker` (nmfstudy's: one MLflow run per study, shared by all workers) records every trial
  when it starts.

The application reaches the sweeper through its config only (root, open_storage, check,
tracker); the sweeper imports nothing of it but the names both share (nmfstudy.study_names).
"""
from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from nmfstudy.processes import (
    JobInterrupted,
    Terminated,
    interruption,
    keep_unraisable_interrupts,
    process_alive,
    process_start,
    raise_if_terminated,
    raise_terminated,
)
from nmfstudy.study_names import (
    RUN_FAILED,
    RUN_FINISHED,
    RUN_ID_ATTR,
    RUN_KILLED,
    TRIAL_KEY,
    TrialHook,
    data_label,
    short_overrides,
    short_value,
)

from . import _dedup, _identity
from ._space import Dimension, parse_search_space, render
from ._storage import Heartbeats, release_interrupted, retrying, safe_url
from ._tracker import TrackedStudy

log = logging.getLogger(__name__)
# Optuna warns on every ask that heartbeats are "supposed to be used with Study.optimize": this
# sweeper records them itself, as optimize does (see _storage.Heartbeats).
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed", category=UserWarning)

DIRECTIONS = ("minimize", "maximize")
IN_FLIGHT = (TrialState.RUNNING, TrialState.WAITING)
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, *IN_FLIGHT)  # what max_trials caps: all but FAIL
# Trial user attrs: the worker that runs it (its host, process id and the process's start time),
# its sampler's seed and its error; study user attr: the objective's metric names.
HOST_ATTR, PID_ATTR, PID_START_ATTR = "worker_host", "worker_pid", "worker_pid_start"
# The trial those worker attrs were written for: Optuna queues a retry with a copy of the failed
# trial's user attrs, so until the worker that pops it writes its own they name the dead worker.
WORKER_TRIAL_ATTR = "worker_trial"
SEED_ATTR, ERROR_ATTR, OBJECTIVE_ATTR = "sampler_seed", "error", "objective"
MEMORY = "memory"


class SweeperError(CompactHydraException, ValueError):
    """A setting or a server the study cannot start with: Hydra prints this one line, no traceback."""


class _ProcessDied(RuntimeError):
    """The job's process ended without a result (killed, out of memory, a lost node)."""


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _describe(spec: dict | None) -> str:
    if not spec:
        return "none"
    args = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k != "_target_")
    return f"{spec['_target_']}({args})"


def _consecutive(jobs: list[tuple[Any, Sequence[str]]]) -> Iterator[list[tuple[Any, Sequence[str]]]]:
    """Runs of jobs with consecutive trial numbers: a launch numbers its jobs from one start index."""
    run: list = []
    for job in jobs:
        if run and job[0].number != run[-1][0].number + 1:
            yield run
            run = []
        run.append(job)
    if run:
        yield run


def _suggest(trial: optuna.Trial, name: str, distribution: Any) -> Any:
    """Optuna's public suggest_* call for a distribution (a retried trial returns its stored value)."""
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step,
                                 log=distribution.log)
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step,
                                   log=distribution.log)
    raise TypeError(f"{name}: cannot suggest from {distribution}")


def _rdb_storage(url: str, **kwargs: Any) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage as it comes: the opener when `open_storage` is null."""
    return optuna.storages.RDBStorage(url, **kwargs)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The study's best trial; for several objectives, the Pareto-optimal trial best in the first one.

    As Optuna's, the best feasible trial (its constraints, e.g. a degenerate fit's, <= 0), or when
    no trial is feasible the best of them all; with several seeds, among each point's trials the
    one with the most seeds only (`_dedup.latest_per_point`).

    Parameters
    ----------
    study : optuna.Study
        The study.

    Returns
    -------
    optuna.trial.FrozenTrial or None
        None when no trial has completed.
    """
    candidates = _dedup.latest_per_point(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    chosen = {t.number for t in candidates}
    feasible = [t for t in candidates if all(v <= 0 for v in t.constraints.values())] or candidates
    if len(study.directions) > 1:
        feasible = [t for t in study.best_trials if t.number in chosen] or feasible
    sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1.0
    return min(feasible, key=lambda t: sign * t.values[0], default=None)


@dataclass
class _Trial:
    """A trial this worker asked: Optuna's handle, its storage id and its tracker's record."""

    trial: optuna.Trial
    trial_id: int
    run_id: str | None
    retry_of: int | None = None
    fit_seed: int | None = None  # the seed its job fits on, once planned

    @property
    def number(self) -> int:
        return self.trial.number


@dataclass
class _Session:
    """One worker's part in a study, from its first ask to its last tell: what every step needs."""

    study: optuna.Study
    storage: Any
    space: dict[str, Dimension]
    fixed: list[str]
    url: str | None  # None: in memory
    names: list[str]  # the objective's metric names
    tracked: TrackedStudy | None
    heartbeats: Heartbeats | None
    told: set[int] = field(default_factory=set)  # trial numbers told by this worker
    exhausted: bool = False  # the sampler has covered the search space
    replicates: _dedup.Replicates | None = None  # what each trial fits (None: every trial fits)


class OptunaSweeperImpl(Sweeper):
    """The sweeper's work; `optuna_sweeper.OptunaSweeper` (what Hydra finds) hands every call here.

    Parameters
    ----------
    sampler, pruner, direction, study_name, storage, n_trials, n_jobs, max_failure_rate, report_every, params,
    max_trials, heartbeat_interval, grace_period, max_retry, check, root, open_storage, tracker, seeds, seed_key,
    fit_ignores
        The keys of `hydra.sweeper` (config.OptunaSweeperConf documents each).
    """

    def __init__(self, *, sampler: Any, pruner: Any, direction: Any, study_name: str | None, storage: str | None,
                 n_trials: int, n_jobs: int, max_failure_rate: float, report_every: int, params: Any,
                 max_trials: int | None = None, heartbeat_interval: int = 60, grace_period: int | None = None,
                 max_retry: int = 3, check: str | None = None, root: str | None = None,
                 open_storage: str | None = None, tracker: Any = None, seeds: int = 1, seed_key: str = "seed",
                 fit_ignores: Any = None) -> None:
        self.sampler_spec = _container(sampler) or {"_target_": "optuna.samplers.TPESampler", "seed": 0}
        self.pruner_spec = _container(pruner) or None
        direction = _container(direction)
        self.directions = [str(d).lower() for d in (direction if isinstance(direction, list) else [direction])]
        # raised by `setup`: Hydra's instantiate would wrap it here as "Error in call to target ...: SweeperError(...)"
        self.settings_error: SweeperError | None = None
        try:
            self._check_settings(direction, n_trials, n_jobs, report_every, max_failure_rate, max_trials,
                                 heartbeat_interval, grace_period, max_retry)
            if seeds < 1:
                raise SweeperError(f"hydra.sweeper.seeds must be >= 1; got {seeds}")
        except SweeperError as err:
            self.settings_error = err
        self.seeds, self.seed_key = int(seeds), str(seed_key)
        self.fit_ignores = [str(key) for key in (_container(fit_ignores) or [])]
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.report_every = report_every
        self.max_trials, self.max_retry = max_trials, max_retry
        self.heartbeat_interval, self.grace_period = int(heartbeat_interval), grace_period
        self.params = _container(params) or {}
        self.check, self.root, self.open_storage = check, root, open_storage
        self.tracker_spec = _container(tracker) or None
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None
        self.host, self.pid = socket.gethostname(), os.getpid()

    def _check_settings(self, direction: Any, n_trials: int, n_jobs: int, report_every: int, max_failure_rate: float,
                        max_trials: int | None, heartbeat_interval: int, grace_period: int | None,
                        max_retry: int) -> None:
        if not self.directions or any(d not in DIRECTIONS for d in self.directions):
            raise SweeperError("hydra.sweeper.direction must be minimize or maximize, or a list of them; "
                               f"got {direction}")
        rules = (("n_trials", n_trials, n_trials >= 0, ">= 0"), ("n_jobs", n_jobs, n_jobs >= 1, ">= 1"),
                 ("report_every", report_every, report_every >= 0, ">= 0 (0: no reports)"),
                 ("max_failure_rate", max_failure_rate, 0.0 <= max_failure_rate <= 1.0, "in [0, 1]"),
                 ("max_trials", max_trials, max_trials is None or max_trials >= 0, ">= 0, or null (no cap)"),
                 ("heartbeat_interval", heartbeat_interval, heartbeat_interval >= 1, ">= 1 (seconds)"),
                 ("grace_period", grace_period, grace_period is None or grace_period > heartbeat_interval,
                  f"> heartbeat_interval ({heartbeat_interval}), or null (twice it)"),
                 ("max_retry", max_retry, max_retry >= 0, ">= 0"))
        for key, value, ok, rule in rules:
            if not ok:
                raise SweeperError(f"hydra.sweeper.{key} must be {rule}; got {value}")

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the config and make the launcher (Hydra calls this before `sweep`).

        Parameters
        ----------
        hydra_context : HydraContext
            Hydra's context (the config loader composes each trial's config).
        task_function : TaskFunction
            The job.
        config : DictConfig
            The primary config, with `hydra`.
        """
        if self.settings_error is not None:
            raise self.settings_error
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    # --- settings --------------------------------------------------------------------

    def _objective_names(self) -> list[str]:
        objective = _container(self.config.get("objective"))
        if objective is None:
            names = ["value"] if len(self.directions) == 1 else [f"value_{i}" for i in range(len(self.directions))]
        else:
            names = [objective] if isinstance(objective, str) else [str(name) for name in objective]
        if len(names) != len(self.directions):
            raise SweeperError(f"hydra.sweeper.direction has {len(self.directions)} direction(s) {self.directions} "
                               f"but objective names {len(names)} metric(s) {names}: give one direction per metric")
        return names

    def _root(self) -> Path:
        """`root`, or the folder holding the primary config folder (Hydra's `main` config source)."""
        if self.root:
            return Path(self.root).expanduser().resolve()
        for source in self.config.hydra.runtime.config_sources:
            if source.provider == "main" and source.schema == "file":
                return Path(source.path).resolve().parent
        return Path.cwd()

    def _storage_url(self) -> str | None:
        """None: in memory. Relative SQLite paths are made absolute, as jobs may run elsewhere (chdir)."""
        if not self.storage:
            return f"sqlite:///{self._root() / 'optuna.db'}"
        if self.storage == MEMORY:
            return None
        if self.storage.startswith("sqlite:///"):
            path = self.storage.removeprefix("sqlite:///")
            if path and path != ":memory:" and not path.startswith("/"):
                return f"sqlite:///{Path(path).resolve()}"
        return self.storage

    def _default_study_name(self) -> str:
        """`<preset>-<dataset>`, then what makes the data distinct (`_data_size`): one study per data setting."""
        choices = self.config.hydra.runtime.choices
        return "-".join(str(c) for c in (choices.get("hparams_search") or "study", choices.get("dataset")) if c) \
            + self._data_size()

    def _data_size(self) -> str:
        """What `data_label` adds to the dataset's name: "-<folder>-<H>x<W>-n<N>" for what is set, else ""."""
        given = [o.partition("=")[2] for o in self.config.hydra.overrides.task
                 if o.lstrip("+~").startswith("dataset.n_samples=")]
        dataset = dict(_container(OmegaConf.select(self.config, "dataset", default=None)) or {})
        dataset["n_samples"] = given[-1] if given else dataset.get("n_samples")
        return data_label(dataset).removeprefix(str(dataset.get("name") or ""))

    def _study_name(self) -> str:
        """The study's name: the command's hydra.sweeper.study_name as given; a preset's, or the default
        (`_default_study_name`), with the data size when dataset.n_samples is set."""
        if not self.study_name:
            return self._default_study_name()
        given = any(o.lstrip("+").startswith("hydra.sweeper.study_name=") for o in self.config.hydra.overrides.hydra)
        size = self._data_size()
        return self.study_name if given or not size or self.study_name.endswith(size) else self.study_name + size

    def _check_fixed_settings(self, fixed: list[str]) -> dict:
        """A job's config with the fixed overrides, checked by the application's `check` before any trial."""
        job = self.hydra_context.config_loader.load_sweep_config(self.config, list(fixed))
        with open_dict(job):
            del job["hydra"]  # its job-level keys (hydra.job.num) exist only once a job runs
        try:
            job = OmegaConf.to_container(job, resolve=True)
            if self.check:
                get_method(self.check)(job)
        except ValueError as err:
            raise SweeperError(str(err)) from None
        return job

    def _open_storage(self, url: str | None) -> Any:
        """The storage, with heartbeats and retries of stale trials (by `open_storage`); one line on failure."""
        if url is None:
            return optuna.storages.InMemoryStorage()
        label = safe_url(url)
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        opener = get_method(self.open_storage) if self.open_storage else _rdb_storage
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat arguments
                retry = RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)
                return opener(url, heartbeat_interval=self.heartbeat_interval, grace_period=self.grace_period,
                              heartbeat_stale_trial_callback=retry)
        except (ImportError, ModuleNotFoundError) as err:
            raise SweeperError(f"hydra.sweeper.storage {label} needs a database driver that is not installed "
                               f"({err}): pip install -e '.[cluster]' and use postgresql+psycopg://...") from None
        except Exception as err:
            first = str(getattr(err, "orig", None) or err).strip().splitlines()[0][:300]
            raise SweeperError(f"hydra.sweeper.storage {label} cannot be used: {first}") from None

    def _open_study(self, name: str, storage: Any, label: str, names: list[str]) -> optuna.Study:
        study = retrying("opening the study", lambda: optuna.create_study(
            study_name=name, storage=storage, directions=self.directions, load_if_exists=True))
        stored = [d.name.lower() for d in study.directions]
        if stored != self.directions:
            raise SweeperError(f"study {name!r} in {label} has directions {stored}, not {self.directions}: "
                               "set another hydra.sweeper.study_name")
        if study.user_attrs.get(OBJECTIVE_ATTR) is None:
            study.set_user_attr(OBJECTIVE_ATTR, names)
        elif list(study.user_attrs[OBJECTIVE_ATTR]) != names:
            raise SweeperError(f"study {name!r} in {label} optimizes {study.user_attrs[OBJECTIVE_ATTR]}, not "
                               f"{names}: set another hydra.sweeper.study_name")
        return study

    def _prepare_study(self, study: optuna.Study, space: dict[str, Dimension], url: str | None) -> list:
        """Sampler and pruner set, the space checked against the study's trials; those trials."""
        study.sampler = instantiate(self.sampler_spec)
        before = study.get_trials(deepcopy=False)
        self._check_space(study.study_name, before, space)
        self._warn_about_sqlite_on_many_machines(url, before)
        study.pruner = instantiate(self.pruner_spec) if self.pruner_spec else optuna.pruners.NopPruner()
        if self.pruner_spec and (len(self.directions) > 1 or url is None):
            log.warning("hydra.sweeper.pruner is ignored: %s", "Optuna cannot prune multi-objective studies"
                        if len(self.directions) > 1 else "jobs cannot reach an in-memory storage")
        return before

    @staticmethod
    def _check_space(name: str, trials: list, space: dict[str, Dimension]) -> None:
        """Fail before asking: Optuna refuses, mid-ask, a param whose kind or choices changed."""
        seen: dict[str, Any] = {}
        for trial in trials:
            seen.update(trial.distributions)
        for key, dim in space.items():
            if key in seen:
                try:
                    optuna.distributions.check_distribution_compatibility(seen[key], dim.distribution)
                except ValueError as err:
                    raise SweeperError(f"hydra.sweeper.params.{key}={dim.text} does not fit study {name!r}, whose "
                                       f"trials have {seen[key]} ({err}): keep it, or set another "
                                       "hydra.sweeper.study_name") from None

    def _warn_about_sqlite_on_many_machines(self, url: str | None, trials: list) -> None:
        hosts = {t.user_attrs.get(HOST_ATTR) for t in trials} - {None, self.host}
        if url and url.startswith("sqlite") and hosts:
            log.warning("hydra.sweeper.storage is SQLite, but workers on %s also wrote to it: SQLite on a shared "
                        "file system is not safe for several machines; use PostgreSQL (postgresql+psycopg://...)",
                        ", ".join(sorted(hosts)))

    def _settings(self, name: str, label: str, names: list[str], fixed: list[str],
                  space: dict[str, Dimension]) -> dict[str, Any]:
        """The study's settings, for its tracker."""
        return {"study_name": name, "storage": label, "direction": ",".join(self.directions),
                "objective": ",".join(names), "sampler": _describe(self.sampler_spec),
                "pruner": _describe(self.pruner_spec), "max_trials": self.max_trials,
                "fixed": " ".join(fixed) or "none", **{f"space.{key}": dim.text for key, dim in space.items()}}

    def _open_tracker(self, study: optuna.Study, label: str, settings: dict[str, Any]) -> TrackedStudy | None:
        """The study's record in the `tracker` (None without one); one line when its store cannot be used."""
        if not self.tracker_spec:
            return None
        tracker = instantiate(self.tracker_spec)
        try:
            return tracker.open(study, storage=label, settings=settings, root=self._root())
        except (RuntimeError, ValueError) as err:
            raise SweeperError(str(err)) from None

    # --- the sweep -------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> None:
        """Run this worker's part of the study: ask, launch and tell until n_trials (or max_trials) are done.

        Parameters
        ----------
        arguments : list of str
            The command line's overrides: sweeps there are searched (replacing `params`' same keys),
            plain values are fixed.
        """
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        try:
            space, fixed = parse_search_space(self.params, arguments, self.hydra_context.config_loader)
        except ValueError as err:
            raise SweeperError(str(err)) from None
        names = self._objective_names()
        job = self._check_fixed_settings(fixed)
        name = self._study_name()
        url = self._storage_url()
        label = safe_url(url) if url else MEMORY
        storage = self._open_storage(url)
        study = self._open_study(name, storage, label, names)
        try:  # one experiment per study: its space, method and data as recorded
            _identity.check(study, label, space, fixed, _identity.setting(job, space))
        except ValueError as err:
            raise SweeperError(str(err)) from None
        before = self._prepare_study(study, space, url)

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        tracked = self._open_tracker(study, label, self._settings(name, label, names, fixed, space))
        log.info("study %r in %s: %d trial(s) so far, adding %d%s; directions %s of %s; sampler %s, seeded "
                 "with seed + trial number; pruner %s; worker %s:%d", name, label, len(before), self.n_trials,
                 f" up to {self.max_trials} in all" if self.max_trials is not None else "", self.directions, names,
                 _describe(self.sampler_spec), _describe(self.pruner_spec), self.host, self.pid)

        heartbeats = Heartbeats(storage, self.heartbeat_interval) if url else None
        session = _Session(study, storage, space, fixed, url, names, tracked, heartbeats,
                           replicates=self._replicates(job, space))
        status = RUN_FAILED
        try:
            self._run_trials(session)
            status = RUN_FINISHED
        except KeyboardInterrupt:
            status = RUN_KILLED
            raise
        finally:
            if heartbeats is not None:
                heartbeats.stop()
            if tracked is not None:
                tracked.finish(study, names, len(space), status, self._best_or_none(study))
        self._report(study, names, sweep_dir)
        if tracked is not None:
            log.info("study %r: %s", name, tracked.describe(self._best_or_none(study)))

    @staticmethod
    def _best_or_none(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
        try:
            return best_trial(study)
        except Exception as err:  # a lost storage: the sweep's own error matters more
            log.warning("cannot read the best trial: %s", err)
            return None

    def _run_trials(self, s: _Session) -> None:
        """Batches of trials until n_trials are done (then the queued retries), the space is covered or
        max_trials is reached."""
        batch: list[_Trial] = []
        try:
            previous = signal.signal(signal.SIGTERM, raise_terminated)
        except ValueError:  # not the main thread
            previous = None
        previous_hook = keep_unraisable_interrupts()  # a Ctrl-C spent in a finalizer is raised below, not lost
        try:
            done = 0
            while not s.exhausted:
                raise_if_terminated()  # a signal spent where it could not raise (a weakref callback) still stops
                if done < self.n_trials:
                    if self._space_complete(s, done):
                        break
                    wanted = self.n_trials - done
                else:  # then the queued retries (its own killed jobs', or another worker's), so that a
                    wanted = self._waiting(s.study) if done else 0  # study ends with none WAITING for nobody
                room = self._room_to_start(s) if wanted > 0 else 0
                if room == 0:
                    break
                batch = [self._start(s) for _ in range(min(self.n_jobs, wanted, room or self.n_jobs))]
                # A retry redoes a trial an earlier command asked for: it adds nothing to n_trials.
                done += sum(item.retry_of is None for item in batch)
                self._run_batch(s, batch)
            raise_if_terminated()
            if s.exhausted:
                log.info("the sampler has covered the whole search space: stopping after %d trial(s)", done)
        except BaseException as err:
            # SIGTERM inside a storage call may surface as the storage's error: still a preemption.
            stop = err if isinstance(err, KeyboardInterrupt) else interruption(err)
            release_interrupted(err)  # a query it cut short may hold SQLite's lock, which the writes below need
            self._fail_untold(s, batch, stop or err)
            if stop is not None and stop is not err:
                raise stop from err
            raise
        finally:
            sys.unraisablehook = previous_hook
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _room_to_start(self, s: _Session) -> int | None:
        """Trials that may start now, once dead workers' trials are failed: None (no cap), or 0 when the
        study has max_trials and none is running; while others' trials run, wait (one may come back)."""
        while True:
            self._clean_up_dead_trials(s)
            room = self._room(s.study)
            if room is None or room > 0:
                return room
            if not self._others_in_flight(s.study):
                log.info("study %r has reached max_trials=%d", s.study.study_name, self.max_trials)
                return 0
            # Stay until the others' trials end: a dead worker's trial comes back as a retry.
            time.sleep(min(self.heartbeat_interval, 2))

    def _run_batch(self, s: _Session, batch: list[_Trial]) -> None:
        """Launch a batch of started trials and tell each its outcome; stop past max_failure_rate.

        A trial that repeats a finished fit takes its result; one that waits for a fit running
        elsewhere (or in this batch) is settled once the batch's own fits are done.
        """
        jobs, waiting, failed = [], [], 0
        for item in batch:
            if self._over_cap(s.study, item.number):
                self._finish(s, item, TrialState.FAIL,
                             note=f"not run: the study reached max_trials={self.max_trials} meanwhile")
                continue
            plan = self._plan(s, item)
            if plan.action == _dedup.WAIT:
                waiting.append(item)
                continue
            failed += self._settle(s, item, plan, jobs)
        failed += self._launch_and_tell(s, jobs)
        for item in waiting:
            jobs = []
            failed += self._settle(s, item, self._await_plan(s, item), jobs)
            failed += self._launch_and_tell(s, jobs)
        if batch and failed / len(batch) > self.max_failure_rate:
            raise SweeperError(f"{failed} of {len(batch)} trials failed, more than "
                               f"hydra.sweeper.max_failure_rate={self.max_failure_rate}; see the warnings above")

    def _overrides(self, s: _Session, item: _Trial) -> list[str]:
        """The trial's job: its params, the fixed overrides (its seed) and its hook."""
        hook = TrialHook(study_name=s.study.study_name, number=item.number, storage=s.url, trial_id=item.trial_id,
                         run_id=item.run_id, report_every=self.report_every, pruner=self.pruner_spec)
        key = TRIAL_KEY if TRIAL_KEY in self.config else f"+{TRIAL_KEY}"
        fixed = [*(dim.override(item.trial.params[name]) for name, dim in s.space.items()), *s.fixed]
        if s.replicates is not None:
            fixed = s.replicates.seed_override(fixed, item.fit_seed, self.seed_key in self.config)
        return [*fixed, f"{key}={render(hook.to_config())}"]

    def _fail_untold(self, s: _Session, batch: list[_Trial], err: BaseException) -> None:
        """Never leave a trial RUNNING: what was asked and not told is a failure.

        A preempted worker's trials (SIGTERM) are queued again; Ctrl-C means stop, so they are not.
        """
        for item in batch:
            if item.number in s.told:
                continue
            try:
                self._finish(s, item, TrialState.FAIL, error=err, retry=isinstance(err, Terminated),
                             status=RUN_KILLED)
            except BaseException as tell_err:  # a second Ctrl-C, a lost storage
                log.error("trial %d left RUNNING: %s", item.number, tell_err)

    # --- dead workers ------------------------------------------------------------------

    def _clean_up_dead_trials(self, s: _Session) -> None:
        """FAIL (and retry) the RUNNING trials whose worker is gone; end their tracked records KILLED."""
        running = retrying("listing running trials",
                           lambda: s.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        dead = self._fail_dead_workers_here(s, running)
        if isinstance(s.storage, optuna.storages.RDBStorage):
            dead += self._fail_stale(s, running, {trial.number for trial, _ in dead})
        for trial, reason in dead:
            log.warning("study %r: trial %d FAIL, %s; retried (up to %d times)", s.study.study_name, trial.number,
                        reason, self.max_retry)
            run_id = trial.user_attrs.get(RUN_ID_ATTR)
            if s.tracked is not None and run_id:
                s.tracked.end_trial(run_id, TrialState.FAIL.name, f"trial {trial.number}: {reason}", status=RUN_KILLED)

    def _fail_dead_workers_here(self, s: _Session, running: list) -> list[tuple[Any, str]]:
        """The running trials of this host whose worker process is gone, told FAIL and retried."""
        dead = []
        for trial in running:
            if not self._worker_gone(trial):
                continue
            host, pid = trial.user_attrs[HOST_ATTR], trial.user_attrs[PID_ATTR]
            try:
                s.study.tell(trial.number, state=TrialState.FAIL)
            except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                continue  # another worker got there first
            self._retry(s, trial.number)
            dead.append((trial, f"its worker, process {pid} on {host}, is gone"))
        return dead

    def _worker_gone(self, trial: optuna.trial.FrozenTrial) -> bool:
        """Whether a running trial's worker is a process of this host (not this one) that is gone.

        Worker attrs copied from another trial (a queued retry, popped but not yet claimed by its
        new worker) say nothing about this one, so they count only when they name this trial;
        trials of studies begun before that attr existed are judged by their host and pid alone.
        """
        attrs = trial.user_attrs
        host, pid, owner = attrs.get(HOST_ATTR), attrs.get(PID_ATTR), attrs.get(WORKER_TRIAL_ATTR, trial.number)
        if host != self.host or pid is None or pid == self.pid or owner != trial.number:
            return False
        return not process_alive(int(pid), attrs.get(PID_START_ATTR) or None)

    def _fail_stale(self, s: _Session, running: list, failed_here: set[int]) -> list[tuple[Any, str]]:
        """Optuna's own check (and its retry callback) for the trials of any host; those it failed."""
        others = {t.number: t for t in running if t.number not in failed_here}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retrying("failing stale trials", lambda: optuna.storages.fail_stale_trials(s.study))
        if not others:
            return []
        # Failed meanwhile without an error of its own: Optuna's stale check, not its worker, did it.
        failed = {t.number for t in s.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                  if not t.user_attrs.get(ERROR_ATTR)}
        grace = self.grace_period or 2 * self.heartbeat_interval
        return [(t, f"no heartbeat for {grace} s from its worker on {t.user_attrs.get(HOST_ATTR)}")
                for n, t in others.items() if n in failed]

    def _retry(self, s: _Session, number: int) -> None:
        """Queue a failed trial again (WAITING), as the storage's stale-trial callback does."""
        callback = getattr(s.storage, "get_heartbeat_stale_trial_callback", lambda: None)()
        if callback is None:
            return
        frozen = s.storage.get_trial(self._trial_id(s, number))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retrying("queueing a retry", lambda: callback(s.study, frozen))

    # --- trials ------------------------------------------------------------------------

    @staticmethod
    def _trial_id(s: _Session, number: int) -> int:
        """A trial's id in the storage, by Optuna's public storage API."""
        study_id = s.storage.get_study_id_from_name(s.study.study_name)
        return s.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def _room(self, study: optuna.Study) -> int | None:
        """How many more trials may start under max_trials (queued retries can always start); None: no cap."""
        if self.max_trials is None:
            return None
        counted = retrying("counting trials", lambda: study.get_trials(deepcopy=False, states=COUNTED))
        waiting = sum(t.state == TrialState.WAITING for t in counted)
        return self.max_trials - len(counted) + waiting

    def _over_cap(self, study: optuna.Study, number: int) -> bool:
        """Two workers may ask at once: the trial with the higher number yields."""
        if self.max_trials is None:
            return False
        counted = study.get_trials(deepcopy=False, states=COUNTED)
        return sum(t.number < number for t in counted) >= self.max_trials

    @staticmethod
    def _waiting(study: optuna.Study) -> int:
        """How many trials are queued (WAITING): retries of failed ones."""
        return len(retrying("listing queued trials",
                            lambda: study.get_trials(deepcopy=False, states=(TrialState.WAITING,))))

    def _others_in_flight(self, study: optuna.Study) -> bool:
        return bool(retrying("listing running trials", lambda: study.get_trials(deepcopy=False, states=IN_FLIGHT)))

    def _start(self, s: _Session) -> _Trial:
        """Ask a trial, suggest its params, start its heartbeat and its tracked record."""
        trial = retrying("asking a trial", s.study.ask)
        seed = None
        if self.sampler_spec.get("seed") is not None:
            # Seeded per trial, not per worker: simultaneous workers never draw the same points,
            # and a trial's draw depends only on the study's history and its number.
            seed = int(self.sampler_spec["seed"]) + trial.number
            s.study.sampler = instantiate({**self.sampler_spec, "seed": seed})
        # each write below is idempotent (a param already suggested keeps its value): all are retried through an outage
        retrying("suggesting the trial's point", lambda: [_suggest(trial, key, dim.distribution)
                                                           for key, dim in s.space.items()])
        trial_id = self._trial_id(s, trial.number)
        if s.heartbeats is not None:
            s.heartbeats.add(trial_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry_of = RetryHeartbeatStaleTrialCallback.retried_trial_number(
                retrying("reading the trial", lambda: s.storage.get_trial(trial_id)))
        run_id = None
        if s.tracked is not None:
            run_id = s.tracked.start_trial(trial.number, trial_id, retry_of,
                                           short_overrides(f"{k}={trial.params[k]}" for k in s.space))
        attrs = {HOST_ATTR: self.host, PID_ATTR: self.pid, PID_START_ATTR: process_start(self.pid) or "",
                 WORKER_TRIAL_ATTR: trial.number, SEED_ATTR: seed, RUN_ID_ATTR: run_id, ERROR_ATTR: None}
        retrying("recording the trial's worker", lambda: [trial.set_user_attr(k, v) for k, v in attrs.items()])
        if retry_of is not None:
            log.info("trial %d retries trial %d", trial.number, retry_of)
        self._declare_point(s, trial, retry_of)
        return _Trial(trial, trial_id, run_id, retry_of)

    def _launch(self, run: list[tuple[_Trial, Sequence[str]]],
                s: _Session) -> list[tuple[_Trial, TrialState, list[float] | None, BaseException | None]]:
        """Launch consecutive trials as one batch; their states, values and errors.

        When a job's process dies (the OOM killer, a lost node), the launcher loses the whole
        batch's returns: each trial's result is then read back from its tracked record, and the
        trials whose record did not finish fail (and are retried).
        """
        items = [item for item, _ in run]
        try:
            # hydra.job.num = trial number: folders of a resumed study continue, never overwrite.
            returns = self.launcher.launch([o for _, o in run], initial_job_idx=run[0][0].number)
        except Exception as err:
            log.warning("the launcher lost trials %s: %s: %s", [i.number for i in items], type(err).__name__,
                        str(err).strip().splitlines()[0][:300] if str(err).strip() else "")
            outcomes = []
            for item in items:
                recovered = s.tracked.recovered(item.run_id, s.names) if s.tracked and item.run_id else None
                if recovered is None:
                    outcomes.append((item, TrialState.FAIL, None, _ProcessDied(f"{type(err).__name__}: {err}")))
                else:
                    outcomes.append((item, *recovered, None))
            return outcomes
        return [(item, *self._outcome(ret, len(s.names))) for item, ret in zip(items, returns, strict=False)]

    @staticmethod
    def _outcome(ret: JobReturn, n_values: int) -> tuple[TrialState, list[float] | None, BaseException | None]:
        if ret.status != JobStatus.COMPLETED:
            # The job's exception, read without JobReturn.return_value, which would print
            # "Error executing job" for a pruned trial too.
            error = getattr(ret, "_return_value", None)
            if isinstance(error, optuna.TrialPruned):
                return TrialState.PRUNED, None, None
            if isinstance(error, BaseException):
                return TrialState.FAIL, None, error
            return TrialState.FAIL, None, RuntimeError(f"job ended with status {ret.status}")
        value = ret.return_value
        try:
            values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        except (TypeError, ValueError):
            values = []
        if len(values) != n_values or not all(math.isfinite(v) for v in values):
            return TrialState.FAIL, None, ValueError(f"the job returned {value!r}, not {n_values} finite number(s)")
        return TrialState.COMPLETE, values, None

    def _finish(self, s: _Session, item: _Trial, state: TrialState, values: list[float] | None = None,
                error: BaseException | None = None, *, retry: bool = False, note: str | None = None,
                status: str = RUN_FAILED) -> None:
        """Tell Optuna, stop the trial's heartbeat, end its tracked record if the job did not, retry if asked."""
        text = self._record_error(item, error, note)
        state = self._tell(s, item, state, values)
        s.told.add(item.number)
        if s.heartbeats is not None:
            s.heartbeats.discard(item.trial_id)
        if s.tracked is not None and item.run_id:
            s.tracked.end_trial(item.run_id, state.name, text, status=RUN_KILLED if retry else status)
        if retry:
            self._retry(s, item.number)
        if state == TrialState.PRUNED:
            log.info("trial %d pruned", item.number)
        elif state == TrialState.COMPLETE:
            log.info("trial %d: %s = %s", item.number, ",".join(s.names), values)

    @staticmethod
    def _record_error(item: _Trial, error: BaseException | None, note: str | None) -> str | None:
        """The trial's error (or note) as its user attr `error`; the text."""
        if error is not None:
            text = (f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)[:2000]
            item.trial.set_user_attr(ERROR_ATTR, text)
            log.warning("trial %d failed: %s", item.number, text)
            return text
        if note is not None:
            item.trial.set_user_attr(ERROR_ATTR, note)
        return note

    @staticmethod
    def _tell(s: _Session, item: _Trial, state: TrialState, values: list[float] | None) -> TrialState:
        """Tell Optuna; the state stored (FAIL when another worker failed the trial meanwhile)."""
        try:
            retrying("telling a trial", lambda: s.study.tell(item.trial, values=values, state=state))
        except RuntimeError as err:
            # Grid-like samplers call study.stop() once the space is covered, which Optuna only
            # allows inside study.optimize; the trial is stored all the same.
            if "Study.stop" not in str(err):
                raise
            # The sampler knows points, not seeds: with several, the study ends when each has them all.
            s.exhausted = s.replicates is None or s.replicates.seeds == 1
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("trial %d was failed by another worker (no heartbeat within grace_period); its result "
                        "is dropped and its retry runs it again", item.number)
            return TrialState.FAIL
        return state

    # --- fits: no fit twice, seeds as replicates, a space that ends (see _dedup) ------------

    def _replicates(self, job: dict, space: dict[str, Dimension]) -> _dedup.Replicates:
        """The command's fits: its settings without `fit_ignores` (and the trial hook), its seeds."""
        seed = job.get(self.seed_key)
        if self.seeds > 1 and self.seed_key in space:
            raise SweeperError(f"hydra.sweeper.seeds={self.seeds} draws the seeds itself: do not search "
                               f"{self.seed_key} (hydra.sweeper.seed_key), or set hydra.sweeper.seeds=1")
        if self.seeds > 1 and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise SweeperError(f"hydra.sweeper.seeds={self.seeds} needs an integer config key "
                               f"{self.seed_key} (hydra.sweeper.seed_key); got {seed!r}")
        return _dedup.Replicates(job, space, self.seeds, self.seed_key, [*self.fit_ignores, TRIAL_KEY])

    @staticmethod
    def _declare_point(s: _Session, trial: optuna.Trial, retry_of: int | None) -> None:
        """Say which point the trial is, at once: a trial of the same point asked later waits for its plan."""
        if s.replicates is None:
            return
        trial.set_user_attr(_dedup.POINT_ATTR, s.replicates.point(trial.params))
        if retry_of is not None:  # Optuna's retry copies the failed trial's attrs: its claim is not this one's
            trial.set_user_attr(_dedup.FIT_SEED_ATTR, None)

    def _space_complete(self, s: _Session, done: int) -> bool:
        """Whether every point of a finite space has all its seeds; one line says so."""
        trials = retrying("listing trials", lambda: s.study.get_trials(deepcopy=False))
        # a queued trial (a dead worker's retry, an enqueued point) still runs: it may be a repeat
        if s.replicates is None or any(t.state == TrialState.WAITING for t in trials) \
                or not s.replicates.complete(trials):
            return False
        log.info("study %r: every point of the search space (%d) has its %d seed(s): nothing new to fit, stopping "
                 "after %d new trial(s)", s.study.study_name, s.replicates.size, s.replicates.seeds, done)
        return True

    def _plan(self, s: _Session, item: _Trial, patient: bool = True) -> _dedup.Plan:
        if s.replicates is None:
            return _dedup.Plan(_dedup.FIT)
        trials = retrying("listing trials", lambda: s.study.get_trials(deepcopy=False))
        return s.replicates.plan(trials, item.number, s.replicates.point(item.trial.params), patient)

    def _await_plan(self, s: _Session, item: _Trial) -> _dedup.Plan:
        """Plan again until the trials this one waits for are settled (a dead worker's are failed meanwhile)."""
        started, pause = time.monotonic(), 0.2
        # A running trial that has not said which point it is after this long is not a trial of
        # this sweeper (an older version's): stop waiting for it.
        patience_s = 10.0
        while True:
            plan = self._plan(s, item, patient=time.monotonic() - started < patience_s)
            if plan.action != _dedup.WAIT:
                return plan
            if pause == 0.2:
                log.info("trial %d waits for a running trial of the same point (params and settings)", item.number)
            time.sleep(pause)
            pause = min(2 * pause, 2.0)
            self._clean_up_dead_trials(s)

    def _settle(self, s: _Session, item: _Trial, plan: _dedup.Plan, jobs: list) -> int:
        """Copy a repeated fit's result, or claim the fit's seed and add its job; 1 when the trial failed."""
        if plan.action == _dedup.COPY:
            self._finish_copy(s, item, plan)
            return 0
        if s.replicates is not None:
            item.fit_seed = plan.seed
            item.trial.set_user_attr(_dedup.FIT_SEED_ATTR, plan.seed)
        overrides = self._overrides(s, item)
        try:  # a value the config cannot take fails this trial, not the study
            self.validate_batch_is_legal([overrides])
        except Exception as err:
            self._finish(s, item, TrialState.FAIL, error=err)
            return 1
        jobs.append((item, overrides))
        return 0

    def _launch_and_tell(self, s: _Session, jobs: list) -> int:
        """Launch the jobs (runs of consecutive numbers) and tell their trials; how many failed."""
        failed = 0
        for run in _consecutive(jobs):
            raise_if_terminated()  # no new jobs once a signal was spent without stopping this process
            for item, state, values, error in self._launch(run, s):
                if state == TrialState.COMPLETE and s.replicates is not None:
                    self._tell_fit(s, item, values)
                    continue
                # Killed, cancelled, preempted or timed out: the trial is retried; a job's own error is not.
                retry = isinstance(error, (_ProcessDied, JobInterrupted, Terminated))
                self._finish(s, item, state, values, error, retry=retry)
                failed += state == TrialState.FAIL and not retry  # a cluster's kill is not the trial's failure
        return failed

    def _tell_fit(self, s: _Session, item: _Trial, values: list[float]) -> None:
        """A fit's values kept as its own; the trial told the mean over its point's seeds so far."""
        item.trial.set_user_attr(_dedup.FIT_VALUES_ATTR, values)
        outcome = s.replicates.fitted(s.study.get_trials(deepcopy=False), item.number,
                                      s.replicates.point(item.trial.params), item.fit_seed, values)
        for key, value in outcome.attrs().items():
            item.trial.set_user_attr(key, value)
        self._finish(s, item, outcome.state, outcome.values)
        self._annotate(s, item, outcome, end=False)

    def _finish_copy(self, s: _Session, item: _Trial, plan: _dedup.Plan) -> None:
        """No job: the trial takes the result of the finished fits of its point (values, constraints)."""
        outcome = s.replicates.copied(plan.sources)
        for key, value in outcome.attrs().items():
            item.trial.set_user_attr(key, value)
        constraints: dict[str, float] = {}
        for source in plan.sources:  # the worst over the seeds: a degenerate seed makes the point infeasible
            for key, value in source.constraints.items():
                constraints[key] = max(value, constraints.get(key, value))
        for key, value in constraints.items():
            item.trial.set_constraint(key, value)
        log.info("trial %d repeats trial %d (same params, settings and seed%s): its result, no fit", item.number,
                 outcome.duplicate_of.number, "s" if len(plan.sources) > 1 else "")
        self._finish(s, item, outcome.state, outcome.values)
        self._annotate(s, item, outcome, end=True)

    @staticmethod
    def _annotate(s: _Session, item: _Trial, outcome: _dedup.Outcome, end: bool) -> None:
        """What the trial's run does not know: which fit it repeats, its seeds' mean and spread."""
        annotate = getattr(s.tracked, "annotate_trial", None)
        if annotate is None or not item.run_id:
            return
        tags, metrics = outcome.run_records(s.names, RUN_ID_ATTR)
        if tags or metrics or end:
            annotate(item.run_id, tags, metrics, end=end)

    def _report(self, study: optuna.Study, names: list[str], sweep_dir: Path) -> None:
        """optimization_results.yaml in the sweep folder (as the official plugin writes it) and one log line."""
        trials = study.get_trials(deepcopy=False)
        counts = {s.name: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                        TrialState.FAIL)}
        best = best_trial(study)
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "n_trials": len(trials),
                                   "states": counts}
        results.update(_dedup.summary(trials))
        if best is not None:
            results.update({"best_trial": best.number, "best_params": best.params,
                            "best_values": dict(zip(names, best.values, strict=False)),
                            **_dedup.best_seeds(best, names)})
            if len(study.directions) > 1:
                results["pareto_front"] = [{"number": t.number, "params": t.params, "values": t.values}
                                           for t in study.best_trials]
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        def short(mapping) -> str:  # the full values are in optimization_results.yaml and the study's run
            return "{" + ", ".join(f"{key}: {short_value(str(value))}" for key, value in mapping) + "}"

        best_line = (f"; best trial {best.number}: {short(zip(names, best.values, strict=False))} "
                     f"with {short(best.params.items())}" if best else "")
        if "best_seeds" in results:
            seeds = results["best_seeds"]
            best_line += f" (mean of {seeds['n_seeds']} seeds, std {short(seeds['std'].items())})"
        repeats = f", {results['repeated']} repeating a finished fit" if results.get("repeated") else ""
        log.info("study %r: %d trials (%s%s)%s", study.study_name, len(trials),
                 ", ".join(f"{n} {s.lower()}" for s, n in counts.items()), repeats, best_line)
