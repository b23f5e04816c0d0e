"""Hydra glue for MLflow: one parent run per multirun, that every job nests under.

Jobs may run in other processes (joblib launcher), so the parent run id travels
through a small file in the sweep folder rather than through memory.
"""
from __future__ import annotations

import atexit
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from . import tracking
from .metrics import SMALLER_IS_BETTER
from .study_names import KIND_SWEEP, KIND_TAG, TRIAL_KEY, TrialHook, short_overrides
from .versions import git_tags

log = logging.getLogger("nmfstudy")
# Hydra's sweep syntax: a value with these makes an override swept, not fixed.
SWEEP_SIGNS = (",", "range(", "choice(", "interval(", "glob(", "tag(", "shuffle(", "sort(")


def project_root(hydra_cfg: DictConfig | None = None) -> Path:
    """The folder holding the primary config folder (conf/): where mlflow.db and mlruns/ live by default.

    Parameters
    ----------
    hydra_cfg : DictConfig or None
        The `hydra` node of a config; None: the running job's (HydraConfig).

    Returns
    -------
    Path
        That folder; the working directory when the config did not come from a folder.
    """
    hydra_cfg = hydra_cfg if hydra_cfg is not None else HydraConfig.get()
    for source in hydra_cfg.runtime.config_sources:
        if source.provider == "main" and source.schema == "file":
            return Path(source.path).resolve().parent
    return Path.cwd()


def command_line() -> str:
    """This process's command line, with the script's name only.

    Returns
    -------
    str
        E.g. "train.py -m k=10,20".
    """
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def run_label(run_cfg: dict, overrides: list[str], hook: TrialHook | None) -> str:
    """A run's name: what it is (an Optuna trial's number), its method and k, and its other overrides with
    numbers to 3 significant digits (the params keep every digit).

    Parameters
    ----------
    run_cfg : dict
        The run's resolved config.
    overrides : list of str
        The job's overrides (Hydra's task overrides).
    hook : TrialHook or None
        The trial the run is, if any.

    Returns
    -------
    str
        E.g. "trial 3 nmf k=20 [method.alpha=0.000123 dataset=digits]".
    """
    shown = [o for o in overrides if not o.startswith(("tracking.", f"{TRIAL_KEY}=", "hydra", "method=", "k="))]
    name = f"{run_cfg['method']['name']} k={run_cfg['k']}" + (f" [{short_overrides(shown)}]" if shown else "")
    return f"trial {hook.number} {name}" if hook is not None else name


def sweep_label(overrides: list[str], dataset: str, n_samples: Any = None) -> str:
    """A sweep's run name: what it sweeps, then its data.

    Parameters
    ----------
    overrides : list of str
        The command's overrides.
    dataset : str
        The dataset's name.
    n_samples : int or None
        dataset.n_samples, when set.

    Returns
    -------
    str
        E.g. "sweep method=nmf,kmeans k=10,20,50 · mnist_5k" (numbers to 3 significant digits).
    """
    shown = [o for o in overrides if not o.startswith(("tracking.", "hydra", "dataset=", "dataset.n_samples="))]
    swept = [o for o in shown if any(sign in o.partition("=")[2] for sign in SWEEP_SIGNS)]
    parts = [o if o in swept else short_overrides([o]) for o in (swept + [o for o in shown if o not in swept])]
    data = dataset + (f" n_samples={n_samples}" if n_samples else "")
    return " ".join(["sweep", *parts, "·", data])


class MlflowParentRun(Callback):
    """Creates the store and a parent run before the jobs of a multirun start; ends it after.

    A sweeper with a `tracker` (an Optuna study: one run per study, shared by every worker) gets
    no sweep run. Either way, runs of the experiment whose process died are ended KILLED first.
    """

    _open: list["MlflowParentRun"] = []

    @classmethod
    def end_all(cls, status: str) -> None:
        """End every parent run still open in this process (e.g. KILLED after Ctrl-C), and its jobs' runs.

        Parameters
        ----------
        status : str
            How they end: KILLED or FAILED.
        """
        for callback in list(cls._open):
            callback._end(status)

    def __init__(self) -> None:
        self._client = None
        self._store: tracking.Store | None = None
        self._root: Path | None = None
        self._run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Open the store, end dead runs, and start the sweep's parent run (unless the sweeper tracks itself).

        Exits with status 2 and one line when the store cannot be used: Hydra would only warn.

        Parameters
        ----------
        config : DictConfig
            The primary config, with `hydra`.
        **kwargs
            Hydra's other arguments.
        """
        root = project_root(config.hydra)
        try:
            store = tracking.resolve_store(config.tracking.uri, root)
            # Creating the store here, once, keeps parallel jobs from racing to create its schema.
            self._client = tracking.open_store(store)
            tracking.experiment_id(self._client, store, config.tracking.experiment)  # a deleted one stops here
        except tracking.TrackingError as err:
            # Hydra turns a callback's exception into a warning and runs the jobs anyway: exit instead.
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        self._store, self._root = store, root
        tracking.end_dead_runs_in(self._client, config.tracking.experiment, config.tracking.get("grace_period"))
        if config.hydra.sweeper.get("tracker"):
            return  # a sweeper with a tracker (the Optuna sweeper's: one run per study) records its own runs
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        self._run_id = tracking.start_parent_run(
            self._client, store, config.tracking.experiment,
            run_name=sweep_label(list(config.hydra.overrides.task), config.dataset.name,
                                 config.dataset.get("n_samples")),
            tags={
                KIND_TAG: KIND_SWEEP,
                "command": command_line(),
                **(git := git_tags(root)),
                "git_commit": git["mlflow.source.git.commit"],
                "sweep_dir": str(sweep_dir),
                "sweep.overrides": " ".join(config.hydra.overrides.task),
            },
        )
        tracking.write_parent_run_id(sweep_dir, self._run_id)
        MlflowParentRun._open.append(self)
        # A sweep that stops on a failed job or an interrupt never reaches on_multirun_end.
        atexit.register(self._end, "FAILED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """End the sweep's parent run FINISHED.

        Parameters
        ----------
        config : DictConfig
            The primary config, with `hydra`.
        **kwargs
            Hydra's other arguments.
        """
        run_id = self._run_id
        self._end("FINISHED")
        if run_id is not None:
            self._describe(run_id, config.objective)
        elif self._store is not None:  # a study: its sweeper printed its run's and best trial's links
            exp = self._client.get_experiment_by_name(config.tracking.experiment)
            if exp is not None:
                log.info("to see the study's runs, %sopen the runs table %s", tracking.ui_hint(self._store, self._root),
                         tracking.ui_link(self._store, exp.experiment_id))

    def _describe(self, run_id: str, objective: Any) -> None:
        """One line: the sweep's run and the best of its jobs, with their pages in the MLflow UI."""
        metric = objective if isinstance(objective, str) else list(objective)[0]
        parent = self._client.get_run(run_id)
        exp = parent.info.experiment_id
        line = f"sweep run {parent.info.run_name!r} ({tracking.ui_link(self._store, exp, run_id)})"
        best = tracking.best_child(self._client, run_id, metric, maximize=metric not in SMALLER_IS_BETTER)
        if best is not None:
            line += (f"; best {metric} {best.data.metrics[metric]:.4g}: run {best.info.run_name!r} "
                     f"({tracking.ui_link(self._store, exp, best.info.run_id)})")
        log.info("%s; to see them, %sopen all runs: %s", line, tracking.ui_hint(self._store, self._root),
                 tracking.ui_link(self._store, exp))

    def _end(self, status: str) -> None:
        if self._run_id is not None:
            run_id, self._run_id = self._run_id, None
            MlflowParentRun._open.remove(self)
            if status != "FINISHED":
                # Jobs in other processes (joblib) are stopped with the sweep and cannot end their runs.
                tracking.kill_running_children(self._client, run_id, f"the sweep ended {status}")
            tracking.end_parent_run(self._client, run_id, status)
