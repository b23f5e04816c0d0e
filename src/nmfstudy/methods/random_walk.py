"""Random-walk NMF (``method=nmfr``) and doubly stochastic decomposition (``method=dcd``) of the kNN graph.

Two cluster models of the sparse kNN graph S of the samples, each with its own objective,
solver and a start found by the same multilevel search:

- NMFR: Yang, Hao, Dikmen, Chen, Oja, "Clustering by Nonnegative Matrix Factorization Using
  Graph Random Walk", NIPS 2012 (:mod:`nmfstudy.nmf.random_walk`).
- DCD: Yang, Oja, "Clustering by Low-Rank Doubly Stochastic Matrix Decomposition", ICML 2012
  (and Yang, Corander, Oja, JMLR 17, 2016; :mod:`nmfstudy.nmf.dcd`).

Both start from the multilevel search of :func:`nmfstudy.nmf.multilevel.multilevel_fit`:
over-cluster the samples (k-means on the normalized spectral embedding), group the
sub-clusters into k clusters by the method's own objective on the coarse graph, lift the best
grouping to the samples and refine it with the method's updates. With `n_init` > 1 this is
repeated from other over-clusterings and the lowest objective wins. No labels are used
anywhere. The classes here hold the parameters and the fitted attributes; the numerics are
in :mod:`nmfstudy.nmf`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from numbers import Integral, Real
from typing import ClassVar

import numpy as np

from ..nmf import MAX_ITER, TOL, FitResult
from ..nmf.dcd import dcd, dcd_start
from ..nmf.multilevel import multilevel_fit
from ..nmf.random_walk import nmfr, nmfr_start
from ..params import Interval, Options
from ._base import GraphEstimator

__all__ = ["DCD", "NMFR"]


_SEARCH_PARAMETERS = {
    "max_iter": MAX_ITER,
    "tol": TOL,
    "n_init": [Interval(Integral, 1)],
    "oversplit": [Interval(Integral, 1)],
    "n_vectors": [Interval(Integral, 1)],
    "n_restarts": [Interval(Integral, 1)],
    "embedding": [Options(("arpack", "smooth"))],
    "kmeans_n_init": [Interval(Integral, 1)],
    "kmeans_rows": [Interval(Integral, 1), None],
    "max_exponent": [Interval(Real, 1.0)],
    "label_tol": [Interval(Real, 0.0, 1.0)],
    "label_window": [Interval(Integral, 1)],
}


@dataclass(repr=False, eq=False)
class _MultilevelGraphEstimator(GraphEstimator):
    """What NMFR and DCD share: the multilevel start, the restarts, labels and images.

    Parameters
    ----------
    n_clusters : int
        Clusters, >= 1.
    init : {"random"}
        The seeded multilevel search (random restarts of the grouping search).
    random_state : int or None
        Seed of the graph's PCA, the embedding, the over-clusterings and the searches (None: drawn).
    max_iter, tol
        The refinement's iteration cap and stopping tolerance (relative decrease).
    n_init : int
        Over-clusterings tried (seeds seed, seed + 1, ...), each grouped and refined; the lowest
        final objective wins (no labels used).
    oversplit : int
        Sub-clusters per cluster: the samples are over-clustered into oversplit * k (at most n).
    n_vectors : int
        Eigenvectors of the normalized graph in the spectral embedding that is over-clustered.
    n_restarts : int
        Random restarts of the grouping search.
    embedding : {"arpack", "smooth"}
        The embedding that is over-clustered: the leading eigenvectors by ARPACK, or a few
        steps of subspace iteration (:func:`~nmfstudy.nmf.multilevel.smooth_embedding`, cheaper).
    kmeans_n_init : int
        The over-clustering's k-means starts.
    kmeans_rows : int or None
        The rows the over-clustering's k-means is fitted on (seeded; every row then takes its
        nearest centre); None: all.
    max_exponent : float
        The refinement's over-relaxation: largest exponent of its multiplicative step, >= 1 (1:
        the plain update; see :class:`~nmfstudy.nmf._common.Relaxation`). Monotone either way.
    label_tol, label_window : float, int
        The refinement also stops when fewer than label_tol * n samples changed cluster over the
        last label_window iterations (0: only `tol` and `max_iter` stop it).
    n_neighbors, weight, pca, cache_dir
        The kNN graph (see :class:`~nmfstudy.methods.GraphEstimator`).
    """

    images_name: ClassVar[str] = "factor-weighted cluster means"
    inits: ClassVar[tuple[str, ...]] = ("random",)

    n_clusters: int = 8
    init: str = "random"
    random_state: int | None = None
    max_iter: int = 1000
    tol: float = 1e-8
    n_init: int = 1  # a second over-clustering gained nothing on full MNIST and doubled the time (issue 26)
    oversplit: int = 5
    n_vectors: int = 30
    n_restarts: int = 50
    embedding: str = "smooth"
    kmeans_n_init: int = 1
    kmeans_rows: int | None = 15_000
    max_exponent: float = 8.0
    label_tol: float = 2e-5
    label_window: int = 20

    def _start(self, S, Q, sub: np.ndarray, n_sub: int, seed: int) -> np.ndarray:
        raise NotImplementedError

    def _refine(self, S, Q, W: np.ndarray, callback) -> FitResult:
        raise NotImplementedError

    def _stopping(self) -> dict:
        """The refinement's over-relaxation and label-stability rule, as the solvers' keywords."""
        return dict(max_exponent=self.max_exponent, label_tol=self.label_tol, label_window=self.label_window)

    def _fit(self, X: np.ndarray, seed: int, callback) -> float:
        """Build (or load) the kNN graph of X, search a start, refine it; clusters = argmax of W."""
        start = time.perf_counter()
        S = self._graph(X, seed).astype(np.float64)
        best = multilevel_fit(S, self.k, self._start, self._refine, n_init=self.n_init, oversplit=self.oversplit,
                              n_vectors=self.n_vectors, seed=seed, embedding=self.embedding,
                              kmeans_n_init=self.kmeans_n_init, kmeans_rows=self.kmeans_rows, callback=callback)
        self._keep_history(best)
        self.W_ = best.W.astype(np.float32)
        self.labels_ = self.W_.argmax(axis=1)
        weights = self.W_ / np.maximum(self.W_.sum(axis=0), np.finfo(np.float32).tiny)
        self.components_ = np.ascontiguousarray(weights.T @ X, dtype=np.float32)
        return start


@dataclass(repr=False, eq=False)
class NMFR(_MultilevelGraphEstimator):
    """NMF using graph random walk (NMFR) of the kNN graph; clusters = argmax of W.

    Yang, Hao, Dikmen, Chen, Oja, "Clustering by Nonnegative Matrix Factorization Using Graph
    Random Walk", NIPS 2012 (solver: :func:`~nmfstudy.nmf.random_walk.nmfr`). Start: the sub-clusters' grouping that
    minimizes NMFR's objective at hard normalized indicators (W^T W = I, so the penalty on it is
    0), -sum_k assoc_A(k) / n_k + (lam n / k) sum_k 1 / n_k, assoc_A(k) the sum of A over the pairs
    of cluster k, exact on the coarse matrix P^T A P (P the sub-cluster indicators, A P by CG).

    Parameters
    ----------
    n_clusters, init, random_state, max_iter, tol, n_init, oversplit, n_vectors, n_restarts, n_neighbors,
    weight, pca, cache_dir
        As :class:`_MultilevelGraphEstimator`.
    alpha : float
        The random walk's continuation probability, in [0, 1): A = (1 - alpha) (I - alpha Q)^-1.
    lam : float
        The row-norm penalty, relative: its weight in the objective is lam * n / k, so that
        lam sum_i |w_i|^4 ~ lam * k for balanced clusters whatever n and k. Without it (0) the
        objective prefers splitting the large, tight clusters (the 1s of MNIST).
    mu : float
        The weight of the orthogonality penalty mu/2 |W^T W - I|^2.
    cg_tol : float
        Relative residual of the conjugate-gradient solves.
    """

    name: ClassVar[str] = "nmfr"
    parameters: ClassVar = {
        **_SEARCH_PARAMETERS,
        "alpha": [Interval(Real, 0.0, 1.0, closed="left")],
        "lam": [Interval(Real, 0.0)],
        "mu": [Interval(Real, 0.0, closed="neither")],
        "cg_tol": [Interval(Real, 0.0, 1.0, closed="neither")],
    }

    max_iter: int = 300
    tol: float = 0.0  # the label rule stops it: the objective, known to about cg_tol, would stop it on CG noise
    max_exponent: float = 64.0
    label_tol: float = 1e-4
    label_window: int = 10
    alpha: float = 0.8
    lam: float = 0.2
    mu: float = 10.0
    cg_tol: float = 1e-4

    def _lam(self, n: int) -> float:
        return self.lam * n / self.k

    def _start(self, S, Q, sub, n_sub, seed):
        return nmfr_start(Q, sub, n_sub, self.k, alpha=self.alpha, lam=self._lam(len(sub)), n_restarts=self.n_restarts,
                          seed=seed)

    def _refine(self, S, Q, W, callback):
        return nmfr(Q, W, alpha=self.alpha, lam=self._lam(len(W)), mu=self.mu, max_iter=self.max_iter, tol=self.tol,
                    cg_tol=self.cg_tol, **self._stopping(), callback=callback)


@dataclass(repr=False, eq=False)
class DCD(_MultilevelGraphEstimator):
    """Low-rank doubly stochastic decomposition (DCD) of the kNN graph; clusters = argmax of W.

    Yang, Oja, "Clustering by Low-Rank Doubly Stochastic Matrix Decomposition", ICML 2012 (solver:
    :func:`~nmfstudy.nmf.dcd.dcd`). Start: the sub-clusters' grouping that minimizes DCD's objective on the coarse
    graph P^T S P, for W = W_sub G (W_sub: DCD refined with one cluster per sub-cluster, G the
    grouping); exact for a W constant on each sub-cluster. Its local search restarts first from
    the grouping of highest ratio association sum_c a_c / n_c (the linear match of the coarse
    graph to DCD's A_hat at hard clusters, 1 / n_c within cluster c), found by the cheap search
    of NMFR and SymNMF with `n_restarts` restarts, then from random groupings. The best grouping
    is refined on the coarse graph, lifted to the samples and refined there.

    Parameters
    ----------
    n_clusters, init, random_state, max_iter, tol, n_init, oversplit, n_vectors, n_restarts, n_neighbors,
    weight, pca, cache_dir
        As :class:`_MultilevelGraphEstimator`.
    prior : float
        The Dirichlet prior's concentration on each row of W, >= 1 (1: none).
    exact_restarts : int or None
        Restarts of the search by DCD's own coarse objective: the first from the ratio-association
        grouping, the others random. A move there costs O(k^2 m^2) (k products of m x k by k x m),
        and a restart grows as about k^4: 0.03 s at k=10, 20-30 s at k=50 on full MNIST (where 1 is
        the measured choice). None (the default): 50 up to k=20, then as many as cost what 50 cost
        at k=20, 1 at k=50 (:func:`~nmfstudy.nmf.dcd.exact_restarts_for`).
    """

    name: ClassVar[str] = "dcd"
    parameters: ClassVar = {**_SEARCH_PARAMETERS, "prior": [Interval(Real, 1.0)],
                            "exact_restarts": [Interval(Integral, 1), None]}

    prior: float = 1.0
    exact_restarts: int | None = None
    # the start as before issue 26: with the base class's fast start too (bench/fast_fits_results.md) DCD fitted
    # 2.3x less CPU at k=10 on full MNIST but scored 0.9645 median, 0.9623 lowest against 0.9655 and 0.9647
    embedding: str = "arpack"
    kmeans_n_init: int = 3
    kmeans_rows: int | None = None
    # the refinement's over-relaxation (the base class's 8) and a label rule: on all 63,000 MNIST images (graph
    # shapes, seed 0) 79 iterations for 395 plainly, 0.9811 Hungarian against 0.9812; five seeds 0.9810 median both
    # (bench/clustering_63k_k10_shapes_fast_dcd_idle_results.md). 1e-3, not 1e-4: the clusters are as good from
    # about the 30th iteration on, while tens of boundary samples keep changing (at k=50 the start's majority
    # accuracy, 0.9757, is the 593rd iteration's, 0.9748); k=10 30-35 iterations for 79-116, 0.9810 median both;
    # k=20 and k=50 within 0.002 of 1e-4's majority in 1.5x and 3x less time
    # (bench/clustering_63k_k{10,20,50}_shapes_dcd_labeltol_results.md)
    label_tol: float = 1e-3

    def _start(self, S, Q, sub, n_sub, seed):
        return dcd_start(S, sub, n_sub, self.k, prior=self.prior, n_restarts=self.n_restarts,
                         exact_restarts=self.exact_restarts, seed=seed)

    def _refine(self, S, Q, W, callback):
        return dcd(S, W, prior=self.prior, max_iter=self.max_iter, tol=self.tol, **self._stopping(), callback=callback)
