"""Check a run's settings (a plain dict, as Hydra resolves it) and build its method.

Every check names the key and what it allows, so that a user mistake ends in one line,
before any data is fitted or any run is logged. What a method accepts is declared once,
by the method (:mod:`nmfstudy.methods`); this module checks what is about the run as a
whole, and is the one place that turns a library's parameter name into its config key
(``solver`` -> ``method.solver``).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Integral, Real
from typing import Any

import numpy as np

from . import methods, metrics
from .data import DATASETS, parse_image_size, scan_image_folder
from .params import Boolean, Interval, InvalidParameterError, Options
from .params import check as check_value

RUN_PARAMETERS = {
    "k": [Interval(Integral, 1)],
    "seed": [Interval(Integral, 0, 2**32 - 1)],  # numpy's and scikit-learn's seeds
    "progress_every_s": [Interval(Real, 0.0)],
}
# tracking.figures and tracking.model: every run draws its figures or logs its model (all); a study's trial
# only when it beats the trials finished before it, so that the best trial has them (final); no run (none)
FIGURES = ("all", "final", "none")
# load_dataset's arguments -> their config keys
DATASET_KEYS = {"name": "dataset", "dir": "dataset.dir", "n_samples": "dataset.n_samples",
                "test_size": "dataset.test_size", "image_size": "dataset.image_size", "cache_dir": "dataset.cache_dir",
                "deskew": "dataset.deskew"}
DATASET_PARAMETERS = {
    "n_samples": [Interval(Integral, 2), None],
    "test_size": [Interval(Real, 0.01, 0.99), None],
    "deskew": [Boolean()],
}
# what a dataset key means when a config (one of the user's own) leaves it out
DATASET_DEFAULTS = {"deskew": False}


class ConfigError(ValueError):
    """A setting out of range or of the wrong kind; the message names the key."""


@contextmanager
def config_keys(keys: dict[str, str]) -> Iterator[None]:
    """Turn an `InvalidParameterError` raised inside into a `ConfigError` naming the config key.

    Parameters
    ----------
    keys : dict
        Parameter name -> config key (``"solver"`` -> ``"method.solver"``); a name not in it
        is its own key (``k``, ``seed``, ``init``).
    """
    try:
        yield
    except InvalidParameterError as err:
        raise ConfigError(err.renamed(keys.get(err.param, err.param))) from None


def method_class(cfg: dict) -> type[methods.ClusteringEstimator]:
    """The estimator class that the run's method config builds (its ``method._target_``).

    Parameters
    ----------
    cfg : dict
        The run's resolved config.

    Returns
    -------
    type
        A `nmfstudy.methods.ClusteringEstimator` subclass.

    Raises
    ------
    ConfigError
        When ``method._target_`` names no such class.
    """
    from hydra.utils import get_class

    target = (cfg.get("method") or {}).get("_target_")
    try:
        cls = get_class(target) if isinstance(target, str) else None
    except Exception:  # Hydra wraps whatever the import raised
        cls = None
    if cls is None or not issubclass(cls, methods.ClusteringEstimator):
        raise ConfigError(f"method._target_ must name an estimator class of nmfstudy.methods "
                          f"(e.g. nmfstudy.methods.NMFR); got {target!r}")
    return cls


def config_key(cls: type[methods.ClusteringEstimator], param: str, cfg: dict) -> str:
    """The config key a user sets for the estimator's parameter `param` (its method file interpolates it).

    ``n_clusters``/``n_components`` -> ``k``, ``random_state`` -> ``seed``, ``init`` -> ``init``, a
    sparsity variant's setting -> ``sparsity.<param>``, a graph setting of a graph method ->
    ``graph.<param>``, any other -> ``method.<param>``.
    """
    fixed = {cls.size_parameter: "k", "random_state": "seed", "init": "init"}
    if param in fixed:
        return fixed[param]
    for group in ("sparsity", "graph"):
        if param in (cfg.get(group) or {}) and (group == "sparsity" or issubclass(cls, methods.GraphEstimator)):
            return f"{group}.{param}"
    return f"method.{param}"


def method_params(cfg: dict) -> tuple[type[methods.ClusteringEstimator], dict[str, Any]]:
    """The run's estimator class and its constructor's parameters, as its method file gives them.

    Raises
    ------
    ConfigError
        For a key of the method, sparsity or (graph method) graph group that the estimator has no
        parameter for, or a sparsity variant it does not support.
    """
    cls = method_class(cfg)
    accepted = set(cls._get_param_names())
    params = {key: value for key, value in cfg["method"].items() if key not in ("name", "_target_")}
    sparsity = cfg.get("sparsity") or {}
    if sparsity.get("name") not in cls.sparsity_parameters:
        raise ConfigError(f"sparsity must be {' or '.join(cls.sparsity_parameters)} for method={cls.name}; "
                          f"got {sparsity.get('name')!r}")
    groups = {"method": params, "sparsity": sparsity}
    if issubclass(cls, methods.GraphEstimator):
        groups["graph"] = cfg.get("graph") or {}
    for group, values in groups.items():
        unknown = [key for key in values if key not in accepted and key != "name"]
        if unknown:
            raise ConfigError(f"{group}.{unknown[0]} is not a setting of method={cls.name}")
    missing = accepted - set(params)
    if missing:
        raise ConfigError(f"method.{sorted(missing)[0]} is missing: the method file of method={cls.name} "
                          f"must give every parameter of {cls.__name__}")
    return cls, params


@contextmanager
def estimator_keys(cls: type[methods.ClusteringEstimator], cfg: dict) -> Iterator[None]:
    """Turn an `InvalidParameterError` of the estimator into a `ConfigError` naming the user's config key."""
    try:
        yield
    except InvalidParameterError as err:
        raise ConfigError(err.renamed(config_key(cls, err.param, cfg))) from None


def _check_sparsity_variant(cls: type[methods.ClusteringEstimator], cfg: dict) -> None:
    """A sparsity variant with settings needs one of them set (Hoyer's: a target for W or H)."""
    sparsity = cfg.get("sparsity") or {}
    declared = cls.sparsity_parameters.get(sparsity.get("name")) or {}
    if declared and all(sparsity.get(key) is None for key in declared):
        raise ConfigError(f"sparsity={sparsity['name']} needs "
                          f"{' or '.join(f'sparsity.{key}' for key in declared)} set; all are null")


def check(cfg: dict, *, optimized: bool = True) -> None:
    """Raise ConfigError for the first setting that cannot work; data-dependent checks are in `build_estimator`.

    Parameters
    ----------
    cfg : dict
        A run's resolved config (``OmegaConf.to_container(cfg, resolve=True)``).
    optimized : bool, default True
        Whether a sweeper optimizes the run's `objective` (an Optuna study, which calls this
        with the default): then it must be a metric the run logs on its data, so not a label
        metric on images without labels. False (a plain run or a grid sweep, where nothing reads
        it): it must only name a metric.
    """
    with config_keys({}):
        for key, constraints in RUN_PARAMETERS.items():
            check_value(key, cfg.get(key, 2.0 if key == "progress_every_s" else None), constraints)
    with config_keys({"figures": "tracking.figures", "model": "tracking.model"}):
        check_value("figures", (cfg.get("tracking") or {}).get("figures", "final"), [Options(FIGURES)])
        check_value("model", (cfg.get("tracking") or {}).get("model", "final"), [Options(FIGURES)])
    dataset = cfg.get("dataset") or {}
    if dataset.get("name") not in DATASETS:
        raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset.get('name')!r}")
    with config_keys(DATASET_KEYS):
        for key, constraints in DATASET_PARAMETERS.items():
            check_value(key, dataset.get(key, DATASET_DEFAULTS.get(key)), constraints)
        unlabelled = None
        if dataset["name"] == "images":  # the folder's layout tells whether there are labels: no image is read
            parse_image_size(dataset.get("image_size"))
            found = scan_image_folder(dataset.get("dir"))
            unlabelled = _without_labels(found)
    cls, params = method_params(cfg)
    _check_sparsity_variant(cls, cfg)
    with estimator_keys(cls, cfg):
        cls.check_params(params)
    _check_objective(cfg.get("objective", "accuracy"), cls)
    if optimized and unlabelled is not None:
        _check_objective(cfg.get("objective"), cls,
                         unlabelled=f"images without labels: {unlabelled}")


def _without_labels(found) -> str | None:
    """Why an image folder's runs log no label metric, or None when it has labels."""
    if found.labels is not None:
        return None
    if found.only_label is not None:
        return f"dataset.dir={found.root} has one label sub-folder ({found.only_label}); labels need two"
    return f"dataset.dir={found.root} has no sub-folder per label"


def _check_objective(objective: Any, cls: type[methods.ClusteringEstimator], unlabelled: str | None = None) -> None:
    """`objective` names a metric (or a list of them) that a run of the method logs (on `unlabelled` data)."""
    allowed = metrics.metric_names(has_basis=cls.has_basis, has_labels=unlabelled is None, has_graph=cls.has_graph)
    several = isinstance(objective, (list, tuple))
    for name in (objective or [None]) if several else [objective]:
        if not isinstance(name, str) or name not in allowed:
            given = repr(name) if not several else f"{name!r} (in {list(objective)})" if objective else "[]"
            logs = f"logs on {unlabelled}" if unlabelled else "logs"
            raise ConfigError(f"objective must be one of {', '.join(allowed)} (the metrics a run of method={cls.name} "
                              f"{logs}), or a list of them; got {given}")


def build_estimator(cfg: dict, X: np.ndarray) -> methods.ClusteringEstimator:
    """The run's unfitted estimator, made once by Hydra from its ``_target_``, checked against its data.

    Parameters
    ----------
    cfg : dict
        The run's resolved config, already passed through `check`.
    X : ndarray of shape (n_samples, n_pixels)
        The training samples: settings that they cannot satisfy (k above the number of samples,
        an SVD start with more components than pixels, too many neighbours) stop here, before
        any run is logged.

    Returns
    -------
    ClusteringEstimator
    """
    from hydra.utils import instantiate

    cls, params = method_params(cfg)
    if cls.needs_nonnegative_data and X.min() < 0:
        raise ConfigError(f"dataset {cfg['dataset']['name']}: NMF needs non-negative pixels; found {X.min():g}")
    estimator = instantiate({"_target_": cfg["method"]["_target_"], **params})
    with estimator_keys(cls, cfg):
        estimator.check_data(X)
    return estimator
