"""Random-walk NMF (``method=nmfr``) and doubly stochastic decomposition (``method=dcd``) of the kNN graph.

Two cluster models of the sparse kNN graph S of the samples, each with its own objective,
solver and a start found by the same multilevel search:

- NMFR: Yang, Hao, Dikmen, Chen, Oja, "Clustering by Nonnegative Matrix Factorization Using
  Graph Random Walk", NIPS 2012. W (n x k, >= 0) maximizes Tr(W^T A W) for the random-walk
  smoothed similarity A = (1 - alpha) (I - alpha Q)^-1, Q = D^-1/2 S D^-1/2, under a W^T W = I
  normalization and a penalty lam sum_i |w_i|^4 that keeps every sample's weight alike.
  A is never formed: A W comes from block conjugate gradients on I - alpha Q, warm-started.
- DCD: Yang, Oja, "Clustering by Low-Rank Doubly Stochastic Matrix Decomposition", ICML 2012
  (and Yang, Corander, Oja, JMLR 17, 2016). S ~ A_hat with A_hat_ij = sum_k W_ik W_jk / s_k,
  s_k = sum_v W_vk and W row-stochastic (W_ik = P(cluster k | sample i)), A_hat doubly
  stochastic; the KL divergence is minimized under a Dirichlet(prior) prior on the rows of W.

Both objectives prefer the right partition of MNIST, but their multiplicative updates only
descend into the basin they start in, and the usual starts (spectral clustering, random)
lie in wrong basins: they split the 1s and merge 4 with 9. So both methods start from a
multilevel search (in the spirit of multilevel graph partitioning, e.g. Dhillon, Guan,
Kulis, "Weighted Graph Cuts without Eigenvectors: A Multilevel Approach", IEEE TPAMI 29(11),
2007): over-cluster the samples into m = oversplit * k small, pure sub-clusters (k-means on
the normalized spectral embedding of Q, Ng, Jordan, Weiss, NIPS 2001); group the sub-clusters
into k clusters by the method's own objective, evaluated exactly on the coarse graph
P^T S P (or P^T A P), with many random restarts of a local search (each sub-cluster moved to
the group that lowers the objective most, until none does); lift the best grouping to the
samples and refine it with the method's updates. With `n_init` > 1 this is repeated from
other over-clusterings and the lowest objective wins. No labels are used anywhere.

Solvers follow :mod:`nmfstudy.nmf.graph_nmf`: plain functions over arrays, the graph sparse
(never an n x n dense matrix), callback(iteration, loss, elapsed_s) -> True to stop, and the
stopping rule "relative decrease of the loss below tol, or max_iter". The factors (n x k) are
iterated in float64: the multiplicative ratios of entries that tend to 0 underflow in float32,
and at n x k they cost nothing next to the sparse products.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla

from ..nmf._common import MAX_ITER, TOL, Callback, Monitor
from ..nmf.graph_nmf import normalize_graph
from ..nmf.partition_search import membership, search_partition
from ..params import Interval
from ._base import GraphEstimator

__all__ = ["DCD", "NMFR", "FactorResult", "RandomWalk", "dcd", "dcd_objective", "nmfr",
           "nmfr_objective", "spectral_embedding", "over_cluster", "search_grouping"]

_TINY = 1e-300
_NO_PENALTY = (0.0, 0.0, 0.0, 0.0)


@dataclass
class FactorResult:
    """What :func:`nmfr` and :func:`dcd` return.

    W: n_samples x k (float64); loss_history[i] the objective after iteration i + 1 and
    time_history[i] the seconds elapsed then; start_loss the objective at the start.
    """

    W: np.ndarray
    n_iter: int
    loss_history: np.ndarray
    time_history: np.ndarray
    stopped_by_callback: bool = False
    start_loss: float = float("nan")

    @property
    def loss(self) -> float:
        """The final objective."""
        return float(self.loss_history[-1])


def _monitor(tol: float, max_iter: int, callback: Callback | None, start_loss: float) -> Monitor:
    mon = Monitor(tol, max_iter, callback, False, _NO_PENALTY)
    mon.start(start_loss, None, None, None, None)
    return mon


def _result(mon: Monitor, W: np.ndarray, start_loss: float) -> FactorResult:
    m = mon.n_iter
    return FactorResult(W, m, mon.losses[:m].copy(), mon.times[:m].copy(), mon.stopped_by_callback, start_loss)


# --------------------------------------------------------------------------- the random walk (NMFR)


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
    """

    def __init__(self, Q, alpha: float, tol: float = 1e-4, max_iter: int = 500) -> None:
        self.Q = sp.csr_matrix(Q, dtype=np.float64)
        self.alpha, self.tol, self.max_iter = float(alpha), float(tol), int(max_iter)
        self._last: np.ndarray | None = None
        self.n_products = 0  # sparse products spent so far

    def __call__(self, B: np.ndarray) -> np.ndarray:
        """A B for a dense B (n x r), float64."""
        B = np.asarray(B, dtype=np.float64)
        rhs = (1.0 - self.alpha) * B
        X = self._last.copy() if self._last is not None and self._last.shape == B.shape else rhs.copy()
        R = rhs - (X - self.alpha * (self.Q @ X))
        self.n_products += 1
        P = R.copy()
        rr = np.einsum("ij,ij->j", R, R)
        goal = (self.tol ** 2) * np.einsum("ij,ij->j", rhs, rhs)
        for _ in range(self.max_iter):
            if np.all(rr <= goal):
                break
            AP = P - self.alpha * (self.Q @ P)
            self.n_products += 1
            step = rr / np.maximum(np.einsum("ij,ij->j", P, AP), _TINY)
            X += step * P
            R -= step * AP
            rr_new = np.einsum("ij,ij->j", R, R)
            P *= rr_new / np.maximum(rr, _TINY)
            P += R
            rr = rr_new
        self._last = X
        return X.copy()


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
         cg_tol: float = 1e-4, callback: Callback | None = None) -> FactorResult:
    """NMF using graph random walk (NMFR, Yang, Hao, Dikmen, Chen, Oja, NIPS 2012), from a start W.

    Minimizes ``-Tr(W^T A W) + mu/2 |W^T W - I|_F^2 + lam sum_i (sum_k W_ik^2)^2`` over W >= 0,
    A = (1 - alpha) (I - alpha Q)^-1. The paper constrains W^T W = I and handles it by a
    Lagrangian; here the constraint is a quadratic penalty of weight mu, which makes the
    multiplicative majorization-minimization update (Yang, Oja, "Unified development of
    multiplicative algorithms for linear and quadratic nonnegative matrix factorization",
    IEEE TNN 22(12), 2011) provably monotone::

        W <- W * ((2 A W + 2 mu W) / (2 mu W W^T W + 4 lam diag(|w_i|^2) W)) ^ (1/4)

    (the quartic terms majorized by Jensen's inequality, the negative quadratic ones by their
    logarithmic lower bound). The objective never rises, up to the CG tolerance in A W.

    Parameters
    ----------
    Q : sparse matrix (n x n)
        The normalized graph D^-1/2 S D^-1/2.
    W : ndarray of shape (n, k)
        The start (non-negative, no all-zero column); its columns are scaled to unit norm.
    alpha : float
        The random walk's continuation probability, in [0, 1).
    lam : float
        Weight of the row-norm penalty (absolute; :class:`NMFRClustering` scales it by n / k).
    mu : float
        Weight of the orthogonality penalty, > 0.
    max_iter, tol : int, float
        Iteration cap; stop when the relative decrease of the objective falls below `tol`.
    cg_tol : float
        Relative residual of the conjugate-gradient solves for A W.
    callback : callable or None
        ``callback(iteration, loss, elapsed_s)``; True stops.

    Returns
    -------
    FactorResult
        W and the objective (:func:`nmfr_objective`) per iteration.
    """
    W = np.array(W, dtype=np.float64)
    norms = np.linalg.norm(W, axis=0)
    if W.ndim != 2 or W.shape[0] != Q.shape[0] or (W < 0).any() or not (norms > 0).all():
        raise ValueError(f"W must be a non-negative ({Q.shape[0]} x k) array without an all-zero column")
    W /= norms
    walk = RandomWalk(Q, alpha, tol=cg_tol)
    AW = walk(W)
    start_loss = nmfr_objective(W, AW, lam, mu)
    mon = _monitor(tol, max_iter, callback, start_loss)
    for _ in range(max_iter):
        num = np.maximum(AW, 0.0)  # A >= 0, so A W >= 0 but for the CG tolerance
        num += mu * W
        num *= 2.0
        den = 2.0 * mu * (W @ (W.T @ W))
        if lam:
            den += (4.0 * lam) * np.einsum("ij,ij->i", W, W)[:, None] * W
        np.maximum(den, _TINY, out=den)
        W *= np.sqrt(np.sqrt(num / den))
        AW = walk(W)
        if mon.step(nmfr_objective(W, AW, lam, mu), None, None, None, None):
            break
    return _result(mon, W, start_loss)


# --------------------------------------------------------------------------- DCD


class _Pairs:
    """The stored entries of a symmetric CSR matrix S, each unordered pair {i, j} once.

    A_hat is symmetric, so it is computed once per pair (about half of S's entries) and spread
    back to all entries by `spread`.
    """

    def __init__(self, S: sp.csr_matrix) -> None:
        n = S.shape[0]
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(S.indptr))
        cols = S.indices.astype(np.int64)
        keys = np.minimum(rows, cols) * n + np.maximum(rows, cols)
        unique, self.spread = np.unique(keys, return_inverse=True)
        self.rows, self.cols = unique // n, unique % n


def _dcd_loss(S, pairs: _Pairs, W, prior, size) -> tuple[float, np.ndarray]:
    """The DCD objective at W and the ratios S_ij / A_hat_ij on S's entries."""
    s = size @ W
    Ws = W / np.sqrt(np.maximum(s, _TINY))
    a_hat = np.maximum(np.einsum("ij,ij->i", Ws[pairs.rows], Ws[pairs.cols]), _TINY)[pairs.spread]
    loss = -float(np.dot(S.data, np.log(a_hat)))
    if prior != 1.0:
        loss -= (prior - 1.0) * float(size @ np.log(np.maximum(W, _TINY)).sum(axis=1))
    return loss, S.data / a_hat


def _dcd_step(W: np.ndarray, ZW: np.ndarray, size: np.ndarray, prior: float) -> np.ndarray:
    """One multiplicative update of Yang & Oja (2012) from the product Z W, Z = S / A_hat."""
    s = size @ W
    grad_neg = (2.0 / s) * ZW / size[:, None]  # per sample (a node of weight size_a counts size_a times)
    grad_pos = np.broadcast_to(np.einsum("ik,ik->k", W, ZW) / (s * s), W.shape)
    if prior != 1.0:
        grad_neg = grad_neg + (prior - 1.0) / np.maximum(W, _TINY)
    a = (W / grad_pos).sum(axis=1, keepdims=True)
    b = (W * grad_neg / grad_pos).sum(axis=1, keepdims=True)
    W = W * (grad_neg * a + 1.0) / (grad_pos * a + b)
    np.maximum(W, _TINY, out=W)
    W /= W.sum(axis=1, keepdims=True)
    return W


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
        callback: Callback | None = None) -> FactorResult:
    """Low-rank doubly stochastic decomposition (DCD, Yang & Oja, ICML 2012), from a start W.

    Minimizes the KL divergence of S from A_hat, A_hat_ij = sum_k W_ik W_jk / s_k with
    s_k = sum_v W_vk, under W >= 0, sum_k W_ik = 1 and a Dirichlet(prior) prior on the rows of
    W, i.e. ``-sum_ij S_ij log A_hat_ij - (prior - 1) sum_ik log W_ik`` (the rest of the KL
    divergence is constant: A_hat sums to n). The multiplicative update of the paper, with the
    row sums kept by its Lagrangian "relaxed" majorization, never raises it::

        W_ik <- W_ik (grad-_ik a_i + 1) / (grad+_ik a_i + b_i),
        a_i = sum_l W_il / grad+_il,  b_i = sum_l W_il grad-_il / grad+_il,

    grad- = 2 (Z W)_ik / s_k + (prior - 1) / W_ik, grad+ = (W^T Z W)_kk / s_k^2, Z = S / A_hat on
    S's entries only. One iteration costs two passes over S's entries (nnz x k).

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
    callback : callable or None
        ``callback(iteration, loss, elapsed_s)``; True stops.

    Returns
    -------
    FactorResult
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
    pairs = _Pairs(S)
    loss, ratio = _dcd_loss(S, pairs, W, prior, size)
    start_loss = loss
    mon = _monitor(tol, max_iter, callback, loss)
    for _ in range(max_iter):
        Z = sp.csr_matrix((ratio, S.indices, S.indptr), shape=S.shape)
        W = _dcd_step(W, Z @ W, size, prior)
        loss, ratio = _dcd_loss(S, pairs, W, prior, size)
        if mon.step(loss, None, None, None, None):
            break
    return _result(mon, W, start_loss)


# --------------------------------------------------------------------------- the multilevel start


def spectral_embedding(Q, n_vectors: int, seed: int = 0) -> np.ndarray:
    """The leading eigenvectors of Q (n x n_vectors), rows scaled to unit length (Ng, Jordan, Weiss 2001).

    Parameters
    ----------
    Q : sparse matrix (n x n)
        The normalized graph.
    n_vectors : int
        How many eigenvectors (at most n - 1).
    seed : int
        Seeds ARPACK's start vector (the eigenvectors are then fixed by it).

    Returns
    -------
    ndarray of shape (n, n_vectors)
    """
    n = Q.shape[0]
    n_vectors = min(n_vectors, n - 1)
    Q = sp.csr_matrix(Q, dtype=np.float64)
    if n < 500:
        vectors = np.linalg.eigh(Q.toarray())[1][:, ::-1][:, :n_vectors]
    else:
        v0 = np.random.default_rng(seed).random(n)
        # Q + I is positive semi-definite: its largest eigenvalues are Q's, and ARPACK finds them fast
        _, vectors = sla.eigsh(Q + sp.identity(n, format="csr"), k=n_vectors, which="LA", v0=v0, tol=1e-6)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def over_cluster(U: np.ndarray, n_sub: int, seed: int = 0) -> np.ndarray:
    """K-means (3 starts, seeded) of the embedding's rows into `n_sub` sub-clusters, numbered 0..n_sub-1.

    Parameters
    ----------
    U : ndarray of shape (n, d)
        The spectral embedding.
    n_sub : int
        The number of sub-clusters.
    seed : int

    Returns
    -------
    ndarray of shape (n,)
    """
    from sklearn.cluster import KMeans

    labels = KMeans(n_clusters=n_sub, n_init=3, random_state=seed).fit_predict(U.astype(np.float32))
    return np.unique(labels, return_inverse=True)[1]  # an empty sub-cluster leaves no gap


class _Grouping:
    """The objective of a grouping g (coarse node -> one of k groups), with every single move's value."""

    def value(self, g: np.ndarray) -> float:
        raise NotImplementedError

    def moves(self, g: np.ndarray, a: int) -> np.ndarray:
        """The objective after moving node a to each group (its own group: the current value)."""
        raise NotImplementedError


class _DCDGrouping(_Grouping):
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


def search_grouping(objective: _Grouping, n_nodes: int, k: int, n_restarts: int, seed: int = 0,
                    max_sweeps: int = 100, starts: tuple[np.ndarray, ...] = ()) -> tuple[np.ndarray, float]:
    """The lowest-objective grouping of `n_nodes` coarse nodes into k non-empty groups found by local search.

    Each restart starts from one of `starts`, then from random groupings (every group non-empty),
    and sweeps over the nodes in random order, moving each to the group that lowers the objective
    most (a node that is alone in its group stays), until a sweep moves none.

    Parameters
    ----------
    objective : _Grouping
        The coarse objective.
    n_nodes, k : int
        Coarse nodes and groups (k <= n_nodes).
    n_restarts : int
        Restarts in all (the given starts first, then random ones); the lowest final objective wins.
    seed : int
    max_sweeps : int
        Sweeps per restart at most.
    starts : tuple of ndarray of shape (n_nodes,), default ()
        Groupings to start from before the random ones (each group non-empty; not changed).

    Returns
    -------
    (ndarray of shape (n_nodes,), float)
        The grouping and its objective.
    """
    rng = np.random.default_rng(seed)
    best_g, best_f = None, np.inf
    for restart in range(n_restarts):
        if restart < len(starts):
            g = np.array(starts[restart], dtype=np.int64)
        else:
            g = rng.permutation(np.concatenate([np.arange(k), rng.integers(0, k, n_nodes - k)]))
        f = objective.value(g)
        for _ in range(max_sweeps):
            moved = False
            for a in rng.permutation(n_nodes):
                if np.count_nonzero(g == g[a]) == 1:
                    continue
                values = objective.moves(g, a)
                t = int(np.argmin(values))
                if values[t] < f - 1e-12 * abs(f):
                    g[a], f, moved = t, float(values[t]), True
            if not moved:
                break
        if f < best_f:
            best_g, best_f = g.copy(), f
    return best_g, best_f


# --------------------------------------------------------------------------- the methods

_SEARCH_PARAMETERS = {
    "max_iter": MAX_ITER,
    "tol": TOL,
    "n_init": [Interval(Integral, 1)],
    "oversplit": [Interval(Integral, 1)],
    "n_vectors": [Interval(Integral, 1)],
    "n_restarts": [Interval(Integral, 1)],
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
    n_init: int = 2
    oversplit: int = 5
    n_vectors: int = 30
    n_restarts: int = 50
    n_neighbors: int = 10
    weight: str = "binary"
    pca: int | None = None
    cache_dir: str | None = field(default=None, kw_only=True)

    def _start(self, S, Q, sub: np.ndarray, n_sub: int, seed: int) -> np.ndarray:
        raise NotImplementedError

    def _refine(self, S, Q, W: np.ndarray, callback) -> FactorResult:
        raise NotImplementedError

    def _fit(self, X: np.ndarray, seed: int, callback) -> float:
        """Build (or load) the kNN graph of X, search a start, refine it; clusters = argmax of W."""
        start = time.perf_counter()
        S = self._graph(X, seed).astype(np.float64)
        Q = normalize_graph(S).astype(np.float64)
        U = spectral_embedding(Q, max(self.n_vectors, self.k), seed)
        best = None
        for run in range(self.n_init):
            sub = over_cluster(U, min(self.oversplit * self.k, len(X)), seed + run)
            n_sub = int(sub.max()) + 1
            W0 = self._start(S, Q, sub, n_sub, seed + run) if n_sub > self.k else _lift(np.arange(n_sub), sub, self.k)
            result = self._refine(S, Q, W0, callback)
            if best is None or result.loss < best.loss:
                best = result
            if result.stopped_by_callback:
                best.stopped_by_callback = True
                break
        self._keep_history(best)
        self.W_ = best.W.astype(np.float32)
        self.labels_ = self.W_.argmax(axis=1)
        weights = self.W_ / np.maximum(self.W_.sum(axis=0), np.finfo(np.float32).tiny)
        self.components_ = np.ascontiguousarray(weights.T @ X, dtype=np.float32)
        return start


def ratio_association_loss(a: np.ndarray, n: np.ndarray) -> np.ndarray:
    """-a / n: a cluster's term of the ratio association, for :func:`search_partition`."""
    return -a / n


def _lift(g: np.ndarray, sub: np.ndarray, k: int, floor: float = 0.05) -> np.ndarray:
    """Samples' start rows from a grouping of their sub-clusters: 1 on the group, `floor` elsewhere."""
    W = np.full((len(sub), k), floor)
    W[np.arange(len(sub)), g[sub]] = 1.0
    return W


@dataclass(repr=False, eq=False)
class NMFR(_MultilevelGraphEstimator):
    """NMF using graph random walk (NMFR) of the kNN graph; clusters = argmax of W.

    Yang, Hao, Dikmen, Chen, Oja, "Clustering by Nonnegative Matrix Factorization Using Graph
    Random Walk", NIPS 2012 (solver: :func:`nmfr`). Start: the sub-clusters' grouping that
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
    tol: float = 1e-6
    alpha: float = 0.8
    lam: float = 0.2
    mu: float = 10.0
    cg_tol: float = 1e-4

    def _lam(self, n: int) -> float:
        return self.lam * n / self.k

    def _start(self, S, Q, sub, n_sub, seed):
        P = membership(sub, n_sub)
        CA = np.asarray(P.T @ RandomWalk(Q, self.alpha, tol=1e-5)(P.toarray()))
        size = np.bincount(sub, minlength=n_sub).astype(np.float64)
        lam = self._lam(len(sub))

        def group_loss(assoc, n):  # a cluster's term of the objective at its normalized indicator
            return (lam - assoc) / n

        g, _ = search_partition((CA + CA.T) / 2, size, self.k, group_loss, self.n_restarts, seed)
        return _lift(g, sub, self.k)

    def _refine(self, S, Q, W, callback):
        return nmfr(Q, W, alpha=self.alpha, lam=self._lam(len(W)), mu=self.mu, max_iter=self.max_iter, tol=self.tol,
                    cg_tol=self.cg_tol, callback=callback)


@dataclass(repr=False, eq=False)
class DCD(_MultilevelGraphEstimator):
    """Low-rank doubly stochastic decomposition (DCD) of the kNN graph; clusters = argmax of W.

    Yang, Oja, "Clustering by Low-Rank Doubly Stochastic Matrix Decomposition", ICML 2012 (solver:
    :func:`dcd`). Start: the sub-clusters' grouping that minimizes DCD's objective on the coarse
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
    exact_restarts : int
        Restarts of the search by DCD's own coarse objective: the first from the ratio-association
        grouping, the others random. A move there costs O(k^2 m^2) (k products of m x k by k x m),
        and a restart grows as about k^4: 0.03 s at k=10, 20-30 s at k=50 on full MNIST (where 1 is
        the measured choice).
    """

    name: ClassVar[str] = "dcd"
    parameters: ClassVar = {**_SEARCH_PARAMETERS, "prior": [Interval(Real, 1.0)],
                            "exact_restarts": [Interval(Integral, 1)]}

    prior: float = 1.0
    exact_restarts: int = 50

    def _start(self, S, Q, sub, n_sub, seed):
        P = membership(sub, n_sub)
        C = (P.T @ S @ P).toarray()
        size = np.bincount(sub, minlength=n_sub).astype(np.float64)
        C_sparse = sp.csr_matrix(C)
        own = np.full((n_sub, n_sub), 1e-3)
        np.fill_diagonal(own, 1.0)
        W_sub = dcd(C_sparse, own, prior=self.prior, max_iter=200, tol=0.0, size=size).W
        objective = _DCDGrouping(C, size, W_sub, self.k, self.prior)
        # at k=50 the exact search from this grouping ended lower than from a random one (bench/RESULTS.md)
        association, _ = search_partition(C, size, self.k, ratio_association_loss, self.n_restarts, seed)
        g, _ = search_grouping(objective, n_sub, self.k, self.exact_restarts, seed, starts=(association,))
        W_coarse = dcd(C_sparse, objective.grouped(g), prior=self.prior, max_iter=2000, tol=1e-10, size=size).W
        return W_coarse[sub]

    def _refine(self, S, Q, W, callback):
        return dcd(S, W, prior=self.prior, max_iter=self.max_iter, tol=self.tol, callback=callback)
