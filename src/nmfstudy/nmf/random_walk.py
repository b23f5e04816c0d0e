"""NMF using graph random walk (NMFR) of a normalized graph, and its multilevel start.

Yang, Hao, Dikmen, Chen, Oja, "Clustering by Nonnegative Matrix Factorization Using Graph
Random Walk", NIPS 2012. W (n x k, >= 0) maximizes Tr(W^T A W) for the random-walk smoothed
similarity A = (1 - alpha) (I - alpha Q)^-1, Q = D^-1/2 S D^-1/2, under a W^T W = I
normalization and a penalty lam sum_i |w_i|^4 that keeps every sample's weight alike.
A is never formed: A W comes from block conjugate gradients on I - alpha Q (:class:`RandomWalk`),
warm-started.

Conventions of :mod:`nmfstudy.nmf.graph_nmf`: plain functions over arrays, the graph sparse
(never an n x n dense matrix), callback(iteration, loss, elapsed_s) -> True to stop, and the
stopping rule "relative decrease of the loss below tol, or max_iter". The factor (n x k) is
iterated in float64: the multiplicative ratios of entries that tend to 0 underflow in float32,
and at n x k they cost less than the sparse products. The multilevel search that gives
the start is :mod:`nmfstudy.nmf.multilevel`'s; :func:`nmfr_start` is its grouping step.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import scipy.sparse as sp

from ._common import (
    Callback,
    FitResult,
    LabelStability,
    Monitor,
    Relaxation,
    RowBlocks,
    blas_threads,
    in_row_blocks,
    own_threads,
)
from .multilevel import lift
from .partition_search import membership, search_partition

__all__ = ["RandomWalk", "nmfr", "nmfr_objective", "nmfr_start"]

_TINY = 1e-300


class RandomWalk:
    """The product A B with A = (1 - alpha) (I - alpha Q)^-1, by block conjugate gradients.

    I - alpha Q is symmetric positive definite for a normalized graph Q (eigenvalues in
    [-1, 1]) and 0 <= alpha < 1, with condition number at most (1 + alpha) / (1 - alpha), so CG
    converges in a few tens of sparse products; each column of B is solved independently
    (vectorized), and the previous solution is the next start (warm start).

    Parameters
    ----------
    Q : sparse matrix (n x n)
        The normalized graph D^-1/2 S D^-1/2 (:func:`nmfstudy.nmf.graph_nmf.normalize_graph`).
    alpha : float
        In [0, 1): how far the walk goes (A = (1 - alpha) sum_t alpha^t Q^t).
    tol : float
        Each column stops when its residual norm is below tol times its right-hand side's.
    max_iter : int
        CG iterations per product at most.
    n_threads : int or None
        Threads of the sparse products (:class:`~nmfstudy.nmf._common.RowBlocks`).
    """

    def __init__(self, Q, alpha: float, tol: float = 1e-4, max_iter: int = 500, n_threads: int | None = None) -> None:
        self.n_threads = blas_threads() if n_threads is None else n_threads  # of the products and element-wise steps
        self.Q = RowBlocks(sp.csr_matrix(Q, dtype=np.float64), self.n_threads)  # the solves' time is in its products
        self.alpha, self.tol, self.max_iter = float(alpha), float(tol), int(max_iter)
        self._last: np.ndarray | None = None
        self.n_products = 0  # sparse products spent so far

    @property
    def warm_start(self) -> np.ndarray | None:
        """The last solution, where the next solve starts (None before the first)."""
        return self._last

    def __call__(self, B: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
        """A B for a dense B (n x r), float64, started from `start` (default: the last solution)."""
        B = np.asarray(B, dtype=np.float64)
        rhs = (1.0 - self.alpha) * B
        start = self._last if start is None else start
        X = start.copy() if start is not None and start.shape == B.shape else rhs.copy()
        R = rhs - (X - self.alpha * (self.Q @ X))
        self.n_products += 1
        P = R.copy()
        rr = np.einsum("ij,ij->j", R, R)
        goal = (self.tol ** 2) * np.einsum("ij,ij->j", rhs, rhs)
        # The element-wise steps run by blocks of rows (in the CPU's cache, on the threads), the column sums over
        # whole arrays as before: the same values to the last bit. At k=50 on full MNIST about half of a CG
        # iteration's time had been element-wise work over whole arrays.
        n, threads = len(P), self.n_threads
        for _ in range(self.max_iter):
            if np.all(rr <= goal):
                break
            AP = self.Q @ P
            in_row_blocks(n, partial(_minus_alpha_times, P, AP, self.alpha), threads)  # AP = P - alpha Q P
            self.n_products += 1
            step = rr / np.maximum(np.einsum("ij,ij->j", P, AP), _TINY)
            in_row_blocks(n, partial(_cg_move, X, R, P, AP, step), threads)
            rr_new = np.einsum("ij,ij->j", R, R)
            in_row_blocks(n, partial(_cg_direction, P, R, rr_new / np.maximum(rr, _TINY)), threads)
            rr = rr_new
        self._last = X
        return X.copy()


def _minus_alpha_times(P: np.ndarray, QP: np.ndarray, alpha: float, r: slice) -> None:
    """QP[r] <- P[r] - alpha QP[r], in place."""
    QP[r] *= alpha
    np.subtract(P[r], QP[r], out=QP[r])


def _cg_move(X: np.ndarray, R: np.ndarray, P: np.ndarray, AP: np.ndarray, step: np.ndarray, r: slice) -> None:
    """One CG step on rows r: the solution along the direction, the residual along its product."""
    X[r] += step * P[r]
    R[r] -= step * AP[r]


def _cg_direction(P: np.ndarray, R: np.ndarray, beta: np.ndarray, r: slice) -> None:
    """The next CG direction on rows r: P <- R + beta P."""
    P[r] *= beta
    P[r] += R[r]


def nmfr_objective(W: np.ndarray, AW: np.ndarray, lam: float, mu: float) -> float:
    """The NMFR objective of :func:`nmfr` at W, from the product AW, shifted to be >= 0.

    -Tr(W^T A W) + mu/2 |W^T W - I|_F^2 + lam sum_i |w_i|^4 + k (1 + 1 / (2 mu)); the constant
    is minus a lower bound of the rest (A's eigenvalues are at most 1), so the loss is
    non-negative and plots on a log scale.

    Parameters
    ----------
    W : ndarray of shape (n_samples, k)
        The non-negative factor.
    AW : ndarray of shape (n_samples, k)
        The product of the random-walk similarity A with W.
    lam, mu : float
        The row-norm penalty's weight and the orthogonality penalty's weight.

    Returns
    -------
    float
    """
    k = W.shape[1]
    WtW = W.T @ W
    WtW[np.diag_indices(k)] -= 1.0
    rows = np.einsum("ij,ij->i", W, W)
    return float(-np.einsum("ij,ij->", W, AW) + 0.5 * mu * np.einsum("ij,ij->", WtW, WtW)
                 + lam * np.dot(rows, rows) + k * (1.0 + 0.5 / mu))


def nmfr(Q, W, *, alpha: float = 0.8, lam: float = 0.0, mu: float = 10.0, max_iter: int = 300, tol: float = 1e-6,
         cg_tol: float = 1e-4, max_exponent: float = 1.0, label_tol: float = 0.0, label_window: int = 10,
         callback: Callback | None = None) -> FitResult:
    """NMF using graph random walk (NMFR, Yang, Hao, Dikmen, Chen, Oja, NIPS 2012), from a start W.

    Minimizes ``-Tr(W^T A W) + mu/2 |W^T W - I|_F^2 + lam sum_i (sum_k W_ik^2)^2`` over W >= 0,
    A = (1 - alpha) (I - alpha Q)^-1. The paper constrains W^T W = I and handles it by a
    Lagrangian; here the constraint is a quadratic penalty of weight mu, which makes the
    multiplicative majorization-minimization update (Yang, Oja, "Unified development of
    multiplicative algorithms for linear and quadratic nonnegative matrix factorization",
    IEEE TNN 22(12), 2011) provably monotone::

        W <- W * ((2 A W + 2 mu W) / (2 mu W W^T W + 4 lam diag(|w_i|^2) W)) ^ (1/4)

    (the quartic terms majorized by Jensen's inequality, the negative quadratic ones by their
    logarithmic lower bound). The objective never rises, up to the CG tolerance in A W. With
    `max_exponent` > 1 the step is over-relaxed (:class:`~nmfstudy.nmf._common.Relaxation`: the
    ratio above raised to a growing power, a step that does not lower the objective taken again
    plainly), still monotone: on full MNIST at k=10 it reaches in 60 iterations a lower objective
    than the plain update in 300.

    Parameters
    ----------
    Q : sparse matrix (n x n)
        The normalized graph D^-1/2 S D^-1/2.
    W : ndarray of shape (n, k)
        The start (non-negative, no all-zero column); its columns are scaled to unit norm.
    alpha : float
        The random walk's continuation probability, in [0, 1).
    lam : float
        Weight of the row-norm penalty (absolute;
        :class:`~nmfstudy.methods.NMFR` scales it by n / k).
    mu : float
        Weight of the orthogonality penalty, > 0.
    max_iter, tol : int, float
        Iteration cap; stop when the relative decrease of the objective falls below `tol`.
    cg_tol : float
        Relative residual of the conjugate-gradient solves for A W.
    max_exponent : float, default 1.0
        Largest exponent of the over-relaxed step (1: the plain update).
    label_tol, label_window : float, int
        Stop also when fewer than label_tol * n samples changed cluster (argmax of W) over the
        last label_window iterations (:class:`~nmfstudy.nmf._common.LabelStability`; 0: never).
    callback : callable or None
        ``callback(iteration, loss, elapsed_s)``; True stops.

    Returns
    -------
    FitResult
        W and the objective (:func:`nmfr_objective`) per iteration.
    """
    W = np.array(W, dtype=np.float64)
    norms = np.linalg.norm(W, axis=0)
    if W.ndim != 2 or W.shape[0] != Q.shape[0] or (W < 0).any() or not (norms > 0).all():
        raise ValueError(f"W must be a non-negative ({Q.shape[0]} x k) array without an all-zero column")
    W /= norms
    with own_threads() as n_threads:
        walk = RandomWalk(Q, alpha, tol=cg_tol, n_threads=n_threads)
        AW = walk(W)
        start_loss = nmfr_objective(W, AW, lam, mu)
        mon = Monitor(tol, max_iter, callback)
        mon.start(start_loss)
        relax, labels = Relaxation(max_exponent), LabelStability(label_tol, label_window)
        labels.settled(W, start_loss)
        loss = start_loss
        for _ in range(max_iter):
            num = np.maximum(AW, 0.0)  # A >= 0, so A W >= 0 but for the CG tolerance
            num += mu * W
            num *= 2.0
            den = 2.0 * mu * (W @ (W.T @ W))
            if lam:
                den += (4.0 * lam) * np.einsum("ij,ij->i", W, W)[:, None] * W
            np.maximum(den, _TINY, out=den)
            ratio = np.sqrt(np.sqrt(num / den))
            # Both candidates' solves start from the last accepted one: the CG error (cg_tol relative, ~1e-4 of
            # the objective) is then alike in both, and the objectives compare; the plain step started from the
            # rejected solve came out above its predecessor and stopped the run (a relative decrease below tol)
            warm = walk.warm_start

            def evaluate(W_new, warm=warm):
                AW_new = walk(W_new, start=warm)
                return nmfr_objective(W_new, AW_new, lam, mu), AW_new

            W, (loss, AW) = relax.descend(lambda e, W=W, ratio=ratio: W * ratio ** e if e != 1.0 else W * ratio,
                                          evaluate, loss)
            if mon.step(loss) or labels.settled(W, loss):
                break
    return FitResult(W=W, start_loss=start_loss, **mon.history())


def nmfr_start(Q, sub: np.ndarray, n_sub: int, k: int, *, alpha: float, lam: float, n_restarts: int,
               seed: int) -> np.ndarray:
    """NMFR's start from a grouping of sub-clusters (see :class:`nmfstudy.methods.NMFR`).

    The grouping minimizes NMFR's objective at hard normalized indicators (W^T W = I, so the
    penalty on it is 0), -sum_k assoc_A(k) / n_k + lam sum_k 1 / n_k, assoc_A(k) the sum of A over
    the pairs of cluster k, exact on the coarse matrix P^T A P (P the sub-cluster indicators, A P
    by CG); found by :func:`~nmfstudy.nmf.partition_search.search_partition`.

    Parameters
    ----------
    Q : sparse matrix (n x n)
        The normalized graph.
    sub : ndarray of shape (n,)
        Each sample's sub-cluster, 0..n_sub-1.
    n_sub : int
        The number of sub-clusters (more than k).
    k : int
        The number of clusters.
    alpha : float
        The random walk's continuation probability, in [0, 1).
    lam : float
        The row-norm penalty's weight (absolute, as :func:`nmfr`'s).
    n_restarts : int
        Random restarts of the grouping search.
    seed : int
        Seeds the search.

    Returns
    -------
    ndarray of shape (n, k), float64
        The start (:func:`~nmfstudy.nmf.multilevel.lift` of the best grouping).
    """
    P = membership(sub, n_sub)
    with own_threads() as n_threads:
        CA = np.asarray(P.T @ RandomWalk(Q, alpha, tol=1e-5, n_threads=n_threads)(P.toarray()))
    size = np.bincount(sub, minlength=n_sub).astype(np.float64)

    def group_loss(assoc, n):  # a cluster's term of the objective at its normalized indicator
        return (lam - assoc) / n

    g, _ = search_partition((CA + CA.T) / 2, size, k, group_loss, n_restarts, seed)
    return lift(g, sub, k)
