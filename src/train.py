"""One run of the study: compose -> load data -> fit -> evaluate -> draw -> log to MLflow.

    python src/train.py                          # NMF, k=10, on mnist_5k (offline)
    python src/train.py -m k=10,20,50            # a sweep, nested under one MLflow parent run
    python src/train.py -m hparams_search=nmf_sparse   # an Optuna study

Returns the metric(s) named by `objective`, which a sweeper optimizes.
"""
from __future__ import annotations

import gc

# Python's cycle collector walks every object that the imports below create (MLflow, scikit-learn,
# SQLAlchemy, pandas: about a million) again and again while they load: half a second of a
# four-second run. It is off while they load, and those long-lived objects are then frozen out of
# its reach (gc.freeze), so later collections walk only what the run itself makes.
gc.disable()

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nmfstudy import config as settings
from nmfstudy import constraints, products, tracking
from nmfstudy.data import Dataset, load_dataset
from nmfstudy.hydra_callbacks import MlflowParentRun, command_line, project_root, run_label
from nmfstudy.methods import ClusteringEstimator
from nmfstudy.metrics import LABEL_METRICS, evaluate
from nmfstudy.processes import keep_unraisable_interrupts, raise_terminated
from nmfstudy.pruning import TrialReporter
from nmfstudy.study_names import DATASET_FINGERPRINT_TAG, KIND_RUN, KIND_TAG, TRIAL_KEY, TrialHook
from nmfstudy.tracking import models as tracked_models
from nmfstudy.versions import git_tags, package_versions

gc.freeze()
gc.enable()

log = logging.getLogger("nmfstudy")
single_run_ended = False  # set by a single run (not a sweep's job) that ended normally


class UserError(CompactHydraException):
    """A mistake in the command or the data: Hydra prints its one line, without a traceback."""


class ProgressPrinter:
    """Logs iteration and loss of a long fit, at most every `every_s` seconds."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.last = -float("inf")

    def __call__(self, iteration: int, loss: float, elapsed_s: float) -> None:
        if iteration == 1 or elapsed_s - self.last >= self.every_s:
            self.last = elapsed_s
            log.info("iter %4d  loss %.6g  %.1fs", iteration, loss, elapsed_s)


def exit_without_teardown(status: int = 0) -> None:
    """End the process now, skipping the interpreter's teardown of every module and object.

    With MLflow, scikit-learn and pandas loaded that teardown takes about a second of a four-second
    run, after everything is logged. Called only after a single run that ended normally: its MLflow
    run is ended and no thread or child process is left, so only the output needs flushing.

    Parameters
    ----------
    status : int
        The exit status.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def objective_value(scores: dict[str, float], objective: str | list[str],
                    optimized: bool = True) -> float | list[float] | None:
    """The value(s) a sweeper optimizes: the metric named by `objective`, or a list for a list of names.

    Parameters
    ----------
    scores : dict
        The run's metrics by name.
    objective : str or list of str
        The config's ``objective``.
    optimized : bool, default True
        Whether a sweeper optimizes it (an Optuna trial). When not, a label metric missing for
        want of labels gives None: nothing reads the value of a plain run.

    Returns
    -------
    float or list of float or None

    Raises
    ------
    UserError
        When a named metric is not among the scores (and not a label metric of an unoptimized run).
    """
    names = [objective] if isinstance(objective, str) else list(objective)
    missing = [name for name in names if name not in scores]
    if missing and not optimized and set(missing) <= set(LABEL_METRICS):
        return None
    if missing:
        raise UserError(f"objective names metric(s) {missing} that this run does not produce; it has {sorted(scores)}")
    values = [scores[name] for name in names]
    return values[0] if isinstance(objective, str) else values


def prepare(run_cfg: dict, root: Path, optimized: bool = False) -> tuple[Dataset, ClusteringEstimator,
                                                                         tracking.Store, Any]:
    """Everything that can fail on a user mistake, before any fitting or logging.

    Parameters
    ----------
    run_cfg : dict
        The run's resolved config.
    root : Path
        The project root (where the default store and the image cache live).
    optimized : bool, default False
        Whether a sweeper optimizes the run's objective (see `nmfstudy.config.check`).

    Returns
    -------
    (Dataset, ClusteringEstimator, Store, MlflowClient)
        The loaded data, the run's estimator (unfitted: made here, once, from its ``_target_``),
        the resolved store and a client on it.

    Raises
    ------
    UserError
        With one line naming the key at fault.
    """
    try:
        settings.check(run_cfg, optimized=optimized)
        ds = run_cfg["dataset"]
        with settings.config_keys(settings.DATASET_KEYS):
            data = load_dataset(ds["name"], dir=ds.get("dir"), n_samples=ds.get("n_samples"),
                                test_size=ds.get("test_size") or 0.2, seed=run_cfg["seed"],
                                image_size=ds.get("image_size"),
                                cache_dir=ds.get("cache_dir") or root / ".cache" / "images",
                                deskew=ds.get("deskew", False))
        estimator = settings.build_estimator(run_cfg, data.X_train)
        if "cache_dir" in estimator.get_params() and estimator.cache_dir is None:
            estimator.set_params(cache_dir=str(root / ".cache" / "graphs"))
        store = tracking.resolve_store(run_cfg["tracking"]["uri"], root)
        client = tracking.open_store(store)
        tracking.experiment_id(client, store, run_cfg["tracking"]["experiment"])  # a deleted one stops here
        return data, estimator, store, client
    except (settings.ConfigError, tracking.TrackingError) as err:
        raise UserError(str(err)) from None


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | list[float]:
    """One run: check, load, fit, evaluate, draw and log.

    Parameters
    ----------
    cfg : DictConfig
        The run's config, as Hydra composed it from conf/.

    Returns
    -------
    float or list of float
        The value(s) of the metric(s) named by ``objective``, for a sweeper to optimize.
    """
    # In a launcher's worker (joblib's processes, a SLURM job) the `__main__` block below never ran: a Ctrl-C
    # to the process group that lands in a weakref callback there would print a traceback and be lost.
    keep_unraisable_interrupts()
    run_cfg = OmegaConf.to_container(cfg, resolve=True)
    root = project_root()
    hydra_cfg = HydraConfig.get()
    optimized = bool(run_cfg.get(TRIAL_KEY))  # an Optuna trial: its sweeper optimizes the objective
    try:
        data, model, store, client = prepare(run_cfg, root, optimized)
    except UserError as err:
        if hydra_cfg.mode == RunMode.RUN:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        raise  # in a sweep, the job fails and the sweeper (or Hydra) reports it

    tracking_cfg = run_cfg["tracking"]
    if hydra_cfg.mode == RunMode.RUN:  # a sweep does this once, before its first job
        tracking.end_dead_runs_in(client, tracking_cfg["experiment"], tracking_cfg.get("grace_period"))
    hook = TrialHook.from_config(run_cfg.get(TRIAL_KEY))  # set when the run is an Optuna trial
    parent = tracking.read_parent_run_id(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
    run_name = run_label(run_cfg, hydra_cfg.overrides.task, hook)
    tags = {
        KIND_TAG: KIND_RUN,
        **(git := git_tags(root)),
        "git_commit": git["mlflow.source.git.commit"],  # the report's and older runs' name for it
        DATASET_FINGERPRINT_TAG: data.fingerprint,
        "command": command_line(),
        "hydra_output_dir": hydra_cfg.runtime.output_dir,
    }
    reporter = TrialReporter(hook) if hook is not None else None
    if reporter is not None:
        tags.update(reporter.tags())
    # An Optuna trial's run was made when the trial started (trial.run_id): the job continues it.
    with tracking.run(client, tracking_cfg["experiment"], run_name=run_name, parent_run_id=parent, tags=tags,
                      store=store, run_id=hook.run_id if hook is not None else None,
                      heartbeat_s=tracking_cfg.get("heartbeat_interval") or 0) as active:
        short = {key: run_cfg[key]["name"] for key in ("dataset", "method", "init", "sparsity")}
        # the shape the images were drawn in (images: read from the files, whatever image_size said)
        short["image_shape"] = "x".join(str(n) for n in data.image_shape)
        tracking.log_params({**tracking.flatten(run_cfg), **short})
        tracking.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        tracking.log_text("\n".join(f"{name}=={version}" for name, version in package_versions().items()),
                          "environment.txt")
        log.info("run %s in experiment %r (%s)", active.info.run_id, run_cfg["tracking"]["experiment"],
                 store.tracking_uri)
        log.info("fitting %s with k=%d on %s: %d samples x %d pixels", short["method"], run_cfg["k"], data.name,
                 *data.X_train.shape)
        tracked_models.log_dataset(data.X_train, data.y_train, name=data.name, digest=data.fingerprint,
                             source=products.data_source(run_cfg))
        progress = ProgressPrinter(run_cfg["progress_every_s"])
        model.fit(data.X_train, callback=progress if reporter is None else reporter.wrap(progress))
        if reporter is not None and reporter.pruned:
            # Stopped early by the pruner: the run stays FINISHED with what it had, tagged PRUNED.
            tracking.set_tags(reporter.tags())
        scores = evaluate(model, data.X_train, data.y_train, data.X_test, data.y_test, seed=run_cfg["seed"])
        # a degenerate fit is a constraint violation for the sampler, not only a low score
        constraints.record(hook, constraints.degenerate_fit(scores, model.k))
        if not data.has_labels:
            log.info("%s not scored: the images of dataset.dir=%s have no labels (fewer than two label sub-folders)",
                     ", ".join(LABEL_METRICS), run_cfg["dataset"]["dir"])
        if len(model.loss_history_) > 1:
            tracking.log_history("loss", model.loss_history_)
            scores.pop("loss")
        tracking.log_metrics(scores)
        scores["loss"] = model.loss_
        products.keep(model, data, run_cfg, reporter, scores, client)

    shown = [("accuracy", "accuracy %.4f"), ("hungarian_accuracy", "hungarian %.4f"), ("nmi", "nmi %.4f"),
             ("test_accuracy", "test_accuracy %.4f"), ("silhouette", "silhouette %.4f"), ("loss", "loss %.6g"),
             ("fit_time_s", "fit %.1fs"), ("n_iter", "(%d iterations)")]
    log.info("  ".join(text for name, text in shown if name in scores), *(scores[n] for n, _ in shown if n in scores))
    exp_id = active.info.experiment_id
    if hydra_cfg.mode == RunMode.RUN:
        log.info("logged to MLflow run %r (%s); to see it, %sopen the runs table %s (this run: %s)",
                 run_name, active.info.run_id, tracking.ui_hint(store, root), tracking.ui_link(store, exp_id),
                 tracking.ui_link(store, exp_id, active.info.run_id))
    else:  # a sweep's or study's job: the sweep or study prints the links once, at its end
        log.info("logged to MLflow run %r (%s)", run_name, active.info.run_id)
    if reporter is not None and reporter.pruned:
        raise reporter.pruned_exception()
    value = objective_value(scores, run_cfg["objective"], optimized)
    global single_run_ended
    single_run_ended = hydra_cfg.mode == RunMode.RUN
    return value


if __name__ == "__main__":
    # SIGTERM (a scheduler, `kill`) ends a run like Ctrl-C does: the MLflow run is marked KILLED.
    signal.signal(signal.SIGTERM, raise_terminated)
    # A Ctrl-C that lands in a finalizer prints no traceback and is raised at the next check instead of being lost.
    keep_unraisable_interrupts()
    try:
        main()
        if single_run_ended:
            exit_without_teardown()  # a sweep's launcher (joblib's workers) still ends at the interpreter's exit
    except KeyboardInterrupt:
        MlflowParentRun.end_all("KILLED")
        print("interrupted: the MLflow run is marked KILLED; what it logged is kept", file=sys.stderr)
        sys.exit(130)
