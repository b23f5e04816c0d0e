"""The base classes of the estimators: scikit-learn's contract, one declaration of parameters each.

Every method is a scikit-learn estimator (``BaseEstimator`` + ``ClusterMixin``, plus
``TransformerMixin`` where it has a basis): its constructor only stores its parameters,
`fit(X, y=None)` checks them against the class's declaration (`parameters`, the `sparsity_parameters`
of each sparsity variant, its `inits`; a `GraphEstimator` also the kNN graph's settings) with
:func:`nmfstudy.params.validate`, then the data (`validate_data`: 2-D, finite, dense, at least two
rows; non-negative where the method needs it), fits, and sets `n_features_in_` and the fitted
attributes. The numerics are plain functions of :mod:`nmfstudy.nmf`; these classes only hold
parameters, call them, and keep what they return.

What the pipeline (evaluation, figures, logging) relies on besides scikit-learn's API: `k` (the
number of clusters, whatever the parameter's name), `has_basis`, `images_name`, `components_`,
`component_members_`, `loss_`, `loss_history_`, `time_history_`, `n_iter_`, `fit_time_s_`, and
`reconstruct`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, check_non_negative, validate_data

from ..nmf import graph as knn
from ..nmf.initialization import NMF_INITS, SVD_INITS
from ..params import Declaration, Interval, InvalidParameterError, validate

# callback(iteration, loss, elapsed_s) -> True to stop early (progress, pruning)
IterationCallback = Callable[[int, float, float], "bool | None"]
SEED = [Interval(Integral, 0, 2**32 - 1), None]  # numpy's and scikit-learn's seeds; None draws one


@dataclass(repr=False, eq=False)
class ClusteringEstimator(ClusterMixin, BaseEstimator):
    """Base of every method: the declaration, the checks in `fit`, `predict` and scikit-learn's tags.

    Subclasses declare `size_parameter` (``"n_clusters"`` or ``"n_components"``), their `inits`,
    `parameters` and `sparsity_parameters`, and implement `_fit(X, seed, callback)` and `_predict(X)`.
    """

    name: ClassVar[str] = ""  # the method's name in a run's config (method=<name>) and in messages
    size_parameter: ClassVar[str] = "n_clusters"
    has_basis: ClassVar[bool] = False
    has_graph: ClassVar[bool] = False  # fitted on the kNN graph of the samples (GraphEstimator)
    inits: ClassVar[tuple[str, ...]] = ()
    parameters: ClassVar[Declaration] = {}
    # sparsity variant -> its settings (the sparsity.* keys); methods without sparsity take "none" only
    sparsity_parameters: ClassVar[Mapping[str, Declaration]] = {"none": {}}
    needs_nonnegative_data: ClassVar[bool] = True
    images_name: ClassVar[str] = "centroids"  # what `components_` are, for figure titles

    @property
    def k(self) -> int:
        """The number of clusters (components): `n_clusters` or `n_components`."""
        return getattr(self, self.size_parameter)

    @classmethod
    def declaration(cls) -> dict:
        """Every declared parameter: the size, `random_state`, its own, each sparsity variant's."""
        declared = {cls.size_parameter: [Interval(Integral, 1)], "random_state": SEED}
        declared.update(cls.parameters)
        for variant in cls.sparsity_parameters.values():
            declared.update(variant)
        return declared

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> None:
        """Raise `InvalidParameterError` for the first parameter (or combination) not allowed.

        The one validator of the class's declaration: `fit` calls it on `get_params()`, and a
        run's config check on the settings before the estimator is made.

        Parameters
        ----------
        params : mapping
            Every constructor parameter by name.
        """
        declared = cls.declaration()
        validate(params, {name: declared.pop(name) for name in (cls.size_parameter, "random_state")})
        if params["init"] not in cls.inits:
            names = ", ".join(str(init) for init in cls.inits if init is not None)
            raise InvalidParameterError("init", f"must be one of {names} for method={cls.name}; got {params['init']!r}")
        validate(params, declared)
        cls.check_combination(params)

    @classmethod
    def check_combination(cls, params: Mapping[str, Any]) -> None:
        """Raise `InvalidParameterError` for settings that are valid alone but not together."""

    def check_data(self, X: np.ndarray) -> None:
        """Raise `InvalidParameterError` for a parameter these training samples cannot satisfy.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features)
            The training samples.
        """
        n = len(X)
        if self.k > n:
            raise InvalidParameterError(self.size_parameter,
                                        f"must be at most the number of training samples ({n}); got {self.k}")

    def _validated(self, X, *, reset: bool) -> np.ndarray:
        """X as a float32 array checked as scikit-learn checks it (and non-negative where needed)."""
        X = validate_data(self, X, reset=reset, dtype=np.float32, ensure_min_samples=2 if reset else 1)
        if self.needs_nonnegative_data:
            check_non_negative(X, f"{type(self).__name__}.{'fit' if reset else 'predict'}")
        return X

    def fit(self, X, y=None, *, callback: IterationCallback | None = None):
        """Fit on the training samples.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
            The training samples (non-negative for the NMF methods); converted to float32.
        y : ignored
            Present for scikit-learn's API; clustering uses no labels.
        callback : callable, optional
            ``callback(iteration, loss, elapsed_s)`` after each iteration of an iterative solver;
            returning True stops the fit early (progress lines, pruning).

        Returns
        -------
        self
        """
        self.check_params(self.get_params())
        X = self._validated(X, reset=True)
        self.check_data(X)
        start = self._fit(X, self._seed(), callback)
        self.fit_time_s_ = time.perf_counter() - start
        self.labels_ = np.asarray(self.labels_, dtype=np.int64)
        return self

    def _seed(self) -> int:
        """`random_state` as the int seed the numerics take (drawn when None)."""
        if self.random_state is None:
            return int(np.random.randint(0, 2**31 - 1))
        return int(self.random_state)

    def _keep_history(self, result) -> None:
        """The loss and time per iteration, the iterations and the final loss of a solver's result."""
        self.n_iter_ = int(result.n_iter)
        self.loss_history_ = np.asarray(result.loss_history, dtype=float)
        self.time_history_ = np.asarray(result.time_history, dtype=float)
        self.loss_ = float(self.loss_history_[-1])

    def predict(self, X) -> np.ndarray:
        """The cluster of each new sample.

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)
            New samples, in the pixel scale of the training samples.

        Returns
        -------
        ndarray of shape (n_samples,), int64
        """
        check_is_fitted(self)
        return np.asarray(self._predict(self._validated(X, reset=False)), dtype=np.int64)

    @property
    def component_members_(self) -> np.ndarray:
        """The cluster of each training sample: what titles a centroid or cluster image."""
        return self.labels_

    def reconstruct(self, X) -> np.ndarray:
        """Each new sample approximated by the image of the cluster it is assigned to."""
        return self.components_[self.predict(X)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = self.needs_nonnegative_data
        return tags


@dataclass(repr=False, eq=False)
class BasisEstimator(TransformerMixin, ClusteringEstimator):
    """A factorization X ~ W H with basis images H (k x n_features) = `components_` and coefficients `W_`.

    `transform` gives the coefficients of new samples against the fitted basis.
    """

    size_parameter: ClassVar[str] = "n_components"
    has_basis: ClassVar[bool] = True
    images_name: ClassVar[str] = "basis images"
    # None: scikit-learn's NMF rule, nndsvda when k <= min(n_samples, n_features), else random
    inits: ClassVar[tuple] = (None, *NMF_INITS)

    def _start(self, X: np.ndarray) -> str:
        """The start `init` names, or scikit-learn's choice for None."""
        if self.init is not None:
            return self.init
        return "nndsvda" if self.k <= min(X.shape) else "random"

    def check_data(self, X: np.ndarray) -> None:
        """As `ClusteringEstimator.check_data`; an SVD-based start also needs k <= min(n_samples, n_features)."""
        super().check_data(X)
        n, p = X.shape
        # an SVD-based start takes k singular vectors: at most min(n_samples, n_pixels) exist
        if self.init in SVD_INITS and self.k > min(n, p):
            smaller = f"the number of pixels ({p})" if p <= n else f"the number of training samples ({n})"
            raise InvalidParameterError(self.size_parameter,
                                        f"must be at most {smaller} with init={self.init}, an SVD-based start; "
                                        f"got {self.k} (init=random allows any k)")

    @property
    def component_members_(self) -> np.ndarray:
        """The component each training sample loads most on (titles the basis images)."""
        return self.W_.argmax(axis=1)

    def transform(self, X) -> np.ndarray:
        """Non-negative coefficients of new samples against the fitted basis (H held fixed).

        Parameters
        ----------
        X : array_like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, k), float32
        """
        check_is_fitted(self)
        return self.coefficients(self._validated(X, reset=False))

    def coefficients(self, X: np.ndarray) -> np.ndarray:
        """`transform` of already validated samples.

        A dead component (an all-zero basis image, e.g. under a strong L1 penalty) gets zero
        coefficients; when every component died, all coefficients are zero.
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

    def reconstruct(self, X) -> np.ndarray:
        """New samples approximated by their coefficients times the basis."""
        return self.transform(X) @ self.components_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # the numerics run in float32 whatever comes in
        return tags


@dataclass(repr=False, eq=False)
class GraphEstimator(ClusteringEstimator):
    """A method on the kNN graph of the training samples; a new sample takes its neighbours' cluster.

    To place new samples it keeps its training samples (in the PCA space when `pca` is set:
    ``n_samples x pca`` float32; else the pixels, as uint8 when they are multiples of 1/255, as
    MNIST's and the image folders' are, else float32): see `neighbor_index_`.

    The graph's settings are keyword-only, declared once here for every graph method. Their
    defaults are one construction for every data set, the config's `graph=fuzzy`: UMAP's fuzzy
    simplicial set on the 15 nearest neighbours, searched on the samples projected on 50 principal
    components (chosen on MNIST, confirmed on the 5,000-digit set, scikit-learn's digits and
    scikit-image's faces: bench/graph_choice_results.md). Unit norm (`normalize=True`) is full
    MNIST's own setting, not a default: it lowered NMFR and DCD on scikit-learn's digits by up to 0.07.

    Parameters (of every subclass)
    ----------
    n_neighbors, weight, normalize, pca
        The graph's settings (see :func:`nmfstudy.nmf.graph.knn_graph`). `pca` is the most
        principal components the search runs on: data with no more dimensions than that
        (min(n_samples, n_features) <= pca) are searched as they are, which keeps every distance.
    cache_dir : str or None
        A folder where the graph is cached, keyed by the samples' values and the settings; None: no cache.

    Attributes (besides the base class's)
    ----------
    modularity_ : float
        The clusters' modularity on the graph they were fitted on (:func:`nmfstudy.nmf.graph.modularity`):
        a score without labels, which a study can maximize to choose the graph's settings.
    """

    has_graph: ClassVar[bool] = True

    n_neighbors: int = field(default=15, kw_only=True)
    weight: str = field(default="fuzzy", kw_only=True)
    normalize: bool = field(default=False, kw_only=True)
    pca: int | None = field(default=50, kw_only=True)
    cache_dir: str | None = field(default=None, kw_only=True)

    @classmethod
    def declaration(cls) -> dict:
        """As `ClusteringEstimator.declaration`, with the graph's settings."""
        return {**super().declaration(), **knn.PARAMETERS}

    def check_data(self, X: np.ndarray) -> None:
        """As `ClusteringEstimator.check_data`; the graph needs fewer neighbours than samples."""
        super().check_data(X)
        n = len(X)
        if self.n_neighbors >= n:
            raise InvalidParameterError("n_neighbors", f"must be below the number of training samples ({n}); "
                                        f"got {self.n_neighbors}")

    def _pca(self, X: np.ndarray) -> int | None:
        """`pca`, or None for data with no more dimensions than it: n samples span at most min(n, p), and a
        projection onto all of them keeps every distance, so the search runs on the features themselves."""
        return self.pca if self.pca is not None and self.pca < min(X.shape) else None

    def _graph(self, X: np.ndarray, seed: int):
        """The kNN graph of X and the index that places new samples, on one projection (both from the cache
        when `cache_dir` is set); `graph_time_s_` is the time they took."""
        settings = dict(n_neighbors=self.n_neighbors, weight=self.weight, normalize=self.normalize,
                        pca=self._pca(X), seed=seed)
        start = time.perf_counter()
        if self.cache_dir:
            S, self.neighbor_index_ = knn.cached_graph_and_index(X, knn.data_key(X), self.cache_dir, **settings)
        else:
            S, self.neighbor_index_ = knn.graph_and_index(X, **settings)
        self.graph_time_s_ = time.perf_counter() - start
        self._graph_of_fit = S
        return S

    def fit(self, X, y=None, *, callback: IterationCallback | None = None):
        """As :meth:`ClusteringEstimator.fit`; also scores the clusters on their own graph (`modularity_`)."""
        try:
            super().fit(X, y, callback=callback)
            self.modularity_ = knn.modularity(self._graph_of_fit, self.labels_)
        finally:
            self.__dict__.pop("_graph_of_fit", None)  # the graph is the cache's, not the model's: kept out of pickles
        return self

    def _predict(self, X: np.ndarray) -> np.ndarray:
        """The majority cluster of each new sample's nearest training samples."""
        neighbors = self.neighbor_index_.nearest(X, self.n_neighbors)
        return knn.neighbor_vote(self.labels_, neighbors, self.k)
