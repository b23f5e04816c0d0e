"""An Optuna study as a Hydra sweep, by ask-and-tell: ask n_jobs trials, launch them as one batch, tell.

Differences from hydra-optuna-sweeper, and why:
- current Optuna (distributions of optuna>=3, `study.ask(fixed_distributions)`), no optuna<3 pin;
- persistent by default (SQLite optuna.db in the project root) and resumable: the same command
  adds n_trials to the same study;
- hydra.job.num is the trial number, so job folders of a resumed study never overwrite earlier ones;
- jobs get their trial (`trial=` key) and can report intermediate values, so pruning works;
- a failed job is a FAIL trial with its error as user attr `error`, and the study goes on;
  Ctrl-C or SIGTERM marks the unfinished trials FAIL instead of leaving them RUNNING;
- the study is logged to the multirun's MLflow parent run.
"""
from __future__ import annotations

import logging
import math
import signal
from pathlib import Path
from typing import Any, Iterator, Sequence

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from nmfstudy.pruning import open_storage

from ._mlflow import StudyRun
from ._space import Dimension, parse_search_space, render

log = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _describe(spec: dict | None) -> str:
    if not spec:
        return "none"
    args = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k != "_target_")
    return f"{spec['_target_']}({args})"


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


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


class OptunaSweeperImpl(Sweeper):
    def __init__(self, *, sampler: Any, pruner: Any, direction: Any, study_name: str | None, storage: str | None,
                 n_trials: int, n_jobs: int, max_failure_rate: float, report_every: int, params: Any) -> None:
        self.sampler_spec = _container(sampler) or {"_target_": "optuna.samplers.TPESampler", "seed": 0}
        self.pruner_spec = _container(pruner) or None
        direction = _container(direction)
        self.directions = [str(d).lower() for d in (direction if isinstance(direction, list) else [direction])]
        bad = [d for d in self.directions if d not in DIRECTIONS]
        if bad or not self.directions:
            raise ValueError(f"hydra.sweeper.direction must be minimize or maximize, or a list of them; got {direction}")
        if n_trials < 0 or n_jobs < 1 or report_every < 0 or not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError("hydra.sweeper: need n_trials >= 0, n_jobs >= 1, report_every >= 0 and "
                             f"0 <= max_failure_rate <= 1; got {n_trials}, {n_jobs}, {report_every}, {max_failure_rate}")
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.report_every = report_every
        self.params = _container(params) or {}
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None

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
            raise ValueError(f"hydra.sweeper.direction has {len(self.directions)} direction(s) {self.directions} "
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

    def _open_study(self, name: str, url: str | None, names: list[str]) -> optuna.Study:
        storage = open_storage(url) if url else optuna.storages.InMemoryStorage()
        study = optuna.create_study(study_name=name, storage=storage, directions=self.directions, load_if_exists=True)
        stored = [d.name.lower() for d in study.directions]
        if stored != self.directions:
            raise ValueError(f"study {name!r} in {url} has directions {stored}, not {self.directions}: "
                             "set another hydra.sweeper.study_name")
        if study.user_attrs.get("objective") is None:
            study.set_user_attr("objective", names)
        elif list(study.user_attrs["objective"]) != names:
            raise ValueError(f"study {name!r} in {url} optimizes {study.user_attrs['objective']}, not {names}: "
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
                    raise ValueError(f"hydra.sweeper.params.{key}={dim.text} does not fit study {name!r}, whose "
                                     f"trials have {seen[key]} ({err}): keep it, or set another "
                                     "hydra.sweeper.study_name") from None

    # --- the sweep -------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        space, fixed = parse_search_space(self.params, arguments, self.hydra_context.config_loader)
        names = self._objective_names()
        name = self.study_name or self._default_study_name()
        url = self._storage_url()
        study = self._open_study(name, url, names)
        before = study.get_trials(deepcopy=False)
        self._check_space(name, before, space)
        stale = [t.number for t in before if t.state == TrialState.RUNNING]
        if stale:
            log.warning("study %r has RUNNING trials %s: a sweep still running, or one killed hard", name, stale)

        sampler_spec = dict(self.sampler_spec)
        if sampler_spec.get("seed") is not None:
            # A resumed study must not replay the random start-up points of the first invocation;
            # seed + trials so far keeps every invocation reproducible all the same.
            sampler_spec["seed"] = int(sampler_spec["seed"]) + len(before)
        study.sampler = instantiate(sampler_spec)
        study.pruner = instantiate(self.pruner_spec) if self.pruner_spec else optuna.pruners.NopPruner()
        if self.pruner_spec and (len(self.directions) > 1 or url is None):
            log.warning("hydra.sweeper.pruner is ignored: %s", "Optuna cannot prune multi-objective studies"
                        if len(self.directions) > 1 else "jobs cannot reach an in-memory storage")

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info("study %r in %s: %d trial(s) so far, adding %d; directions %s of %s; sampler %s; pruner %s",
                 name, url or "memory", len(before), self.n_trials, self.directions, names, _describe(sampler_spec),
                 _describe(self.pruner_spec))

        mlflow_run = StudyRun.open(self.config, name)
        if mlflow_run is not None:
            mlflow_run.start({
                "optuna.study_name": name, "optuna.storage": url or "memory",
                "optuna.direction": ",".join(self.directions), "optuna.objective": ",".join(names),
                "optuna.sampler": _describe(sampler_spec), "optuna.pruner": _describe(self.pruner_spec),
                "optuna.n_trials": self.n_trials, "optuna.n_jobs": self.n_jobs, "optuna.trials_before": len(before),
                "optuna.fixed": " ".join(fixed) or "none",
                **{f"optuna.space.{key}": dim.text for key, dim in space.items()},
            })

        self._run_trials(study, space, fixed, url, names, mlflow_run)

        self._report(study, names, sweep_dir)
        if mlflow_run is not None:
            mlflow_run.finish(study, names, len(space))

    def _run_trials(self, study: optuna.Study, space: dict[str, Dimension], fixed: list[str], url: str | None,
                    names: list[str], mlflow_run: StudyRun | None) -> None:
        distributions = {key: dim.distribution for key, dim in space.items()}
        trial_key = "trial" if "trial" in self.config else "+trial"
        self._exhausted = False
        batch: list[optuna.Trial] = []
        told: set[int] = set()
        try:
            previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        except ValueError:  # not the main thread
            previous = None
        try:
            done = 0
            while done < self.n_trials and not self._exhausted:
                batch = []
                for _ in range(min(self.n_jobs, self.n_trials - done)):
                    batch.append(study.ask(distributions))
                jobs, failed = [], 0
                for trial in batch:
                    hook = {"study_name": study.study_name, "storage": url, "number": trial.number,
                            "id": trial._trial_id, "report_every": self.report_every, "pruner": self.pruner_spec}
                    overrides = [*(dim.override(trial.params[key]) for key, dim in space.items()), *fixed,
                                 f"{trial_key}={render(hook)}"]
                    try:  # a value the config cannot take fails this trial, not the study
                        self.validate_batch_is_legal([overrides])
                    except Exception as err:
                        self._tell(study, trial, TrialState.FAIL, None, err, told)
                        failed += 1
                        continue
                    jobs.append((trial, overrides))
                results: list[tuple[optuna.Trial, JobReturn]] = []
                for run in _consecutive(jobs):
                    # hydra.job.num = trial number: folders of a resumed study continue, never overwrite.
                    returns = self.launcher.launch([o for _, o in run], initial_job_idx=run[0][0].number)
                    results += zip([t for t, _ in run], returns)
                runs = mlflow_run.child_runs() if mlflow_run is not None and results else {}
                for trial, ret in results:
                    state, values, error = self._outcome(ret, len(names))
                    if trial.number in runs:
                        trial.set_user_attr("mlflow_run_id", runs[trial.number])
                    self._tell(study, trial, state, values, error, told)
                    failed += state == TrialState.FAIL
                    if trial.number in runs:
                        mlflow_run.set_state(runs[trial.number], state.name)
                done += len(batch)
                if failed / len(batch) > self.max_failure_rate:
                    raise RuntimeError(f"{failed} of {len(batch)} trials failed, more than "
                                       f"hydra.sweeper.max_failure_rate={self.max_failure_rate}; see the warnings above")
            if self._exhausted:
                log.info("the sampler has covered the whole search space: stopping after %d trial(s)", done)
        except BaseException as err:
            # Never leave a trial RUNNING: what was asked and not told is a failure.
            for trial in batch:
                if trial.number not in told:
                    try:
                        self._tell(study, trial, TrialState.FAIL, None, err, told)
                    except BaseException as tell_err:  # a second Ctrl-C, a lost storage
                        log.error("trial %d left RUNNING: %s", trial.number, tell_err)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

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
            return TrialState.FAIL, None, RuntimeError(f"job status {ret.status.name}")
        value = ret.return_value
        try:
            values = [float(value)] if n_values == 1 else [float(v) for v in value]
        except (TypeError, ValueError):
            values = []
        if len(values) != n_values or not all(math.isfinite(v) for v in values):
            return TrialState.FAIL, None, ValueError(f"the job returned {value!r}, not {n_values} finite number(s)")
        return TrialState.COMPLETE, values, None

    def _tell(self, study: optuna.Study, trial: optuna.Trial, state: TrialState, values: list[float] | None,
              error: BaseException | None, told: set[int]) -> None:
        if error is not None:
            text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            text = text[:2000]
            trial.set_user_attr("error", text)
            log.warning("trial %d failed: %s", trial.number, text)
        try:
            study.tell(trial, values=values, state=state)
        except RuntimeError as err:
            # Grid-like samplers call study.stop() once the space is covered, which Optuna only
            # allows inside study.optimize; the trial is stored all the same.
            if "Study.stop" not in str(err):
                raise
            self._exhausted = True
        told.add(trial.number)
        if state == TrialState.PRUNED:
            log.info("trial %d pruned", trial.number)
        elif state == TrialState.COMPLETE:
            log.info("trial %d: %s = %s", trial.number, ",".join(study.user_attrs.get("objective", [])), values)

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
                            "best_values": dict(zip(names, best.values))})
            if len(study.directions) > 1:
                results["pareto_front"] = [{"number": t.number, "params": t.params, "values": t.values}
                                           for t in study.best_trials]
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        log.info("study %r: %d trials (%s)%s", study.study_name, len(trials),
                 ", ".join(f"{n} {s.lower()}" for s, n in counts.items()),
                 f"; best trial {best.number}: {dict(zip(names, best.values))} with {best.params}" if best else "")
