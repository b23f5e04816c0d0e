"""Symmetric NMF of the normalized kNN graph (``method=symnmf``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from numbers import Integral
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from ..nmf import graph_nmf
from ..nmf._common import MAX_ITER, TOL
from ..params import Interval, Options
from ._base import GraphMethod


@dataclass
class SymNMFClustering(GraphMethod):
    """Symmetric NMF A ~ H H^T of the normalized kNN graph; clusters = argmax of H.

    Kuang, Ding, Park, "Symmetric Nonnegative Matrix Factorization for Graph Clustering",
    SDM 2012; the ANLS solver of Kuang, Yun, Park, J. Global Optim. 62(3), 2015. It has no
    basis images: its images are the mean image of each cluster.

    Parameters
    ----------
    k, seed, init, callback, n_neighbors, weight, pca, cache_dir, fingerprint
        As :class:`~nmfstudy.methods.GraphMethod`; `init` is ``random`` (seeded).
    solver : {"anls", "mu"}
    max_iter, tol
        Iteration cap; stop when the relative decrease of the loss falls below `tol`.
    n_init : int
        Starts from seeds seed, seed + 1, ...; the lowest loss wins (no labels used).
    """

    name: ClassVar[str] = "symnmf"
    inits: ClassVar[tuple[str, ...]] = ("random",)
    images_name: ClassVar[str] = "centroids"
    parameters: ClassVar = {
        "solver": [Options(graph_nmf.SYMNMF_SOLVERS)],
        "max_iter": MAX_ITER,
        "tol": TOL,
        "n_init": [Interval(Integral, 1)],
    }

    init: str = "random"
    solver: str = "anls"
    max_iter: int = 500
    tol: float = 1e-7
    n_init: int = 1

    def fit(self, X: np.ndarray) -> SymNMFClustering:
        """Build (or load) the kNN graph of X, factorize it and take each sample's largest factor entry."""
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
