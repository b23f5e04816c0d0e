"""Graph-regularized NMF on the kNN graph of the samples (``method=gnmf``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from numbers import Real
from typing import ClassVar

import numpy as np

from ..nmf import MAX_ITER, TOL, graph_nmf, initialization
from ..params import Interval, Options
from ._base import BasisEstimator, GraphEstimator


@dataclass(repr=False, eq=False)
class GNMF(GraphEstimator, BasisEstimator):
    """Graph-regularized NMF, ||X - WH||^2 + lam Tr(W^T L W); clusters from W.

    Cai, He, Han, Huang, "Graph Regularized Nonnegative Matrix Factorization for Data
    Representation", IEEE TPAMI 33(8), 2011; L is the Laplacian of the kNN graph.

    Parameters
    ----------
    n_components : int
        Basis images (= clusters), >= 1.
    init : str or None
        An NMF start (:data:`nmfstudy.nmf.initialization.NMF_INITS`); None: ``nndsvda`` when
        n_components <= min(n_samples, n_features), else ``random`` (scikit-learn's NMF rule).
    random_state : int or None
        Seed of the start, the graph's PCA and the k-means assignment (None: drawn).
    lam : float
        The graph regularization weight (>= 0; 0 is plain NMF).
    solver : {"hals", "mu"}
        HALS with unit-norm basis rows, or the paper's multiplicative updates.
    max_iter, tol
        Iteration cap; stop when the relative decrease of the objective falls below `tol`.
    assign : {"kmeans", "argmax"}
        k-means on the L2-normalized rows of W (the paper's protocol), or their argmax.
    n_neighbors, weight, pca, cache_dir
        The kNN graph (see :class:`~nmfstudy.methods.GraphEstimator`).
    """

    name: ClassVar[str] = "gnmf"
    parameters: ClassVar = {
        "solver": [Options(graph_nmf.GNMF_SOLVERS)],
        "lam": [Interval(Real, 0.0)],
        "max_iter": MAX_ITER,
        "tol": TOL,
        "assign": [Options(graph_nmf.ASSIGN_RULES)],
    }

    n_components: int = 10
    init: str | None = None
    random_state: int | None = None
    lam: float = 1.0
    solver: str = "hals"
    max_iter: int = 500
    tol: float = 1e-4
    assign: str = "kmeans"

    def _fit(self, X: np.ndarray, seed: int, callback) -> float:
        """Build (or load) the kNN graph of X, factorize X under it and cluster the rows of W."""
        start = time.perf_counter()
        S = self._graph(X, seed)
        W, H = initialization.nmf_init(X, self.k, self._start(X), seed)
        result = graph_nmf.gnmf(X, W, H, S, lam=self.lam, solver=self.solver, max_iter=self.max_iter, tol=self.tol,
                                callback=callback)
        self._keep_history(result)
        self.W_, self.components_ = result.W, result.H
        self.labels_ = graph_nmf.cluster_rows(self.W_, self.k, self.assign, seed)
        return start
