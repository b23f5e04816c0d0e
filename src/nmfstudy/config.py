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
from .params import Interval, InvalidParameterError, Options
from .params import check as check_value

# The groups of a run's config that hold a method's settings, and what each holds
GROUPS = ("method", "sparsity", "graph")
# graph.cache_dir is where the run keeps graphs, not a setting of the method
RUN_LEVEL_GRAPH_KEYS = ("cache_dir",)
RUN_PARAMETERS = {
    "k": [Interval(Integral, 1)],
    "seed": [Interval(Integral, 0, 2**32 - 1)],  # numpy's and scikit-learn's seeds
    "progress_every_s": [Interval(Real, 0.0)],
}
# tracking.figures: every run draws its figures (all); a study's trial only when it beats the trials
# finished before it, so that the best trial has them (final); no run draws any (none)
FIGURES = ("all", "final", "none")
# load_dataset's arguments -> their config keys
DATASET_KEYS = {"name": "dataset", "dir": "dataset.dir", "n_samples": "dataset.n_samples",
                "test_size": "dataset.test_size", "image_size": "dataset.image_size", "cache_dir": "dataset.cache_dir"}
DATASET_PARAMETERS = {
    "n_samples": [Interval(Integral, 2), None],
    "test_size": [Interval(Real, 0.01, 0.99), None],
}


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


def method_class(cfg: dict) -> type[methods.Method]:
    """The class of the run's method (``method.name``).

    Parameters
    ----------
    cfg : dict
        The run's resolved config.

    Returns
    -------
    type
        The registered `nmfstudy.methods.Method` subclass.

    Raises
    ------
    ConfigError
        When no method is registered under that name.
    """
    name = (cfg.get("method") or {}).get("name")
    try:
        return methods.get(name)
    except KeyError:
        raise ConfigError(f"method must be one of {', '.join(methods.names())}; got {name!r}") from None


def _method_settings(cls: type[methods.Method], cfg: dict) -> tuple[dict[str, Any], dict[str, str]]:
    """The constructor arguments of the run's method from its config groups, and their config keys."""
    sparsity = cfg.get("sparsity") or {}
    variant = sparsity.get("name")
    if variant not in cls.sparsity_parameters:
        raise ConfigError(f"sparsity must be {' or '.join(cls.sparsity_parameters)} for method={cls.name}; "
                          f"got {variant!r}")
    groups = {"method": cfg.get("method") or {}, "sparsity": sparsity}
    if issubclass(cls, methods.GraphMethod):
        groups["graph"] = {key: value for key, value in (cfg.get("graph") or {}).items()
                           if key not in RUN_LEVEL_GRAPH_KEYS}
    settings, keys = {"k": cfg.get("k"), "seed": cfg.get("seed"), "init": (cfg.get("init") or {}).get("name")}, {}
    accepted = set(cls.settings())
    for group, values in groups.items():
        for key, value in values.items():
            if key == "name":
                continue
            if key not in accepted:
                raise ConfigError(f"{group}.{key} is not a setting of method={cls.name}")
            settings[key], keys[key] = value, f"{group}.{key}"
    return settings, keys


def _check_sparsity_variant(cls: type[methods.Method], cfg: dict) -> None:
    """A sparsity variant with settings needs one of them set (Hoyer's: a target for W or H)."""
    sparsity = cfg.get("sparsity") or {}
    declared = cls.sparsity_parameters.get(sparsity.get("name")) or {}
    if declared and all(sparsity.get(key) is None for key in declared):
        raise ConfigError(f"sparsity={sparsity['name']} needs "
                          f"{' or '.join(f'sparsity.{key}' for key in declared)} set; all are null")


def check(cfg: dict, *, optimized: bool = True) -> None:
    """Raise ConfigError for the first setting that cannot work; data-dependent checks are in `check_data`.

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
    with config_keys({"figures": "tracking.figures"}):
        check_value("figures", (cfg.get("tracking") or {}).get("figures", "final"), [Options(FIGURES)])
    dataset = cfg.get("dataset") or {}
    if dataset.get("name") not in DATASETS:
        raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset.get('name')!r}")
    with config_keys(DATASET_KEYS):
        for key, constraints in DATASET_PARAMETERS.items():
            check_value(key, dataset.get(key), constraints)
        unlabelled = None
        if dataset["name"] == "images":  # the folder's layout tells whether there are labels: no image is read
            parse_image_size(dataset.get("image_size"))
            found = scan_image_folder(dataset.get("dir"))
            unlabelled = found.root if found.labels is None else None
    cls = method_class(cfg)
    _check_sparsity_variant(cls, cfg)
    build_method(cfg)
    _check_objective(cfg.get("objective", "accuracy"), cls)
    if optimized and unlabelled is not None:
        _check_objective(cfg.get("objective"), cls,
                         unlabelled=f"images without labels: dataset.dir={unlabelled} has no sub-folder per label")


def _check_objective(objective: Any, cls: type[methods.Method], unlabelled: str | None = None) -> None:
    """`objective` names a metric (or a list of them) that a run of the method logs (on `unlabelled` data)."""
    allowed = metrics.metric_names(has_basis=cls.has_basis, has_labels=unlabelled is None)
    several = isinstance(objective, (list, tuple))
    for name in (objective or [None]) if several else [objective]:
        if not isinstance(name, str) or name not in allowed:
            given = repr(name) if not several else f"{name!r} (in {list(objective)})" if objective else "[]"
            logs = f"logs on {unlabelled}" if unlabelled else "logs"
            raise ConfigError(f"objective must be one of {', '.join(allowed)} (the metrics a run of method={cls.name} "
                              f"{logs}), or a list of them; got {given}")


def check_data(cfg: dict, X: np.ndarray) -> None:
    """Checks that need the loaded training data.

    Parameters
    ----------
    cfg : dict
        The run's resolved config, already passed through `check`.
    X : ndarray of shape (n_samples, n_pixels)
        The training samples.
    """
    cls = method_class(cfg)
    settings, keys = _method_settings(cls, cfg)
    if cls.needs_nonnegative_data and X.min() < 0:
        raise ConfigError(f"dataset {cfg['dataset']['name']}: NMF needs non-negative pixels; found {X.min():g}")
    with config_keys(keys):
        cls(**settings).check_data(X)


def build_method(cfg: dict, callback=None, *, fingerprint: str | None = None,
                 cache_dir: str | None = None) -> methods.ClusteringMethod:
    """The unfitted method that `cfg` describes.

    Parameters
    ----------
    cfg : dict
        The run's resolved config.
    callback : callable, optional
        ``callback(iteration, loss, elapsed_s)`` for iterative solvers (progress, pruning).
    fingerprint, cache_dir : str, optional
        Graph methods cache their kNN graph in `cache_dir`, keyed by the dataset `fingerprint`.

    Returns
    -------
    ClusteringMethod
    """
    cls = method_class(cfg)
    settings, keys = _method_settings(cls, cfg)
    if issubclass(cls, methods.GraphMethod):
        settings.update(fingerprint=fingerprint, cache_dir=cache_dir)
    with config_keys(keys):
        return cls(**settings, callback=callback)
