"""Symmetric NMF of the normalized kNN graph (``method=symnmf``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from numbers import Integral
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from ..nmf import MAX_ITER, TOL, graph_nmf
from ..nmf.multilevel import multilevel_starts
from ..params import Interval, Options
from ._base import GraphEstimator

STARTS = ("multilevel", "random")


@dataclass(repr=False, eq=False)
class SymNMF(GraphEstimator):
    """Symmetric NMF A ~ H H^T of the normalized kNN graph; clusters = argmax of H.

    Kuang, Ding, Park, "Symmetric Nonnegative Matrix Factorization for Graph Clustering",
    SDM 2012; the ANLS solver of Kuang, Yun, Park, J. Global Optim. 62(3), 2015. It has no
    basis images: its images are the mean image of each cluster.

    Its objective has many local minima whose losses differ by a few parts in a million
    while their clusters differ by 0.2 in accuracy, so the start decides. ``start``:

    - ``multilevel`` (the default): the search of NMFR and DCD
      (:mod:`nmfstudy.nmf.multilevel`) with SymNMF's own objective
      (:func:`~nmfstudy.nmf.multilevel.multilevel_starts`). Over-cluster the samples (k-means on
      a smooth embedding of the graph, :func:`~nmfstudy.nmf.multilevel.smooth_embedding`) into
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

    def _fit(self, X: np.ndarray, seed: int, callback) -> float:
        """Build (or load) the kNN graph of X, factorize it and take each sample's largest factor entry."""
        start = time.perf_counter()
        S = self._graph(X, seed)
        starts = None
        if self.start == "multilevel":
            starts = multilevel_starts(S, self.k, n_starts=self.n_init, oversplit=self.oversplit,
                                       n_vectors=self.n_vectors, n_restarts=self.n_restarts, seed=seed)
        result = graph_nmf.symnmf(S, self.k, seed=seed, n_init=self.n_init, max_iter=self.max_iter, tol=self.tol,
                                  solver=self.solver, callback=callback, starts=starts, screen_iter=self.screen_iter)
        self._keep_history(result)
        self.labels_ = result.labels.astype(np.int64)
        membership = sp.csr_matrix((np.ones(len(X), dtype=np.float32), (self.labels_, np.arange(len(X)))),
                                   shape=(self.k, len(X)))
        counts = np.asarray(membership.sum(axis=1)).ravel()
        self.components_ = np.asarray(membership @ X, dtype=np.float32) / np.maximum(counts, 1)[:, None]
        return start
