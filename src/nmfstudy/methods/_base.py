"""The method interface (`ClusteringMethod`), the base classes and the registry of methods.

A method is a dataclass that subclasses `Method` and sets `name`: defining it registers it,
and :func:`nmfstudy.methods.get` finds it by that name. Its class attributes declare, once,
what it accepts: `parameters` (its own settings, the ``method.*`` keys of a run),
`sparsity_parameters` (the settings of each sparsity variant it supports), `inits` (its
starts); a `GraphMethod` also takes the kNN graph's settings (`graph.PARAMETERS`).
`Method.__post_init__` checks every declared value with :func:`nmfstudy.params.validate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from numbers import Integral
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from ..nmf import graph as knn
from ..params import Declaration, Interval, InvalidParameterError, validate

# callback(iteration, loss, elapsed_s) -> True to stop early (progress, pruning)
IterationCallback = Callable[[int, float, float], "bool | None"]

_REGISTRY: dict[str, type[Method]] = {}


@runtime_checkable
class ClusteringMethod(Protocol):
    """What the pipeline (evaluation, figures, logging) needs of a clustering method.

    Attributes
    ----------
    name : str
        The method's registered name (``method=<name>`` in a run's config).
    has_basis : bool
        True when `components_` are basis images of a factorization X ~ W H (then `W_` is
        set); False when they are centroids or cluster means.
    k : int
        The number of clusters (components).
    labels_ : ndarray of shape (n_samples,)
        The cluster of every training sample, after `fit`.
    components_ : ndarray of shape (k, n_features)
        One image per component: basis images, centroids or cluster means.
    component_members_ : ndarray of shape (n_samples,)
        The component each training sample belongs to most (titles the images).
    loss_, loss_history_, time_history_, n_iter_, fit_time_s_
        The final loss, the loss and elapsed seconds per iteration (one entry when the
        solver does not report iterations), iterations and fit seconds.
    """

    name: ClassVar[str]
    has_basis: ClassVar[bool]
    k: int
    labels_: np.ndarray
    components_: np.ndarray
    loss_: float
    loss_history_: np.ndarray
    time_history_: np.ndarray
    n_iter_: int
    fit_time_s_: float

    @property
    def component_members_(self) -> np.ndarray:
        """The component each training sample belongs to most."""

    def fit(self, X: np.ndarray) -> ClusteringMethod:
        """Fit on the training samples X (n_samples x n_features)."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Clusters of new samples (held-out test samples)."""

    def reconstruct(self, X: np.ndarray) -> np.ndarray:
        """Approximations of new samples by the fitted method."""


def register(cls: type[Method]) -> type[Method]:
    """Add a method class to the registry under its `name` (done by subclassing `Method`)."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise RuntimeError(f"two methods are named {cls.name!r}: {_REGISTRY[cls.name].__qualname__} and "
                           f"{cls.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> Mapping[str, type[Method]]:
    """The registered method classes by name (import `nmfstudy.methods` first to fill it)."""
    return dict(_REGISTRY)


@dataclass
class Method:
    """Base of every method: `k`, `seed`, `init`, the progress `callback`, and the checks.

    Parameters
    ----------
    k : int
        Number of clusters (components), >= 1.
    seed : int
        Seed of every random choice (starts, restarts, k-means assignment).
    init : str
        The start, one of the class's `inits`.
    callback : callable or None
        ``callback(iteration, loss, elapsed_s)`` after each iteration of an iterative solver;
        returning True stops the fit early.
    """

    name: ClassVar[str] = ""
    has_basis: ClassVar[bool] = False
    inits: ClassVar[tuple[str, ...]] = ()
    parameters: ClassVar[Declaration] = {}
    # sparsity variant -> its settings (the sparsity.* keys); methods without sparsity take "none" only
    sparsity_parameters: ClassVar[Mapping[str, Declaration]] = {"none": {}}
    needs_nonnegative_data: ClassVar[bool] = True
    images_name: ClassVar[str] = "centroids"  # what `components_` are, for figure titles

    k: int
    seed: int = 0
    init: str = ""
    callback: IterationCallback | None = field(default=None, repr=False, kw_only=True)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            register(cls)

    def __post_init__(self) -> None:
        validate(vars(self), {"k": [Interval(Integral, 1)], "seed": [Interval(Integral, 0, 2**32 - 1)]})
        if self.init not in self.inits:
            raise InvalidParameterError("init", f"must be one of {', '.join(self.inits)} for method={self.name}; "
                                        f"got {self.init!r}")
        validate(vars(self), self.declaration())
        self.check_combination()

    @classmethod
    def declaration(cls) -> dict:
        """Every declared setting of the class: its own, each sparsity variant's, the graph's."""
        declared = dict(cls.parameters)
        for variant in cls.sparsity_parameters.values():
            declared.update(variant)
        return declared

    @classmethod
    def settings(cls) -> tuple[str, ...]:
        """The names of the constructor's fields."""
        return tuple(f.name for f in fields(cls))

    def check_combination(self) -> None:
        """Raise `InvalidParameterError` for settings that are valid alone but not together."""

    def check_data(self, X: np.ndarray) -> None:
        """Raise `InvalidParameterError` for a setting these training samples cannot satisfy.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features)
            The training samples.
        """
        n = len(X)
        if self.k > n:
            raise InvalidParameterError("k", f"must be at most the number of training samples ({n}); got {self.k}")

    @property
    def component_members_(self) -> np.ndarray:
        """The cluster of each training sample: what titles a centroid or cluster image."""
        return self.labels_

    def reconstruct(self, X: np.ndarray) -> np.ndarray:
        """Each new sample approximated by the image of the cluster it is assigned to."""
        return self.components_[self.predict(X)]


class BasisMethod(Method):
    """A factorization X ~ W H with basis images H (k x n_features) and coefficients `W_`."""

    has_basis: ClassVar[bool] = True
    images_name: ClassVar[str] = "basis images"

    def check_data(self, X: np.ndarray) -> None:
        """As `Method.check_data`; an SVD-based start also needs k <= min(n_samples, n_features)."""
        super().check_data(X)
        from ..nmf.initialization import SVD_INITS

        n, p = X.shape
        # an SVD-based start takes k singular vectors: at most min(n_samples, n_pixels) exist
        if self.init in SVD_INITS and self.k > min(n, p):
            smaller = f"the number of pixels ({p})" if p <= n else f"the number of training samples ({n})"
            raise InvalidParameterError("k", f"must be at most {smaller} with init={self.init}, an SVD-based start; "
                                        f"got {self.k} (init=random allows any k)")

    @property
    def component_members_(self) -> np.ndarray:
        """The component each training sample loads most on (titles the basis images)."""
        return self.W_.argmax(axis=1)

    def coefficients(self, X: np.ndarray) -> np.ndarray:
        """Non-negative coefficients of new samples against the fitted basis (H held fixed).

        A dead component (an all-zero basis image, e.g. under a strong L1 penalty) gets zero
        coefficients; when every component died, all coefficients are zero.

        Parameters
        ----------
        X : ndarray of shape (n_new, n_features)

        Returns
        -------
        ndarray of shape (n_new, k)
        """
        from sklearn.decomposition import non_negative_factorization

        H = self.components_.astype(X.dtype)
        live = H.any(axis=1)
        W = np.zeros((len(X), self.k), dtype=X.dtype)
        if live.any():
            W[:, live], _, _ = non_negative_factorization(
                X, H=np.ascontiguousarray(H[live]), n_components=int(live.sum()), init="custom",
                update_H=False, solver="cd", max_iter=500, tol=1e-5,
            )
        return W

    def reconstruct(self, X: np.ndarray) -> np.ndarray:
        """New samples approximated by their coefficients times the basis."""
        return self.coefficients(X) @ self.components_


@dataclass
class GraphMethod(Method):
    """A method on the kNN graph of the training samples; a new sample takes its neighbours' cluster.

    Parameters
    ----------
    n_neighbors, weight, pca
        The graph's settings (see :func:`nmfstudy.nmf.graph.knn_graph`).
    cache_dir, fingerprint : str or None
        With both, the graph is cached in `cache_dir` under the data's `fingerprint`.
    """

    n_neighbors: int = 10
    weight: str = "binary"
    pca: int | None = None
    cache_dir: str | None = field(default=None, kw_only=True)
    fingerprint: str | None = field(default=None, kw_only=True)

    @classmethod
    def declaration(cls) -> dict:
        """As `Method.declaration`, with the graph's settings."""
        return {**super().declaration(), **knn.PARAMETERS}

    def check_data(self, X: np.ndarray) -> None:
        """As `Method.check_data`; the graph needs fewer neighbours than samples and a feasible PCA."""
        super().check_data(X)
        n, p = X.shape
        if self.n_neighbors >= n:
            raise InvalidParameterError("n_neighbors", f"must be below the number of training samples ({n}); "
                                        f"got {self.n_neighbors}")
        if self.pca is not None and self.pca > min(n, p):
            smaller = f"the number of pixels ({p})" if p <= n else f"the number of training samples ({n})"
            raise InvalidParameterError("pca", f"must be at most {smaller}; got {self.pca}")

    def _graph(self, X: np.ndarray):
        settings = dict(n_neighbors=self.n_neighbors, weight=self.weight, pca=self.pca, seed=self.seed)
        if self.cache_dir and self.fingerprint:
            return knn.cached_knn_graph(X, self.fingerprint, self.cache_dir, **settings)
        return knn.knn_graph(X, **settings)

    def _keep(self, result, X: np.ndarray, start: float) -> None:
        """Record what every graph solver's result shares: time, iterations, loss history."""
        self.fit_time_s_ = time.perf_counter() - start
        self._X = X
        self.n_iter_ = int(result.n_iter)
        self.loss_history_, self.time_history_ = np.asarray(result.loss_history), np.asarray(result.time_history)
        self.loss_ = float(self.loss_history_[-1])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The majority cluster of each new sample's nearest training samples."""
        neighbors = knn.nearest_train(self._X, X, n_neighbors=self.n_neighbors, pca=self.pca, seed=self.seed)
        return knn.neighbor_vote(self.labels_, neighbors, self.k)
