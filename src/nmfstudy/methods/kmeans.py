"""K-means and mini-batch K-means, scikit-learn's (``method=kmeans``, ``method=minibatch_kmeans``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from numbers import Integral
from typing import ClassVar

import numpy as np

from ..nmf import MAX_ITER, TOL, initialization
from ..params import Interval
from ._base import Method


@dataclass
class KMeansClustering(Method):
    """K-means (Lloyd's algorithm, scikit-learn's ``KMeans``); the centroids are the images.

    Parameters
    ----------
    k, seed, init
        As :class:`~nmfstudy.methods.Method`; `init` is one of
        :data:`nmfstudy.nmf.initialization.KMEANS_INITS`.
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

    init: str = "kmeans++"
    n_init: int = 10
    max_iter: int = 300
    tol: float = 1e-4

    def _estimator(self, init, n_init: int):
        from sklearn.cluster import KMeans

        return KMeans(self.k, init=init, n_init=n_init, max_iter=self.max_iter, tol=self.tol, random_state=self.seed)

    def fit(self, X: np.ndarray) -> KMeansClustering:
        """Cluster X (n_samples x n_features)."""
        init = initialization.kmeans_init(X, self.k, self.init, self.seed)
        # An explicit array start is one start: scikit-learn warns and runs it once.
        model = self._estimator(init, self.n_init if isinstance(init, str) else 1)
        start = time.perf_counter()
        model.fit(X)
        self.fit_time_s_ = time.perf_counter() - start
        self._model = model
        self.labels_ = model.labels_.astype(np.int64)
        self.components_ = model.cluster_centers_.astype(np.float32, copy=False)
        self.n_iter_ = int(model.n_iter_)
        self.loss_ = float(model.inertia_)
        self.loss_history_ = np.array([self.loss_])
        self.time_history_ = np.array([self.fit_time_s_])
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The nearest centroid of each new sample."""
        return self._model.predict(X).astype(np.int64)


@dataclass
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

    def _estimator(self, init, n_init: int):
        from sklearn.cluster import MiniBatchKMeans

        return MiniBatchKMeans(self.k, batch_size=self.batch_size, init=init, n_init=n_init, max_iter=self.max_iter,
                               tol=self.tol, random_state=self.seed)
