"""K-means and mini-batch K-means, scikit-learn's, with the study's starts (``method=kmeans``, ``minibatch_kmeans``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from numbers import Integral
from typing import ClassVar

import numpy as np

from ..nmf import MAX_ITER, TOL, initialization
from ..params import Interval
from ._base import ClusteringEstimator


@dataclass(repr=False, eq=False)
class KMeansClustering(ClusteringEstimator):
    """K-means (Lloyd's algorithm, scikit-learn's ``KMeans``) from the study's starts; the centroids are the images.

    Parameters
    ----------
    n_clusters : int
        Clusters, >= 1.
    init : str
        One of :data:`nmfstudy.nmf.initialization.KMEANS_INITS` (``random``: uniform in each
        pixel's range; ``data``: k random samples; ``gaussian``: per-pixel mean and std).
    random_state : int or None
        Seed of the start and of scikit-learn's K-means (None: drawn).
    n_init : int
        Starts; the lowest inertia wins (one start when `init` gives the centroids).
    max_iter : int
    tol : float
        scikit-learn's tolerance on the centroids' movement.
    """

    name: ClassVar[str] = "kmeans"
    inits: ClassVar[tuple[str, ...]] = initialization.KMEANS_INITS
    needs_nonnegative_data: ClassVar[bool] = False
    parameters: ClassVar = {"n_init": [Interval(Integral, 1)], "max_iter": MAX_ITER, "tol": TOL}

    n_clusters: int = 8
    init: str = "kmeans++"
    random_state: int | None = None
    n_init: int = 10
    max_iter: int = 300
    tol: float = 1e-4

    def _estimator(self, init, n_init: int, seed: int):
        from sklearn.cluster import KMeans

        return KMeans(self.k, init=init, n_init=n_init, max_iter=self.max_iter, tol=self.tol, random_state=seed)

    def _fit(self, X: np.ndarray, seed: int, callback) -> float:
        init = initialization.kmeans_init(X, self.k, self.init, seed)
        # An explicit array start is one start: scikit-learn warns and runs it once.
        self.model_ = self._estimator(init, self.n_init if isinstance(init, str) else 1, seed)
        start = time.perf_counter()
        self.model_.fit(X)
        self.labels_ = self.model_.labels_
        self.components_ = self.model_.cluster_centers_.astype(np.float32, copy=False)
        self.n_iter_ = int(self.model_.n_iter_)
        self.loss_ = float(self.model_.inertia_)
        self.loss_history_ = np.array([self.loss_])
        self.time_history_ = np.array([time.perf_counter() - start])
        return start

    def _predict(self, X: np.ndarray) -> np.ndarray:
        """The nearest centroid of each new sample."""
        return self.model_.predict(X)


@dataclass(repr=False, eq=False)
class MiniBatchKMeansClustering(KMeansClustering):
    """Mini-batch K-means (Sculley 2010, scikit-learn's ``MiniBatchKMeans``).

    Parameters
    ----------
    batch_size : int
        Samples per mini-batch; the other parameters as :class:`KMeansClustering`.
    """

    name: ClassVar[str] = "minibatch_kmeans"
    parameters: ClassVar = {**KMeansClustering.parameters, "batch_size": [Interval(Integral, 1)]}

    n_init: int = 3
    max_iter: int = 100
    tol: float = 0.0
    batch_size: int = 1024

    def _estimator(self, init, n_init: int, seed: int):
        from sklearn.cluster import MiniBatchKMeans

        return MiniBatchKMeans(self.k, batch_size=self.batch_size, init=init, n_init=n_init, max_iter=self.max_iter,
                               tol=self.tol, random_state=seed)
