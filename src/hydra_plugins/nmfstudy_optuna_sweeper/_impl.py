"""An Optuna study as a Hydra sweep, by ask-and-tell: ask n_jobs trials, launch them as one batch, tell.

Differences from hydra-optuna-sweeper, and why:
- current Optuna (distributions of optuna>=3, public ask-and-tell), no optuna<3 pin;
- persistent by default (SQLite optuna.db in the project root) and resumable: the same command
  adds n_trials to the same study;
- a worker joins a shared study: the same command started on N machines against one RDB storage
  (PostgreSQL) feeds one study, `max_trials` caps it across workers, and each trial's sampler is
  seeded with seed + trial number, so workers never draw from the same random stream;
- hydra.job.num is the trial number, so job folders of a resumed study never overwrite earlier ones;
- jobs get their trial (`trial=` key) and can report intermediate values, so pruning works;
- a failed job is a FAIL trial with its error as user attr `error`, and the study goes on;
- no trial outlives its process as RUNNING: trials beat in the storage while they run; before
  asking, a worker fails the trials of dead workers (same host: process id; any host: heartbeat
  older than grace_period, Optuna's `fail_stale_trials`) and retries them up to `max_retry` times;
  Ctrl-C or SIGTERM marks the unfinished trials FAIL (SIGTERM, a scheduler's preemption, also
  retries them); a job whose process died fails its trial (retried) and the study goes on;
- the study is one MLflow run, shared by all workers, and every trial's run is created when the
  trial starts, nested under it.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from nmfstudy import tracking
from nmfstudy.pruning import open_storage
from nmfstudy.study_names import TRIAL_KEY, TrialHook

from ._mlflow import StudyRun
from ._space import Dimension, parse_search_space, render

log = logging.getLogger(__name__)
# Optuna warns on every ask that heartbeats are "supposed to be used with Study.optimize": this
# sweeper records them itself, as optimize does (see _Heartbeats).
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed", category=UserWarning)

DIRECTIONS = ("minimize", "maximize")
IN_FLIGHT = (TrialState.RUNNING, TrialState.WAITING)
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, *IN_FLIGHT)  # what max_trials caps: all but FAIL
T = TypeVar("T")


class SweeperError(CompactHydraException, ValueError):
    """A setting or a server the study cannot start with: Hydra prints this one line, no traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM: a scheduler preempting or cancelling the worker; its trials are retried elsewhere."""


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _describe(spec: dict | None) -> str:
    if not spec:
        return "none"
    args = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k != "_target_")
    return f"{spec['_target_']}({args})"


def _raise_terminated(signum, frame):
    raise Terminated(f"signal {signum}")


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


def _retrying(what: str, action: Callable[[], T], patience_s: float = 120.0) -> T:
    """`action()`, tried again while the storage's server is unreachable (a PostgreSQL restart)."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    deadline, wait = time.monotonic() + patience_s, 0.5
    while True:
        try:
            return action()
        except (OperationalError, DBAPIError) as err:
            if time.monotonic() > deadline:
                raise
            log.warning("%s: the storage did not answer (%s); trying again in %.0f s", what,
                        str(err).strip().splitlines()[0][:200], wait)
            time.sleep(wait)
            wait = min(wait * 2, 10.0)


class _Heartbeats:
    """Records the heartbeat of this worker's running trials in the storage, from a thread."""

    def __init__(self, storage: Any, interval_s: int) -> None:
        self.storage, self.interval_s = storage, interval_s
        self.trial_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)
        self._thread.start()

    def add(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.add(trial_id)
        self._beat(trial_id)  # at once: a trial without a heartbeat is never found stale

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.discard(trial_id)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self, trial_id: int) -> None:
        try:
            self.storage.record_heartbeat(trial_id)
        except Exception as err:  # a restarting server: the next beat may get through
            log.debug("heartbeat of trial id %d failed: %s", trial_id, err)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                self._beat(trial_id)


@dataclass
class _Trial:
    """A trial this worker asked: Optuna's handle, its storage id and its MLflow run."""

    trial: optuna.Trial
    trial_id: int
    run_id: str | None
    retry_of: int | None = None

    @property
    def number(self) -> int:
        return self.trial.number


class OptunaSweeperImpl(Sweeper):
    def __init__(self, *, sampler: Any, pruner: Any, direction: Any, study_name: str | None, storage: str | None,
                 n_trials: int, n_jobs: int, max_failure_rate: float, report_every: int, params: Any,
                 max_trials: int | None = None, heartbeat_interval: int = 60, grace_period: int | None = None,
                 max_retry: int = 3, check: str | None = None) -> None:
        self.sampler_spec = _container(sampler) or {"_target_": "optuna.samplers.TPESampler", "seed": 0}
        self.pruner_spec = _container(pruner) or None
        direction = _container(direction)
        self.directions = [str(d).lower() for d in (direction if isinstance(direction, list) else [direction])]
        bad = [d for d in self.directions if d not in DIRECTIONS]
        if bad or not self.directions:
            raise SweeperError(f"hydra.sweeper.direction must be minimize or maximize, or a list of them; got {direction}")
        if n_trials < 0 or n_jobs < 1 or report_every < 0 or not 0.0 <= max_failure_rate <= 1.0:
            raise SweeperError("hydra.sweeper: need n_trials >= 0, n_jobs >= 1, report_every >= 0 and "
                               f"0 <= max_failure_rate <= 1; got {n_trials}, {n_jobs}, {report_every}, {max_failure_rate}")
        if (max_trials is not None and max_trials < 0) or heartbeat_interval < 1 or max_retry < 0 or (
                grace_period is not None and grace_period <= heartbeat_interval):
            raise SweeperError("hydra.sweeper: need max_trials >= 0 (or null), heartbeat_interval >= 1 (seconds), "
                               "grace_period > heartbeat_interval (or null: twice it) and max_retry >= 0; got "
                               f"{max_trials}, {heartbeat_interval}, {grace_period}, {max_retry}")
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.report_every = report_every
        self.max_trials, self.max_retry = max_trials, max_retry
        self.heartbeat_interval, self.grace_period = int(heartbeat_interval), grace_period
        self.params = _container(params) or {}
        self.check = check
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None
        self.host, self.pid = socket.gethostname(), os.getpid()
        self._storage: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
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

    def _storage_url(self) -> str | None:
        """None: in memory. Relative SQLite paths are made absolute, as jobs may run elsewhere (chdir)."""
        if not self.storage:
            from nmfstudy.hydra_callbacks import project_root

            return f"sqlite:///{project_root(self.config.hydra) / 'optuna.db'}"
        if self.storage == "memory":
            return None
        if self.storage.startswith("sqlite:///"):
            path = self.storage.removeprefix("sqlite:///")
            if path and path != ":memory:" and not path.startswith("/"):
                return f"sqlite:///{Path(path).resolve()}"
        return self.storage

    def _default_study_name(self) -> str:
        choices = self.config.hydra.runtime.choices
        return "-".join(str(c) for c in (choices.get("hparams_search") or "study", choices.get("dataset")) if c)

    def _check_fixed_settings(self, fixed: list[str]) -> None:
        """The application's check (`check`) on a job's config with the fixed overrides, before any trial."""
        if not self.check:
            return
        from hydra.utils import get_method

        job = self.hydra_context.config_loader.load_sweep_config(self.config, list(fixed))
        with open_dict(job):
            del job["hydra"]  # its job-level keys (hydra.job.num) exist only once a job runs
        try:
            get_method(self.check)(OmegaConf.to_container(job, resolve=True))
        except ValueError as err:
            raise SweeperError(str(err)) from None

    def _open_storage(self, url: str | None) -> Any:
        """The RDB storage with heartbeats and retries of stale trials; one line on any failure."""
        if url is None:
            return optuna.storages.InMemoryStorage()
        label = safe_url(url)
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat arguments
                return open_storage(url, heartbeat_interval=self.heartbeat_interval,
                                    grace_period=self.grace_period, heartbeat_stale_trial_callback=retry)
        except (ImportError, ModuleNotFoundError) as err:
            raise SweeperError(f"hydra.sweeper.storage {label} needs a database driver that is not installed "
                               f"({err}): pip install -e '.[cluster]' and use postgresql+psycopg://...") from None
        except Exception as err:
            first = str(getattr(err, "orig", None) or err).strip().splitlines()[0][:300]
            raise SweeperError(f"hydra.sweeper.storage {label} cannot be used: {first}") from None

    def _open_study(self, name: str, storage: Any, label: str, names: list[str]) -> optuna.Study:
        study = _retrying("opening the study", lambda: optuna.create_study(
            study_name=name, storage=storage, directions=self.directions, load_if_exists=True))
        stored = [d.name.lower() for d in study.directions]
        if stored != self.directions:
            raise SweeperError(f"study {name!r} in {label} has directions {stored}, not {self.directions}: "
                               "set another hydra.sweeper.study_name")
        if study.user_attrs.get("objective") is None:
            study.set_user_attr("objective", names)
        elif list(study.user_attrs["objective"]) != names:
            raise SweeperError(f"study {name!r} in {label} optimizes {study.user_attrs['objective']}, not {names}: "
                               "set another hydra.sweeper.study_name")
        return study

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

    def _warn_about_one_machine_stores(self, url: str | None, trials: list) -> None:
        hosts = {t.user_attrs.get("worker_host") for t in trials} - {None, self.host}
        if url and url.startswith("sqlite") and hosts:
            log.warning("hydra.sweeper.storage is SQLite, but workers on %s also wrote to it: SQLite on a shared "
                        "file system is not safe for several machines; use PostgreSQL (postgresql+psycopg://...)",
                        ", ".join(sorted(hosts)))
        tracking_uri = str(self.config.tracking.get("uri") or "")
        if url and not url.startswith("sqlite") and (not tracking_uri or tracking_uri.startswith("sqlite")):
            log.warning("the study is shared on %s but tracking.uri is a local SQLite store: workers on other "
                        "machines will each log to their own; set tracking.uri=http://HOST:PORT", safe_url(url))

    # --- the sweep -------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        try:
            space, fixed = parse_search_space(self.params, arguments, self.hydra_context.config_loader)
        except ValueError as err:
            raise SweeperError(str(err)) from None
        names = self._objective_names()
        self._check_fixed_settings(fixed)
        name = self.study_name or self._default_study_name()
        url = self._storage_url()
        label = safe_url(url) if url else "memory"
        storage = self._storage = self._open_storage(url)
        study = self._open_study(name, storage, label, names)
        study.sampler = instantiate(self.sampler_spec)
        before = study.get_trials(deepcopy=False)
        self._check_space(name, before, space)
        self._warn_about_one_machine_stores(url, before)
        study.pruner = instantiate(self.pruner_spec) if self.pruner_spec else optuna.pruners.NopPruner()
        if self.pruner_spec and (len(self.directions) > 1 or url is None):
            log.warning("hydra.sweeper.pruner is ignored: %s", "Optuna cannot prune multi-objective studies"
                        if len(self.directions) > 1 else "jobs cannot reach an in-memory storage")

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        try:
            mlflow_run = StudyRun.open(self.config, study, label, {
                "optuna.study_name": name, "optuna.storage": label,
                "optuna.direction": ",".join(self.directions), "optuna.objective": ",".join(names),
                "optuna.sampler": _describe(self.sampler_spec), "optuna.pruner": _describe(self.pruner_spec),
                "optuna.max_trials": self.max_trials, "optuna.fixed": " ".join(fixed) or "none",
                **{f"optuna.space.{key}": dim.text for key, dim in space.items()},
            })
        except tracking.TrackingError as err:
            raise SweeperError(str(err)) from None
        log.info("study %r in %s: %d trial(s) so far, adding %d%s; directions %s of %s; sampler %s, seeded "
                 "with seed + trial number; pruner %s; worker %s:%d", name, label, len(before), self.n_trials,
                 f" up to {self.max_trials} in all" if self.max_trials is not None else "", self.directions, names,
                 _describe(self.sampler_spec), _describe(self.pruner_spec), self.host, self.pid)

        heartbeats = _Heartbeats(storage, self.heartbeat_interval) if url else None
        status = "FAILED"
        try:
            self._run_trials(study, storage, space, fixed, url, names, mlflow_run, heartbeats)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if heartbeats is not None:
                heartbeats.stop()
            if mlflow_run is not None:
                mlflow_run.finish(study, names, len(space), status)
        self._report(study, names, sweep_dir)
        if mlflow_run is not None:
            log.info("study %r in MLflow: run %s (%s)", name, mlflow_run.run_id, mlflow_run.link())

    # --- dead workers ------------------------------------------------------------------

    def _clean_up_dead_trials(self, study: optuna.Study, storage: Any, mlflow_run: StudyRun | None) -> None:
        """FAIL (and retry) the RUNNING trials whose worker is gone; end their MLflow runs KILLED."""
        running = _retrying("listing running trials", lambda: study.get_trials(deepcopy=False,
                                                                                states=(TrialState.RUNNING,)))
        dead: list[tuple[Any, str]] = []
        for trial in running:
            host, pid = trial.user_attrs.get("worker_host"), trial.user_attrs.get("worker_pid")
            if host == self.host and pid is not None and pid != self.pid and not tracking.process_alive(
                    int(pid), trial.user_attrs.get("worker_pid_start") or None):
                reason = f"its worker, process {pid} on {host}, is gone"
                try:
                    study.tell(trial.number, state=TrialState.FAIL)
                except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                    continue  # another worker got there first
                self._retry(study, trial.number)
                dead.append((trial, reason))
        if isinstance(storage, optuna.storages.RDBStorage):
            # Optuna's own check (and its retry callback) for the trials of any host.
            failed_here = {trial.number for trial, _ in dead}
            others = {t.number: t for t in running if t.number not in failed_here}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                _retrying("failing stale trials", lambda: optuna.storages.fail_stale_trials(study))
            if others:
                # Failed meanwhile without an error of its own: Optuna's stale check, not its worker, did it.
                failed = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                          if not t.user_attrs.get("error")}
                grace = self.grace_period or 2 * self.heartbeat_interval
                dead += [(t, f"no heartbeat for {grace} s from its worker on {t.user_attrs.get('worker_host')}")
                         for n, t in others.items() if n in failed]
        for trial, reason in dead:
            log.warning("study %r: trial %d FAIL, %s; retried (up to %d times)", study.study_name, trial.number,
                        reason, self.max_retry)
            run_id = trial.user_attrs.get("mlflow_run_id")
            if mlflow_run is not None and run_id:
                mlflow_run.end_trial(run_id, "FAIL", f"trial {trial.number}: {reason}", status="KILLED")

    def _retry(self, study: optuna.Study, number: int) -> None:
        """Queue a failed trial again (WAITING), as the storage's stale-trial callback does."""
        storage = self._storage
        callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
        if callback is None:
            return
        study_id = storage.get_study_id_from_name(study.study_name)
        frozen = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            _retrying("queueing a retry", lambda: callback(study, frozen))

    # --- trials ------------------------------------------------------------------------

    def _room(self, study: optuna.Study) -> int | None:
        """How many more trials may start under max_trials (queued retries can always start); None: no cap."""
        if self.max_trials is None:
            return None
        counted = _retrying("counting trials", lambda: study.get_trials(deepcopy=False, states=COUNTED))
        waiting = sum(t.state == TrialState.WAITING for t in counted)
        return self.max_trials - len(counted) + waiting

    def _over_cap(self, study: optuna.Study, number: int) -> bool:
        """Two workers may ask at once: the trial with the higher number yields."""
        if self.max_trials is None:
            return False
        counted = study.get_trials(deepcopy=False, states=COUNTED)
        return sum(t.number < number for t in counted) >= self.max_trials

    def _start(self, study: optuna.Study, storage: Any, space: dict[str, Dimension],
               mlflow_run: StudyRun | None, heartbeats: _Heartbeats | None) -> _Trial:
        trial = _retrying("asking a trial", study.ask)
        seed = None
        if self.sampler_spec.get("seed") is not None:
            # Seeded per trial, not per worker: simultaneous workers never draw the same points,
            # and a trial's draw depends only on the study's history and its number.
            seed = int(self.sampler_spec["seed"]) + trial.number
            study.sampler = instantiate({**self.sampler_spec, "seed": seed})
        for key, dim in space.items():
            _suggest(trial, key, dim.distribution)
        study_id = storage.get_study_id_from_name(study.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        if heartbeats is not None:
            heartbeats.add(trial_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry_of = RetryHeartbeatStaleTrialCallback.retried_trial_number(storage.get_trial(trial_id))
        run_id = None
        if mlflow_run is not None:
            run_id = mlflow_run.start_trial(trial.number, trial_id, retry_of,
                                            " ".join(f"{k}={trial.params[k]}" for k in space))
        owner = tracking.process_tags()
        for key, value in {"worker_host": self.host, "worker_pid": self.pid,
                           "worker_pid_start": owner[tracking.PID_START_TAG], "sampler_seed": seed,
                           "mlflow_run_id": run_id, "error": None}.items():
            trial.set_user_attr(key, value)
        if retry_of is not None:
            log.info("trial %d retries trial %d", trial.number, retry_of)
        return _Trial(trial, trial_id, run_id, retry_of)

    def _run_trials(self, study: optuna.Study, storage: Any, space: dict[str, Dimension], fixed: list[str],
                    url: str | None, names: list[str], mlflow_run: StudyRun | None,
                    heartbeats: _Heartbeats | None) -> None:
        trial_key = TRIAL_KEY if TRIAL_KEY in self.config else f"+{TRIAL_KEY}"
        self._exhausted = False
        batch: list[_Trial] = []
        told: set[int] = set()
        try:
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        except ValueError:  # not the main thread
            previous = None
        try:
            done = 0
            while done < self.n_trials and not self._exhausted:
                self._clean_up_dead_trials(study, storage, mlflow_run)
                room = self._room(study)
                if room is not None and room <= 0:
                    if not self._others_in_flight(study):
                        log.info("study %r has reached max_trials=%d", study.study_name, self.max_trials)
                        break
                    # Stay until the others' trials end: a dead worker's trial comes back as a retry.
                    time.sleep(min(self.heartbeat_interval, 2))
                    continue
                size = min(self.n_jobs, self.n_trials - done, room if room is not None else self.n_jobs)
                batch = []
                for _ in range(size):
                    batch.append(self._start(study, storage, space, mlflow_run, heartbeats))
                # A retry redoes a trial an earlier command asked for: it adds nothing to n_trials.
                done += sum(item.retry_of is None for item in batch)
                jobs, failed = [], 0
                for item in batch:
                    if self._over_cap(study, item.number):
                        self._finish(study, item, TrialState.FAIL, None, None, told, mlflow_run, heartbeats,
                                     note=f"not run: the study reached max_trials={self.max_trials} meanwhile")
                        continue
                    hook = TrialHook(study_name=study.study_name, number=item.number, storage=url,
                                     trial_id=item.trial_id, run_id=item.run_id, report_every=self.report_every,
                                     pruner=self.pruner_spec)
                    overrides = [*(dim.override(item.trial.params[key]) for key, dim in space.items()), *fixed,
                                 f"{trial_key}={render(hook.to_config())}"]
                    try:  # a value the config cannot take fails this trial, not the study
                        self.validate_batch_is_legal([overrides])
                    except Exception as err:
                        self._finish(study, item, TrialState.FAIL, None, err, told, mlflow_run, heartbeats)
                        failed += 1
                        continue
                    jobs.append((item, overrides))
                for run in _consecutive(jobs):
                    for item, state, values, error in self._launch(run, names, mlflow_run):
                        self._finish(study, item, state, values, error, told, mlflow_run, heartbeats,
                                     retry=isinstance(error, _ProcessDied))
                        failed += state == TrialState.FAIL
                if batch and failed / len(batch) > self.max_failure_rate:
                    raise SweeperError(f"{failed} of {len(batch)} trials failed, more than "
                                       f"hydra.sweeper.max_failure_rate={self.max_failure_rate}; see the warnings above")
            if self._exhausted:
                log.info("the sampler has covered the whole search space: stopping after %d trial(s)", done)
        except BaseException as err:
            # Never leave a trial RUNNING: what was asked and not told is a failure. A preempted
            # worker's trials (SIGTERM) are queued again; Ctrl-C means stop, so they are not.
            for item in batch:
                if item.number not in told:
                    try:
                        self._finish(study, item, TrialState.FAIL, None, err, told, mlflow_run, heartbeats,
                                     retry=isinstance(err, Terminated), status="KILLED")
                    except BaseException as tell_err:  # a second Ctrl-C, a lost storage
                        log.error("trial %d left RUNNING: %s", item.number, tell_err)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _others_in_flight(self, study: optuna.Study) -> bool:
        return bool(_retrying("listing running trials", lambda: study.get_trials(deepcopy=False, states=IN_FLIGHT)))

    def _launch(self, run: list[tuple[_Trial, Sequence[str]]], names: list[str],
                mlflow_run: StudyRun | None) -> list[tuple[_Trial, TrialState, list[float] | None, BaseException | None]]:
        """Launch consecutive trials as one batch; their states, values and errors.

        When a job's process dies (the OOM killer, a lost node), the launcher loses the whole
        batch's returns: each trial's result is then read back from its MLflow run, and the
        trials whose run did not finish fail (and are retried).
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
                recovered = mlflow_run.recovered(item.run_id, names) if mlflow_run and item.run_id else None
                if recovered is None:
                    outcomes.append((item, TrialState.FAIL, None, _ProcessDied(f"{type(err).__name__}: {err}")))
                else:
                    outcomes.append((item, *recovered, None))
            return outcomes
        return [(item, *self._outcome(ret, len(names))) for item, ret in zip(items, returns, strict=False)]

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

    def _finish(self, study: optuna.Study, item: _Trial, state: TrialState, values: list[float] | None,
                error: BaseException | None, told: set[int], mlflow_run: StudyRun | None,
                heartbeats: _Heartbeats | None, *, retry: bool = False, note: str | None = None,
                status: str = "FAILED") -> None:
        """Tell Optuna, stop the trial's heartbeat, end its MLflow run if the job did not, retry if asked."""
        text = note
        if error is not None:
            text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            text = text[:2000]
            item.trial.set_user_attr("error", text)
            log.warning("trial %d failed: %s", item.number, text)
        elif note is not None:
            item.trial.set_user_attr("error", note)
        try:
            _retrying("telling a trial", lambda: study.tell(item.trial, values=values, state=state))
        except RuntimeError as err:
            # Grid-like samplers call study.stop() once the space is covered, which Optuna only
            # allows inside study.optimize; the trial is stored all the same.
            if "Study.stop" not in str(err):
                raise
            self._exhausted = True
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("trial %d was failed by another worker (no heartbeat within grace_period); its result "
                        "is dropped and its retry runs it again", item.number)
            state = TrialState.FAIL
        told.add(item.number)
        if heartbeats is not None:
            heartbeats.discard(item.trial_id)
        if mlflow_run is not None and item.run_id:
            mlflow_run.end_trial(item.run_id, state.name, text, status="KILLED" if retry else status)
        if retry:
            self._retry(study, item.number)
        if state == TrialState.PRUNED:
            log.info("trial %d pruned", item.number)
        elif state == TrialState.COMPLETE:
            log.info("trial %d: %s = %s", item.number, ",".join(study.user_attrs.get("objective", [])), values)

    def _report(self, study: optuna.Study, names: list[str], sweep_dir: Path) -> None:
        from ._mlflow import _best_trial

        trials = study.get_trials(deepcopy=False)
        counts = {s.name: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                        TrialState.FAIL)}
        best = _best_trial(study)
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "n_trials": len(trials),
                                   "states": counts}
        if best is not None:
            results.update({"best_trial": best.number, "best_params": best.params,
                            "best_values": dict(zip(names, best.values, strict=False))})
            if len(study.directions) > 1:
                results["pareto_front"] = [{"number": t.number, "params": t.params, "values": t.values}
                                           for t in study.best_trials]
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        log.info("study %r: %d trials (%s)%s", study.study_name, len(trials),
                 ", ".join(f"{n} {s.lower()}" for s, n in counts.items()),
                 f"; best trial {best.number}: {dict(zip(names, best.values, strict=False))} with {best.params}" if best else "")


class _ProcessDied(RuntimeError):
    """The job's process ended without a result (killed, out of memory, a lost node)."""


def safe_url(url: str) -> str:
    """A storage URL without its password, for messages and MLflow params."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
