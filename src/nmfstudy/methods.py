"""Clustering methods behind one small interface: fit, labels, images, loss, assign.

Each method is a thin shell: the numerical work lives in `solvers` (our NMF),
scikit-learn (its NMF and K-means) or `graph_nmf`. A fitted method gives:

- `labels_`: the cluster of every training sample,
- `components_`: k x n_features images (NMF basis images or K-means centroids),
- `loss_` and `loss_history_` / `time_history_` (per iteration where the solver tells),
- `n_iter_`, `fit_time_s_`,
- `assign(X)`: clusters for new samples, `reconstruct(X)`: their approximations.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import NMF, non_negative_factorization
from sklearn.preprocessing import normalize

from . import initialization

NMF_SOLVERS = ("hals", "mu", "sklearn-cd", "sklearn-mu")
ASSIGN_RULES = ("argmax", "kmeans")

# callback(iteration, loss, elapsed_s) -> True to stop early (progress, pruning)
IterationCallback = Callable[[int, float, float], "bool | None"]


class _BasisModel:
    """What every factorization with basis images H (k x n_features) shares."""

    @property
    def component_members_(self) -> np.ndarray:
        """The component each training sample loads most on (titles the basis images)."""
        return self.W_.argmax(axis=1)

    def coefficients(self, X: np.ndarray) -> np.ndarray:
        """Non-negative coefficients of new samples against the fitted basis (H held fixed).

        A dead component (an all-zero basis image, e.g. under a strong L1 penalty) gets zero
        coefficients; when every component died, all coefficients are zero.
        """
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
        return self.coefficients(X) @ self.components_


class _GraphModel:
    """Methods on the kNN graph of the training samples: a new sample takes its neighbours' cluster."""

    def _graph(self, X: np.ndarray):
        from . import graph

        settings = dict(n_neighbors=self.n_neighbors, weight=self.weight, pca=self.pca, seed=self.seed)
        if self.cache_dir and self.fingerprint:
            return graph.cached_knn_graph(X, self.fingerprint, self.cache_dir, **settings)
        return graph.knn_graph(X, **settings)

    def _keep(self, result, X: np.ndarray, start: float) -> None:
        """Record what every graph solver's result shares: time, iterations, loss history."""
        self.fit_time_s_ = time.perf_counter() - start
        self._X = X
        self.n_iter_ = int(result.n_iter)
        self.loss_history_, self.time_history_ = np.asarray(result.loss_history), np.asarray(result.time_history)
        self.loss_ = float(self.loss_history_[-1])

    def assign(self, X: np.ndarray) -> np.ndarray:
        from . import graph

        neighbors = graph.nearest_train(self._X, X, n_neighbors=self.n_neighbors, pca=self.pca, seed=self.seed)
        return graph.neighbor_vote(self.labels_, neighbors, self.k)


@dataclass
class NMFClustering(_BasisModel):
    """NMF X ~ W H; clusters from the coefficients W (argmax, or k-means on L2-normalized rows)."""

    k: int
    solver: str = "hals"
    init: str = "nndsvda"
    max_iter: int = 500
    tol: float = 1e-4
    assign_rule: str = "argmax"
    inner_alpha: float = 0.0
    alpha_W: float = 0.0
    alpha_H: float | str = "same"
    l1_ratio: float = 0.0
    hoyer_W: float | None = None
    hoyer_H: float | None = None
    seed: int = 0
    callback: IterationCallback | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.solver not in NMF_SOLVERS:
            raise ValueError(f"method.solver must be one of {', '.join(NMF_SOLVERS)}, got {self.solver!r}")
        if self.assign_rule not in ASSIGN_RULES:
            raise ValueError(f"method.assign must be one of {', '.join(ASSIGN_RULES)}, got {self.assign_rule!r}")
        if self.solver.startswith("sklearn") and (self.hoyer_W is not None or self.hoyer_H is not None):
            raise ValueError("sparsity=hoyer needs method.solver=hals or mu; scikit-learn's NMF has no such constraint")

    def fit(self, X: np.ndarray) -> "NMFClustering":
        W, H = initialization.nmf_init(X, self.k, self.init, self.seed)
        start = time.perf_counter()
        if self.solver.startswith("sklearn"):
            model = NMF(
                self.k, init="custom", solver=self.solver.removeprefix("sklearn-"), max_iter=self.max_iter,
                tol=self.tol, alpha_W=self.alpha_W, alpha_H=self.alpha_H, l1_ratio=self.l1_ratio,
                random_state=self.seed,
            )
            W = model.fit_transform(X, W=W, H=H)
            H = model.components_
            self.n_iter_ = int(model.n_iter_)
            self.loss_history_ = np.array([model.reconstruction_err_])
            self.time_history_ = np.array([time.perf_counter() - start])
        else:
            from . import solvers

            solve = (functools.partial(solvers.nmf_hals, inner_alpha=self.inner_alpha) if self.solver == "hals"
                     else solvers.nmf_mu)
            result = solve(
                X, W, H, max_iter=self.max_iter, tol=self.tol, alpha_W=self.alpha_W, alpha_H=self.alpha_H,
                l1_ratio=self.l1_ratio, hoyer_W=self.hoyer_W, hoyer_H=self.hoyer_H, callback=self.callback,
            )
            W, H = result.W, result.H
            self.n_iter_ = int(result.n_iter)
            self.loss_history_ = np.asarray(result.loss_history)
            self.time_history_ = np.asarray(result.time_history)
        self.fit_time_s_ = time.perf_counter() - start
        self.W_ = W.astype(np.float32, copy=False)
        self.components_ = H.astype(np.float32, copy=False)
        self.loss_ = float(self.loss_history_[-1])
        if self.assign_rule == "kmeans":
            self._kmeans = KMeans(self.k, n_init=10, random_state=self.seed).fit(normalize(self.W_))
            self.labels_ = self._kmeans.labels_.astype(np.int64)
        else:
            self.labels_ = self.W_.argmax(axis=1)
        return self

    def assign(self, X: np.ndarray) -> np.ndarray:
        W = self.coefficients(X)
        if self.assign_rule == "kmeans":
            return self._kmeans.predict(normalize(W)).astype(np.int64)
        return W.argmax(axis=1)


@dataclass
class KMeansClustering:
    """K-means (Lloyd) or mini-batch K-means; the centroids are the images."""

    k: int
    init: str = "kmeans++"
    n_init: int = 10
    max_iter: int = 300
    tol: float = 1e-4
    minibatch: bool = False
    batch_size: int = 1024
    seed: int = 0

    def fit(self, X: np.ndarray) -> "KMeansClustering":
        init = initialization.kmeans_init(X, self.k, self.init, self.seed)
        # An explicit array start is one start: scikit-learn warns and runs it once.
        n_init = self.n_init if isinstance(init, str) else 1
        common = dict(init=init, n_init=n_init, max_iter=self.max_iter, tol=self.tol, random_state=self.seed)
        model = (
            MiniBatchKMeans(self.k, batch_size=self.batch_size, **common)
            if self.minibatch
            else KMeans(self.k, **common)
        )
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

    @property
    def component_members_(self) -> np.ndarray:
        return self.labels_

    def assign(self, X: np.ndarray) -> np.ndarray:
        return self._model.predict(X).astype(np.int64)

    def reconstruct(self, X: np.ndarray) -> np.ndarray:
        return self.components_[self.assign(X)]


@dataclass
class GNMFClustering(_GraphModel, _BasisModel):
    """Graph-regularized NMF (Cai et al. 2011) on the kNN graph of the samples; clusters from W."""

    k: int
    lam: float = 1.0
    solver: str = "hals"
    init: str = "nndsvda"
    max_iter: int = 500
    tol: float = 1e-4
    assign_rule: str = "kmeans"
    n_neighbors: int = 10
    weight: str = "binary"
    pca: int | None = None
    seed: int = 0
    cache_dir: str | None = None
    fingerprint: str | None = None
    callback: IterationCallback | None = field(default=None, repr=False)

    def fit(self, X: np.ndarray) -> "GNMFClustering":
        from . import graph_nmf

        start = time.perf_counter()
        S = self._graph(X)
        self.graph_time_s_ = time.perf_counter() - start
        W, H = initialization.nmf_init(X, self.k, self.init, self.seed)
        result = graph_nmf.gnmf(X, W, H, S, lam=self.lam, solver=self.solver, max_iter=self.max_iter, tol=self.tol,
                                callback=self.callback)
        self._keep(result, X, start)
        self.W_, self.components_ = result.W, result.H
        self.labels_ = np.asarray(graph_nmf.cluster_rows(self.W_, self.k, self.assign_rule, self.seed), dtype=np.int64)
        return self


@dataclass
class SymNMFClustering(_GraphModel):
    """Symmetric NMF A ~ H H^T of the normalized kNN graph (Kuang et al. 2012); clusters = argmax of H.

    It has no basis images: its images are the mean image of each cluster.
    """

    k: int
    solver: str = "anls"
    max_iter: int = 500
    tol: float = 1e-7
    n_init: int = 1
    n_neighbors: int = 10
    weight: str = "binary"
    pca: int | None = None
    seed: int = 0
    cache_dir: str | None = None
    fingerprint: str | None = None
    callback: IterationCallback | None = field(default=None, repr=False)

    def fit(self, X: np.ndarray) -> "SymNMFClustering":
        from . import graph_nmf

        start = time.perf_counter()
        S = self._graph(X)
        self.graph_time_s_ = time.perf_counter() - start
        result = graph_nmf.symnmf(S, self.k, seed=self.seed, n_init=self.n_init, max_iter=self.max_iter, tol=self.tol,
                                  solver=self.solver, callback=self.callback)
        self._keep(result, X, start)
        self.labels_ = result.labels.astype(np.int64)
        membership = sp.csr_matrix((np.ones(len(X), dtype=np.float32), (self.labels_, np.arange(len(X)))),
                                   shape=(self.k, len(X)))
        counts = np.asarray(membership.sum(axis=1)).ravel()
        self.components_ = np.asarray(membership @ X, dtype=np.float32) / np.maximum(counts, 1)[:, None]
        return self

    @property
    def component_members_(self) -> np.ndarray:
        return self.labels_

    def reconstruct(self, X: np.ndarray) -> np.ndarray:
        return self.components_[self.assign(X)]
