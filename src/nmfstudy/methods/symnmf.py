"""Symmetric NMF of the normalized kNN graph (``method=symnmf``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from numbers import Integral
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from ..nmf import graph_nmf
from ..nmf._common import MAX_ITER, TOL
from ..nmf.partition_search import membership, search_partition
from ..params import Interval, Options
from ._base import GraphEstimator

STARTS = ("multilevel", "random")
_MIN_SUBCLUSTER = 10  # samples per sub-cluster, on average, below which the start skips the grouping
_KMEANS_SAMPLE = 300  # rows per sub-cluster that fit the over-clustering's k-means,
_KMEANS_ROWS = 20_000  # and at most this many (k = 50 would otherwise fit on all 60,000)


@dataclass(repr=False, eq=False)
class SymNMF(GraphEstimator):
    """Symmetric NMF A ~ H H^T of the normalized kNN graph; clusters = argmax of H.

    Kuang, Ding, Park, "Symmetric Nonnegative Matrix Factorization for Graph Clustering",
    SDM 2012; the ANLS solver of Kuang, Yun, Park, J. Global Optim. 62(3), 2015. It has no
    basis images: its images are the mean image of each cluster.

    Its objective has many local minima whose losses differ by a few parts in a million
    while their clusters differ by 0.2 in accuracy, so the start decides. ``start``:

    - ``multilevel`` (the default): the search of NMFR and DCD
      (:mod:`nmfstudy.methods.random_walk`) with SymNMF's own objective. Over-cluster the
      samples (k-means on a smooth embedding of the graph, :func:`smooth_embedding`) into
      oversplit * k sub-clusters, group them into k clusters by the loss of the best-scaled
      hard indicators, ||A||^2 - sum_c a_c^2 / n_c^2 (a_c the sum of A over the pairs of
      cluster c, n_c its size; exact on the coarse graph) with `n_restarts` random restarts
      of a local search (:func:`nmfstudy.nmf.partition_search.search_partition`); then refine that partition
      (:func:`~nmfstudy.nmf.graph_nmf.partition_start`). `n_init` over-clusterings (seeds
      seed, seed + 1, ...); the lowest loss wins (see `screen_iter`).
      On full MNIST it reaches the same partition (0.788 Hungarian accuracy) from every seed;
      random starts reach lower losses at 0.69-0.72 by luck (bench/symnmf_results.md).
    - ``random``: `n_init` uniform random starts (Kuang et al.'s), the lowest final loss wins.

    No labels are used by either.

    Parameters
    ----------
    n_clusters : int
        Clusters, >= 1.
    init : {"random"}
        Seeded starts (see `start`).
    random_state : int or None
        Seed of the graph's PCA and of the starts (None: drawn).
    solver : {"anls", "mu"}
    max_iter, tol
        Iteration cap per start; stop a start when the relative decrease of the loss falls below `tol`.
    n_init : int
        Starts; the lowest loss wins (no labels used).
    screen_iter : int or None
        Each start first runs this many iterations; only the lowest loss then runs on to the
        stopping rule (:func:`~nmfstudy.nmf.graph_nmf.symnmf`); None: every start to the end.
    start : {"multilevel", "random"}
        How the starts are made, see above.
    oversplit : int
        Sub-clusters per cluster (multilevel).
    n_vectors : int
        Columns of the smooth embedding that is over-clustered (multilevel).
    n_restarts : int
        Random restarts of the sub-cluster grouping search (multilevel).
    n_neighbors, weight, pca, cache_dir
        The kNN graph (see :class:`~nmfstudy.methods.GraphEstimator`).
    """

    name: ClassVar[str] = "symnmf"
    inits: ClassVar[tuple[str, ...]] = ("random",)
    images_name: ClassVar[str] = "centroids"
    parameters: ClassVar = {
        "solver": [Options(graph_nmf.SYMNMF_SOLVERS)],
        "max_iter": MAX_ITER,
        "tol": TOL,
        "n_init": [Interval(Integral, 1)],
        "start": [Options(STARTS)],
        "oversplit": [Interval(Integral, 1)],
        "n_vectors": [Interval(Integral, 1)],
        "n_restarts": [Interval(Integral, 1)],
        "screen_iter": [Interval(Integral, 1), None],
    }

    n_clusters: int = 8
    init: str = "random"
    random_state: int | None = None
    solver: str = "anls"
    max_iter: int = 500
    tol: float = 1e-9
    n_init: int = 3
    start: str = "multilevel"
    oversplit: int = 5
    n_vectors: int = 30
    n_restarts: int = 50
    screen_iter: int | None = 50
    n_neighbors: int = 10
    weight: str = "binary"
    pca: int | None = None
    cache_dir: str | None = field(default=None, kw_only=True)

    def _fit(self, X: np.ndarray, seed: int, callback) -> float:
        """Build (or load) the kNN graph of X, factorize it and take each sample's largest factor entry."""
        start = time.perf_counter()
        S = self._graph(X, seed)
        starts = None
        if self.start == "multilevel":
            A = graph_nmf.normalize_graph(S)
            U = smooth_embedding(A, max(self.n_vectors, self.k), seed=seed)
            starts = [multilevel_start(A, U, self.k, self.oversplit, self.n_restarts, seed + run)
                      for run in range(self.n_init)]
        result = graph_nmf.symnmf(S, self.k, seed=seed, n_init=self.n_init, max_iter=self.max_iter, tol=self.tol,
                                  solver=self.solver, callback=callback, starts=starts, screen_iter=self.screen_iter)
        self._keep_history(result)
        self.labels_ = result.labels.astype(np.int64)
        membership = sp.csr_matrix((np.ones(len(X), dtype=np.float32), (self.labels_, np.arange(len(X)))),
                                   shape=(self.k, len(X)))
        counts = np.asarray(membership.sum(axis=1)).ravel()
        self.components_ = np.asarray(membership @ X, dtype=np.float32) / np.maximum(counts, 1)[:, None]
        return start


def smooth_embedding(A, n_vectors: int, n_steps: int = 40, seed: int = 0) -> np.ndarray:
    """Rows of a smooth basis of the graph: `n_steps` of subspace iteration with (I + A) / 2, row-normalized.

    Each step multiplies a block of `n_vectors` seeded Gaussian columns by (I + A) / 2 (its
    eigenvalues (1 + lambda) / 2 lie in [0, 1] for a normalized graph A); every fifth step
    re-orthonormalizes the block. After 40 steps the components along eigenvalues of A below
    0.5 have shrunk by 0.75^40 ~ 1e-5, while those near 1 (the clusters) remain: the block
    spans about the leading eigenvectors, as the spectral embedding of Ng, Jordan, Weiss (NIPS
    2001), without the many Lanczos steps that the close eigenvalues near 1 take to be resolved
    one by one (on full MNIST ~1.5 s instead of ~13 s).

    Parameters
    ----------
    A : scipy.sparse matrix of shape (n, n)
        The normalized graph D^-1/2 S D^-1/2.
    n_vectors : int
        Columns of the embedding (at most n).
    n_steps : int, default 40
        Multiplications by (I + A) / 2.
    seed : int, default 0
        Seeds the starting block.

    Returns
    -------
    ndarray of shape (n, n_vectors), float64
        Rows of unit length (a zero row stays zero).
    """
    A = sp.csr_matrix(A, dtype=np.float32)
    n = A.shape[0]
    V = np.random.default_rng(seed).standard_normal((n, min(n_vectors, n))).astype(np.float32)
    for step in range(n_steps):
        V += A @ V
        V *= np.float32(0.5)
        if step % 5 == 4 or step == n_steps - 1:
            # Cholesky QR: five steps leave the block well conditioned, and a tall-skinny LAPACK QR
            # costs ~1 s here on two busy cores (its threads wait on each other), this ~10 ms
            gram = V.T.astype(np.float64) @ V.astype(np.float64)
            L = np.linalg.cholesky(gram + 1e-12 * np.trace(gram) * np.eye(len(gram)))
            V = (V @ np.linalg.inv(L).T.astype(np.float32)).astype(np.float32)
    norms = np.linalg.norm(V, axis=1, keepdims=True)
    return (V / np.where(norms > 0, norms, 1.0)).astype(np.float64)


def hard_loss(a: np.ndarray, n: np.ndarray) -> np.ndarray:
    """SymNMF's loss of clusters of association a and size n at their best-scaled indicators, less ||A||^2.

    For a partition the loss is -sum_c (a_c / n_c)^2 (:func:`nmfstudy.nmf.graph_nmf.partition_start`);
    this gives each cluster's term, for :func:`nmfstudy.nmf.partition_search.search_partition`.

    Parameters
    ----------
    a, n : ndarray
        The clusters' associations (sums of A over their pairs) and sizes.

    Returns
    -------
    ndarray
        -(a / n)^2, elementwise.
    """
    return -((a / n) ** 2)


def multilevel_start(A, U: np.ndarray, k: int, oversplit: int, n_restarts: int, seed: int) -> np.ndarray:
    """A SymNMF start from a partition found on a coarse graph (see :class:`SymNMFClustering`).

    Parameters
    ----------
    A : scipy.sparse matrix of shape (n, n)
        The normalized graph.
    U : ndarray of shape (n, d)
        The embedding that is over-clustered (:func:`smooth_embedding`).
    k : int
        The number of clusters.
    oversplit : int
        Sub-clusters per cluster (oversplit * k, at most n / 10; with k or fewer, the start is the
        k-means partition of U).
    n_restarts : int
        Random restarts of the grouping search.
    seed : int
        Seeds the over-clustering (k-means, one start, fitted on a sample of 300 rows per
        sub-cluster, 20,000 at most) and the search.

    Returns
    -------
    ndarray of shape (n, k), float32
        The start (:func:`nmfstudy.nmf.graph_nmf.partition_start` of the best grouping).
    """
    from sklearn.cluster import KMeans

    n = A.shape[0]
    # sub-clusters of fewer than ~10 samples would make the coarse problem as hard as the fine one:
    # on so few samples the start is the k-means partition of the embedding itself
    n_sub = min(oversplit * k, n // _MIN_SUBCLUSTER)
    U = U.astype(np.float32)
    if n_sub <= k:
        labels = KMeans(n_clusters=min(k, n), n_init=1, random_state=seed).fit_predict(U)
        return graph_nmf.partition_start(A, labels, k)
    # k-means fitted on a seeded sample of rows: as good an over-clustering on MNIST at k=10 as
    # on all rows, at a third of the cost; then every row takes its nearest centre
    rows = np.random.default_rng(seed).choice(n, min(n, _KMEANS_SAMPLE * n_sub, _KMEANS_ROWS), replace=False)
    km = KMeans(n_clusters=n_sub, n_init=1, random_state=seed).fit(U[np.sort(rows)]).predict(U)
    sub = np.unique(km, return_inverse=True)[1]  # an empty sub-cluster leaves no gap
    n_sub = int(sub.max()) + 1
    P = membership(sub, n_sub)
    CA = (P.T @ (sp.csr_matrix(A, dtype=np.float64) @ P)).toarray()
    size = np.bincount(sub, minlength=n_sub).astype(np.float64)
    g, _ = search_partition((CA + CA.T) / 2, size, k, hard_loss, n_restarts, seed)
    return graph_nmf.partition_start(A, g[sub], k)
