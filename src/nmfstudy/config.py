"""Check a run's settings (a plain dict, as Hydra resolves it) and build its method.

Every check names the key and what it allows, so that a user mistake ends in
one line, before any data is fitted or any run is logged.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np

from . import initialization, metrics
from .data import DATASETS
from .methods import ASSIGN_RULES, NMF_SOLVERS, GNMFClustering, KMeansClustering, NMFClustering, SymNMFClustering

NMF_METHODS = ("nmf", "gnmf")  # factorizations with basis images, started by an NMF init
KMEANS_METHODS = ("kmeans", "minibatch_kmeans")
GRAPH_METHODS = ("gnmf", "symnmf")
METHODS = ("nmf", "kmeans", "minibatch_kmeans", "gnmf", "symnmf")
GNMF_SOLVERS = ("hals", "mu")
SYMNMF_SOLVERS = ("anls", "mu")
GRAPH_WEIGHTS = ("binary", "heat")
SPARSITIES = ("none", "l1", "hoyer")


class ConfigError(ValueError):
    """A setting out of range or of the wrong kind; the message names the key."""


def _int(value: Any, key: str, low: int = 1, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{key} must be an integer {allowed}, got {value!r}")
    return int(value)


def _real(value: Any, key: str, low: float = 0.0, high: float = math.inf, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if value < low or value > high or (high_open and value == high):
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{key} must be in [{low}, {high}{bracket}, got {value!r}")
    return float(value)


def _choice(value: Any, key: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def check(cfg: dict) -> None:
    """Raise ConfigError for the first setting that cannot work; data-dependent checks are in `check_data`."""
    _int(cfg.get("k"), "k")
    _int(cfg.get("seed"), "seed", low=0, high=2**32 - 1)  # numpy's and scikit-learn's seeds
    _real(cfg.get("progress_every_s", 2.0), "progress_every_s")
    dataset, method, init, sparsity = (cfg.get(key) or {} for key in ("dataset", "method", "init", "sparsity"))
    _choice(dataset.get("name"), "dataset", DATASETS)
    if dataset.get("n_samples") is not None:
        _int(dataset["n_samples"], "dataset.n_samples", low=2)
    if dataset.get("test_size") is not None:
        _real(dataset["test_size"], "dataset.test_size", low=0.01, high=0.99)
    name = _choice(method.get("name"), "method", METHODS)
    _int(method.get("max_iter"), "method.max_iter")
    _real(method.get("tol"), "method.tol")
    allowed_inits = (initialization.NMF_INITS if name in NMF_METHODS
                     else ("random",) if name == "symnmf" else initialization.KMEANS_INITS)
    if init.get("name") not in allowed_inits:
        raise ConfigError(f"init must be one of {', '.join(allowed_inits)} for method={name}; got {init.get('name')!r}")
    sparse = _choice(sparsity.get("name"), "sparsity", SPARSITIES)
    _check_objective(cfg.get("objective", "accuracy"), name)
    if name in GRAPH_METHODS:
        graph = cfg.get("graph") or {}
        _int(graph.get("n_neighbors"), "graph.n_neighbors")
        _choice(graph.get("weight"), "graph.weight", GRAPH_WEIGHTS)
        if graph.get("pca") is not None:
            _int(graph["pca"], "graph.pca")
        if sparse != "none":
            raise ConfigError(f"sparsity must be none for method={name}; got {sparse!r}")
        if name == "gnmf":
            _choice(method.get("solver"), "method.solver", GNMF_SOLVERS)
            _choice(method.get("assign"), "method.assign", ASSIGN_RULES)
            _real(method.get("lam"), "method.lam")
        else:
            _choice(method.get("solver"), "method.solver", SYMNMF_SOLVERS)
            _int(method.get("n_init", 1), "method.n_init")
    elif name == "nmf":
        solver = _choice(method.get("solver"), "method.solver", NMF_SOLVERS)
        _choice(method.get("assign"), "method.assign", ASSIGN_RULES)
        _real(method.get("inner_alpha", 0.0), "method.inner_alpha")
        if sparse == "l1":
            _real(sparsity.get("alpha_W"), "sparsity.alpha_W")
            if sparsity.get("alpha_H") != "same":
                _real(sparsity.get("alpha_H"), "sparsity.alpha_H")
            _real(sparsity.get("l1_ratio"), "sparsity.l1_ratio", high=1.0)
        if sparse == "hoyer":
            if solver.startswith("sklearn"):
                raise ConfigError(f"sparsity=hoyer needs method.solver=hals or mu; got {solver!r}")
            targets = [sparsity.get("s_W"), sparsity.get("s_H")]
            if all(t is None for t in targets):
                raise ConfigError("sparsity=hoyer needs sparsity.s_W or sparsity.s_H, a target in [0, 1)")
            for key, target in zip(("sparsity.s_W", "sparsity.s_H"), targets, strict=False):
                if target is not None:
                    _real(target, key, high=1.0, high_open=True)
    else:
        if sparse != "none":
            raise ConfigError(f"sparsity must be none for method={name}; got {sparse!r}")
        _int(method.get("n_init"), "method.n_init")
        if name == "minibatch_kmeans":
            _int(method.get("batch_size"), "method.batch_size")


def _check_objective(objective: Any, method: str) -> None:
    """`objective` names a metric (or a list of them) that a run of `method` logs."""
    allowed = metrics.metric_names(has_basis=method in NMF_METHODS)
    several = isinstance(objective, (list, tuple))
    for name in (objective or [None]) if several else [objective]:
        if not isinstance(name, str) or name not in allowed:
            given = repr(name) if not several else f"{name!r} (in {list(objective)})" if objective else "[]"
            raise ConfigError(f"objective must be one of {', '.join(allowed)} (the metrics a run of method={method} "
                              f"logs), or a list of them; got {given}")


def check_data(cfg: dict, X: np.ndarray) -> None:
    """Checks that need the loaded training data (X: n_samples x n_pixels)."""
    n, p = X.shape
    k, method, init = cfg["k"], cfg["method"]["name"], cfg["init"]["name"]
    if k > n:
        raise ConfigError(f"k must be at most the number of training samples ({n}); got {k}")
    if method not in KMEANS_METHODS and X.min() < 0:
        raise ConfigError(f"dataset {cfg['dataset']['name']}: NMF needs non-negative pixels; found {X.min():g}")
    # an SVD-based start takes k singular vectors: at most min(n_samples, n_pixels) exist
    smaller = f"the number of pixels ({p})" if p <= n else f"the number of training samples ({n})"
    if method in NMF_METHODS and init in initialization.SVD_INITS and k > min(n, p):
        raise ConfigError(f"k must be at most {smaller} with init={init}, an SVD-based start; got {k} "
                          f"(init=random allows any k)")
    if method in GRAPH_METHODS:
        graph = cfg["graph"]
        if graph["n_neighbors"] >= n:
            raise ConfigError(f"graph.n_neighbors must be below the number of training samples ({n}); "
                              f"got {graph['n_neighbors']}")
        if graph.get("pca") is not None and graph["pca"] > min(n, p):
            raise ConfigError(f"graph.pca must be at most {smaller}; got {graph['pca']}")


def build_method(cfg: dict, callback=None, *, fingerprint: str | None = None, cache_dir: str | None = None):
    """The unfitted method that `cfg` describes (call `check` first).

    Graph methods cache their kNN graph in `cache_dir`, keyed by the dataset `fingerprint`.
    """
    method, sparsity = cfg["method"], cfg["sparsity"]
    if method["name"] in GRAPH_METHODS:
        graph = cfg["graph"]
        common = dict(n_neighbors=graph["n_neighbors"], weight=graph["weight"], pca=graph.get("pca"),
                      max_iter=method["max_iter"], tol=method["tol"], solver=method["solver"], seed=cfg["seed"],
                      cache_dir=cache_dir, fingerprint=fingerprint, callback=callback)
        if method["name"] == "gnmf":
            return GNMFClustering(cfg["k"], lam=method["lam"], init=cfg["init"]["name"],
                                  assign_rule=method["assign"], **common)
        return SymNMFClustering(cfg["k"], n_init=method.get("n_init", 1), **common)
    if method["name"] == "nmf":
        penalties = {}
        if sparsity["name"] == "l1":
            penalties = dict(alpha_W=sparsity["alpha_W"], alpha_H=sparsity["alpha_H"], l1_ratio=sparsity["l1_ratio"])
        elif sparsity["name"] == "hoyer":
            penalties = dict(hoyer_W=sparsity.get("s_W"), hoyer_H=sparsity.get("s_H"))
        return NMFClustering(
            cfg["k"], solver=method["solver"], init=cfg["init"]["name"], max_iter=method["max_iter"],
            tol=method["tol"], assign_rule=method["assign"], inner_alpha=method.get("inner_alpha", 0.0),
            seed=cfg["seed"], callback=callback, **penalties,
        )
    return KMeansClustering(
        cfg["k"], init=cfg["init"]["name"], n_init=method["n_init"], max_iter=method["max_iter"], tol=method["tol"],
        minibatch=method["name"] == "minibatch_kmeans", batch_size=method.get("batch_size", 1024), seed=cfg["seed"],
    )
