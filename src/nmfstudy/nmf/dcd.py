"""Low-rank doubly stochastic decomposition (DCD) of a graph, and its multilevel start.

Yang, Oja, "Clustering by Low-Rank Doubly Stochastic Matrix Decomposition", ICML 2012 (and
Yang, Corander, Oja, JMLR 17, 2016). S ~ A_hat with A_hat_ij = sum_k W_ik W_jk / s_k,
s_k = sum_v W_vk and W row-stochastic (W_ik = P(cluster k | sample i)), A_hat doubly
stochastic; the KL divergence is minimized under a Dirichlet(prior) prior on the rows of W.

Conventions of :mod:`nmfstudy.nmf.random_walk` (float64 factor, sparse graph, callback,
stopping rule). The multilevel search that gives the start is :mod:`nmfstudy.nmf.multilevel`'s;
:func:`dcd_start` is its grouping step, by DCD's own objective on the coarse graph
(:class:`DCDGrouping`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._common import (
    Callback,
    FitResult,
    LabelStability,
    Monitor,
    Relaxation,
    RowBlocks,
    in_row_blocks,
    in_threads,
    own_threads,
)
from .multilevel import Grouping, ratio_association_loss, search_grouping
from .partition_search import membership, search_partition

__all__ = ["DCDGrouping", "dcd", "dcd_objective", "dcd_start", "exact_restarts_for"]

_TINY = 1e-300


class _Pairs:
    """The stored entries of a symmetric CSR matrix S, each unordered pair {i, j} once.

    A_hat is symmetric, so it is computed once per pair (about half of S's entries) and spread
    back to all entries by `spread`; `weight` is the pair's total of S (S_ij + S_ji, or S_ii).
    """

    # pairs per block of `products`: a block's two (block x k) gathers stay in the CPU's cache; on
    # full MNIST (704,000 pairs, k=10) 13 ms a pass against 58 ms for whole-array gathers
    BLOCK = 4096

    def __init__(self, S: sp.csr_matrix, n_threads: int = 1) -> None:
        n = S.shape[0]
        self.n_threads = n_threads  # for `products` and `ratios` (inside `own_threads`)
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(S.indptr))
        cols = S.indices.astype(np.int64)
        keys = np.minimum(rows, cols) * n + np.maximum(rows, cols)
        unique, self.spread = np.unique(keys, return_inverse=True)
        self.rows, self.cols = unique // n, unique % n
        self.weight = np.bincount(self.spread, weights=S.data, minlength=len(unique))

    def products(self, V: np.ndarray) -> np.ndarray:
        """max(sum_k V_ik V_jk, tiny) for each pair {i, j}, and its logarithm."""
        out, logs = np.empty(len(self.rows)), np.empty(len(self.rows))
        ones = np.ones(V.shape[1])

        def pairs(r: slice) -> None:
            block = np.take(V, self.rows[r], axis=0)
            block *= np.take(V, self.cols[r], axis=0)
            np.dot(block, ones, out=out[r])
            np.maximum(out[r], _TINY, out=out[r])
            np.log(out[r], out=logs[r])

        in_row_blocks(len(out), pairs, self.n_threads, rows=self.BLOCK, min_blocks=16)
        return out, logs

    def ratios(self, S: sp.csr_matrix, a_hat: np.ndarray) -> np.ndarray:
        """S_ij / A_hat_ij on S's entries, from A_hat per pair."""
        out = np.empty(len(S.data))

        def part(first, last):  # element by element: any cut gives the same values
            np.divide(S.data[first:last], a_hat[self.spread[first:last]], out=out[first:last])

        in_threads(len(out), part, 2**16, self.n_threads)
        return out


def _dcd_loss(S, pairs: _Pairs, W, prior, size) -> tuple[float, np.ndarray]:
    """The DCD objective at W and the ratios S_ij / A_hat_ij on S's entries."""
    s = size @ W
    a_hat, log_a_hat = pairs.products(W / np.sqrt(np.maximum(s, _TINY)))
    loss = -float(np.dot(pairs.weight, log_a_hat))
    if prior != 1.0:
        loss -= (prior - 1.0) * float(size @ np.log(np.maximum(W, _TINY)).sum(axis=1))
    return loss, pairs.ratios(S, a_hat)


# The update and its over-relaxed step run by blocks of rows (`in_row_blocks`): on full MNIST at k=50 a step
# takes 33 ms on one thread and 20 ms on two, against 55 ms for whole-array operations (the same values to the
# last bit).
def _dcd_step(W: np.ndarray, ZW: np.ndarray, size: np.ndarray, prior: float, n_threads: int = 1) -> np.ndarray:
    """One multiplicative update of Yang & Oja (2012) from the product Z W, Z = S / A_hat."""
    s = size @ W
    two_over_s = 2.0 / s
    grad_pos = np.einsum("ik,ik->k", W, ZW) / (s * s)  # the same for every sample
    inverse = 1.0 / grad_pos
    out = np.empty_like(W)

    def rows(r: slice) -> None:
        Wr = W[r]
        grad_neg = ZW[r] * two_over_s
        grad_neg /= size[r, None]  # per sample (a node of weight size_a counts size_a times)
        if prior != 1.0:
            grad_neg += (prior - 1.0) / np.maximum(Wr, _TINY)
        # row sums as products with a vector: a sum over a short last axis is several times slower
        a = Wr @ inverse
        b = (Wr * grad_neg) @ inverse
        grad_neg *= a[:, None]
        grad_neg += 1.0
        denominator = np.outer(a, grad_pos)
        denominator += b[:, None]
        np.multiply(Wr, grad_neg, out=out[r])
        out[r] /= denominator
        _rows_summing_to_1(out[r])

    in_row_blocks(len(W), rows, n_threads)
    return out


def _relaxed(W: np.ndarray, W_plain: np.ndarray, exponent: float, n_threads: int = 1) -> np.ndarray:
    """The over-relaxed step: W times the plain update's ratio raised to `exponent`, rows scaled to sum to 1."""
    out = np.empty_like(W)

    def rows(r: slice) -> None:
        np.divide(W_plain[r], W[r], out=out[r])
        out[r] **= exponent
        out[r] *= W[r]
        _rows_summing_to_1(out[r])

    in_row_blocks(len(W), rows, n_threads)
    return out


def dcd_objective(S, W, prior: float = 1.0, size: np.ndarray | None = None) -> float:
    """-sum_ij S_ij log A_hat_ij - (prior - 1) sum_ik log W_ik, the objective of :func:`dcd` (>= 0).

    A_hat_ij = sum_k W_ik W_jk / s_k <= 1. With `size` (one weight per node), S is a coarse
    graph whose node a stands for size_a samples that share the row W_a.

    Parameters
    ----------
    S : sparse matrix of shape (n_nodes, n_nodes)
        The symmetric non-negative graph.
    W : ndarray of shape (n_nodes, k)
        The positive factor.
    prior : float
        The Dirichlet prior's parameter (1: none).
    size : ndarray of shape (n_nodes,), optional
        How many samples each node stands for (all 1 without it).

    Returns
    -------
    float
    """
    S = sp.csr_matrix(S, dtype=np.float64)
    size = np.ones(S.shape[0]) if size is None else np.asarray(size, dtype=np.float64)
    S.sort_indices()
    return _dcd_loss(S, _Pairs(S), np.asarray(W, dtype=np.float64), prior, size)[0]


def dcd(S, W, *, prior: float = 1.0, max_iter: int = 1000, tol: float = 1e-8, size: np.ndarray | None = None,
        max_exponent: float = 1.0, label_tol: float = 0.0, label_window: int = 10,
        callback: Callback | None = None) -> FitResult:
    """Low-rank doubly stochastic decomposition (DCD, Yang & Oja, ICML 2012), from a start W.

    Minimizes the KL divergence of S from A_hat, A_hat_ij = sum_k W_ik W_jk / s_k with
    s_k = sum_v W_vk, under W >= 0, sum_k W_ik = 1 and a Dirichlet(prior) prior on the rows of
    W, i.e. ``-sum_ij S_ij log A_hat_ij - (prior - 1) sum_ik log W_ik`` (the rest of the KL
    divergence is constant: A_hat sums to n). The multiplicative update of the paper, with the
    row sums kept by its Lagrangian "relaxed" majorization, never raises it::

        W_ik <- W_ik (grad-_ik a_i + 1) / (grad+_ik a_i + b_i),
        a_i = sum_l W_il / grad+_il,  b_i = sum_l W_il grad-_il / grad+_il,

    grad- = 2 (Z W)_ik / s_k + (prior - 1) / W_ik, grad+ = (W^T Z W)_kk / s_k^2, Z = S / A_hat on
    S's entries only. One iteration costs two passes over S's entries (nnz x k). With
    `max_exponent` > 1 the step is over-relaxed (:class:`~nmfstudy.nmf._common.Relaxation`: W
    times the update's ratio raised to a growing power, rows rescaled; a step that does not
    lower the objective is taken again plainly), still monotone.

    Parameters
    ----------
    S : sparse matrix (n x n)
        Symmetric non-negative similarities (the kNN graph); A_hat is computed once per pair.
    W : ndarray of shape (n, k)
        The start (non-negative); its rows are scaled to sum to 1.
    prior : float
        The Dirichlet concentration, >= 1 (1: no prior; larger values pull rows to uniform).
    max_iter, tol : int, float
        Iteration cap; stop when the relative decrease of the objective falls below `tol`.
    size : ndarray of shape (n,) or None
        Node weights for a coarse graph (see :func:`dcd_objective`); None: all 1.
    max_exponent : float, default 1.0
        Largest exponent of the over-relaxed step (1: the plain update).
    label_tol, label_window : float, int
        Stop also when fewer than label_tol * n nodes changed cluster (argmax of W) over the
        last label_window iterations (:class:`~nmfstudy.nmf._common.LabelStability`; 0: never).
    callback : callable or None
        ``callback(iteration, loss, elapsed_s)``; True stops.

    Returns
    -------
    FitResult
        W and the objective (:func:`dcd_objective`) per iteration.
    """
    S = sp.csr_matrix(S, dtype=np.float64)
    S.sort_indices()
    size = np.ones(S.shape[0]) if size is None else np.asarray(size, dtype=np.float64)
    if S.shape[0] != S.shape[1] or (S.nnz and (S.data.min() < 0 or abs(S - S.T).max() > 1e-6 * S.data.max())):
        raise ValueError("S must be a square, symmetric, non-negative sparse matrix")
    W = np.array(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != S.shape[0] or (W < 0).any():
        raise ValueError(f"W must be a non-negative ({S.shape[0]} x k) array")
    W = np.maximum(W, _TINY)
    W /= W.sum(axis=1, keepdims=True)
    with own_threads() as n_threads:
        pairs = _Pairs(S, n_threads)
        loss, ratio = _dcd_loss(S, pairs, W, prior, size)
        start_loss = loss
        mon = Monitor(tol, max_iter, callback)
        mon.start(loss)
        relax, labels = Relaxation(max_exponent), LabelStability(label_tol, label_window)
        labels.settled(W, loss)
        graph = RowBlocks(S, n_threads)  # Z = S / A_hat has S's pattern: its products run on threads, cut as S is
        for _ in range(max_iter):
            W_plain = _dcd_step(W, graph.reweighted(ratio) @ W, size, prior, n_threads)
            W, (loss, ratio) = relax.descend(
                lambda e, W=W, W_plain=W_plain: W_plain if e == 1.0 else _relaxed(W, W_plain, e, n_threads),
                lambda W_new: _dcd_loss(S, pairs, W_new, prior, size), loss)
            if mon.step(loss) or labels.settled(W, loss):
                break
    return FitResult(W=W, start_loss=start_loss, **mon.history())


def _rows_summing_to_1(W: np.ndarray) -> np.ndarray:
    """W (positive, in place) with each row scaled to sum to 1."""
    np.maximum(W, _TINY, out=W)
    W /= (W @ np.ones(W.shape[1]))[:, None]
    return W


class DCDGrouping(Grouping):
    """DCD's objective on the coarse graph C for W = W_sub G, W_sub the sub-clusters' own soft rows."""

    def __init__(self, C: np.ndarray, size: np.ndarray, W_sub: np.ndarray, k: int, prior: float) -> None:
        self.C, self.size, self.W_sub, self.k, self.prior = C, size, W_sub, k, prior
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    def _loss(self, Wg: np.ndarray) -> np.ndarray:  # Wg: (..., m, k)
        s = np.maximum(self.size @ Wg, _TINY)
        A_hat = np.matmul(Wg / s[..., None, :], np.swapaxes(Wg, -1, -2))
        np.maximum(A_hat, _TINY, out=A_hat)
        np.log(A_hat, out=A_hat)
        m = len(self.size)
        loss = -(A_hat.reshape(*A_hat.shape[:-2], m * m) @ self.C.ravel())
        if self.prior != 1.0:
            loss = loss - (self.prior - 1.0) * (np.log(np.maximum(Wg, _TINY)).sum(axis=-1) @ self.size)
        return loss

    def grouped(self, g: np.ndarray) -> np.ndarray:
        """W_sub G: the sub-clusters' rows summed by group (n_sub x k)."""
        if self._last is None or not np.array_equal(self._last[0], g):
            Wg = np.zeros((len(g), self.k))
            np.add.at(Wg.T, g, self.W_sub.T)
            self._last = (g.copy(), Wg)
        return self._last[1]

    def value(self, g: np.ndarray) -> float:
        return float(self._loss(self.grouped(g)))

    def moves(self, g: np.ndarray, a: int) -> np.ndarray:
        Wg = self.grouped(g)
        trial = np.repeat(Wg[None], self.k, axis=0)  # trial t: column a of W_sub moved to group t
        trial[:, :, g[a]] -= self.W_sub[:, a]
        trial[np.arange(self.k), :, np.arange(self.k)] += self.W_sub[:, a]
        return self._loss(np.maximum(trial, 0.0))


def exact_restarts_for(k: int) -> int:
    """Restarts of DCD's exact grouping search for k clusters: 50 up to k=20, then as many as cost what 50 cost
    at k=20 (a restart grows as about k^4: 0.03 s at k=10, 20-30 s at k=50), at least 1.

    At k=20 the 50 restarts matter (3 scored 0.9633 at seed 0 for 0.9816, at a higher objective); at k=50,
    1 is the measured choice (0.9746-0.9791 in 63-86 s; bench/RESULTS.md). 9 at k=30, 3 at k=40.
    """
    return max(1, min(50, int(50 * (20 / k) ** 4)))


def dcd_start(S, sub: np.ndarray, n_sub: int, k: int, *, prior: float, n_restarts: int, exact_restarts: int | None,
              seed: int) -> np.ndarray:
    """DCD's start from a grouping of sub-clusters (see :class:`nmfstudy.methods.DCD`).

    The grouping minimizes DCD's objective on the coarse graph P^T S P, for W = W_sub G (W_sub:
    DCD refined with one cluster per sub-cluster, G the grouping; :class:`DCDGrouping`). Its
    local search restarts first from the grouping of highest ratio association, found by
    :func:`~nmfstudy.nmf.partition_search.search_partition` with `n_restarts` restarts, then
    from random groupings. The best grouping is refined on the coarse graph and lifted to the
    samples.

    Parameters
    ----------
    S : sparse matrix (n x n)
        The symmetric non-negative graph, float64.
    sub : ndarray of shape (n,)
        Each sample's sub-cluster, 0..n_sub-1.
    n_sub : int
        The number of sub-clusters (more than k).
    k : int
        The number of clusters.
    prior : float
        The Dirichlet prior's concentration, >= 1 (1: none).
    n_restarts : int
        Restarts of the ratio-association search.
    exact_restarts : int or None
        Restarts of the search by DCD's coarse objective (the first from the ratio-association grouping);
        None: :func:`exact_restarts_for` k.
    seed : int
        Seeds both searches.

    Returns
    -------
    ndarray of shape (n, k), float64
        The start: the refined coarse rows, each sample taking its sub-cluster's.
    """
    P = membership(sub, n_sub)
    C = (P.T @ S @ P).toarray()
    size = np.bincount(sub, minlength=n_sub).astype(np.float64)
    C_sparse = sp.csr_matrix(C)
    own = np.full((n_sub, n_sub), 1e-3)
    np.fill_diagonal(own, 1.0)
    W_sub = dcd(C_sparse, own, prior=prior, max_iter=200, tol=0.0, size=size).W
    objective = DCDGrouping(C, size, W_sub, k, prior)
    # at k=50 the exact search from this grouping ended lower than from a random one (bench/RESULTS.md)
    association, _ = search_partition(C, size, k, ratio_association_loss, n_restarts, seed)
    restarts = exact_restarts_for(k) if exact_restarts is None else exact_restarts
    g, _ = search_grouping(objective, n_sub, k, restarts, seed, starts=(association,))
    W_coarse = dcd(C_sparse, objective.grouped(g), prior=prior, max_iter=2000, tol=1e-10, size=size).W
    return W_coarse[sub]
