"""Graph-aware NMF: GNMF (a kNN-graph penalty on W) and SymNMF (NMF of the graph itself).

- :func:`gnmf`: Cai, He, Han, Huang, "Graph Regularized Nonnegative Matrix
  Factorization for Data Representation", IEEE TPAMI 33(8), 1548-1560, 2011.
- :func:`symnmf`: Kuang, Ding, Park, "Symmetric Nonnegative Matrix Factorization for
  Graph Clustering", SDM 2012; solved by multiplicative updates (He, Xie, Zdunek,
  Zhou, Cichocki, IEEE TNN 22(12), 2011) or by the penalised ANLS of Kuang, Yun, Park,
  J. Global Optim. 62(3), 2015, with HALS inner sweeps (Zhu, Li, Liu, Tang, NeurIPS 2018).

Same conventions as :mod:`nmfstudy.nmf.solvers`: plain functions over float32 arrays, the
graph S as a sparse matrix (never an n x n dense one), the callback contract
callback(iteration, loss, elapsed_s) -> True to stop, and the stopping rule (relative
loss decrease < tol, or max_iter); both return a :class:`~nmfstudy.nmf.FitResult`.
"""
from __future__ import annotations

import itertools
from contextlib import nullcontext
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import reverse_cuthill_mckee

from ..params import Interval, InvalidParameterError, Options, check
from ._common import (
    MAX_ITER,
    TOL,
    Callback,
    FitResult,
    Monitor,
    check_nmf_arguments,
    squared_norm,
    tdot,
    threadpools,
)
from .graph import SEED
from .partition_search import membership
from .solvers import MU_EPS, frobenius_loss

__all__ = ["gnmf", "GNMF_SOLVERS", "SYMNMF_SOLVERS", "ASSIGN_RULES", "graph_smoothness", "gnmf_objective", "symnmf",
           "normalize_graph", "numbered_on", "partition_start", "cluster_rows"]


def _check_graph(S, n: int) -> sp.csr_matrix:
    if not sp.issparse(S):
        raise ValueError(f"S must be a scipy.sparse matrix (n_samples x n_samples), got {type(S).__name__}")
    if S.shape != (n, n):
        raise ValueError(f"S must have shape {(n, n)}, got {S.shape}")
    S = sp.csr_matrix(S, dtype=np.float32)
    if S.nnz and (not np.isfinite(S.data).all() or S.data.min() < 0):
        raise ValueError("S must be finite and non-negative")
    if abs(S - S.T).max() > 1e-6 * max(abs(S).max(), 1e-30):
        raise ValueError("S must be symmetric")
    return S


def graph_smoothness(W: np.ndarray, S) -> float:
    """Tr(W^T L W) = 1/2 sum_ij S_ij |w_i - w_j|^2 with L = D - S, in float64.

    GNMF's graph term (Cai, He, Han, Huang 2011): small when samples joined in the graph have
    similar coefficients. Computed as sum_i d_i |w_i|^2 - sum(W * (S W)), without forming L.

    Parameters
    ----------
    W : array_like of shape (n_samples, k)
        The coefficients; used as float32.
    S : scipy.sparse matrix of shape (n_samples, n_samples)
        The symmetric non-negative graph weights; D = diag(S 1).

    Returns
    -------
    float
        Tr(W^T L W), clipped at 0 against cancellation.
    """
    W = np.asarray(W, dtype=np.float32)
    SW = S @ W
    d = np.asarray(S.sum(axis=1), dtype=np.float64).ravel()
    sq = np.einsum("ij,ij->i", W, W, dtype=np.float64)
    return max(float(d @ sq) - float(np.einsum("ij,ij->", W, SW, dtype=np.float64)), 0.0)


def gnmf_objective(X, W, H, S, lam: float) -> tuple[float, float, float]:
    """GNMF's objective at (W, H) and its two terms (Cai, He, Han, Huang 2011).

    Parameters
    ----------
    X : array_like of shape (n_samples, n_features)
        The data matrix.
    W : array_like of shape (n_samples, k)
        The coefficients.
    H : array_like of shape (k, n_features)
        The basis.
    S : scipy.sparse matrix of shape (n_samples, n_samples)
        The symmetric non-negative graph weights.
    lam : float
        The weight of the graph term.

    Returns
    -------
    objective : float
        ||X - WH||_F^2 + lam Tr(W^T L W).
    reconstruction : float
        ||X - WH||_F (not squared).
    smoothness : float
        Tr(W^T L W), see :func:`graph_smoothness`.
    """
    rec = frobenius_loss(X, W, H)
    smooth = graph_smoothness(W, S)
    return rec * rec + lam * smooth, rec, smooth


# --------------------------------------------------------------------------- GNMF

GNMF_SOLVERS = ("hals", "mu")


def gnmf(X, W, H, S, *, lam: float, solver: str = "mu", max_iter: int = 200, tol: float = 1e-4,
         callback: Callback | None = None) -> FitResult:
    """Graph-regularised NMF (GNMF, Cai, He, Han, Huang, IEEE TPAMI 2011).

    Minimises ||X - WH||_F^2 + lam Tr(W^T L W), L = D - S the Laplacian of the sample
    graph S (e.g. :func:`nmfstudy.nmf.graph.knn_graph`), D = diag(S 1): samples joined in the
    graph get similar coefficients. In our orientation the paper's V is our W and its U
    our H^T.

    solver:
      - "mu": the paper's multiplicative updates, one iteration being W then H::

            W <- W * (X H^T + lam S W) / (W H H^T + lam D W)
            H <- H * (W^T X) / (W^T W H)

        The objective never increases (the paper's Theorem 1), and with lam = 0 this
        is exactly :func:`nmfstudy.nmf.solvers.nmf_mu` (same operations, same bits). The
        objective is not scale-invariant: shrinking W and growing H lowers the graph
        term, and over many iterations MU drifts that way, so lam means something
        only relative to the start's scale.
      - "hals": the same objective with the rows of H held at unit L2 norm, the
        normalisation Cai et al. apply to their result, made a constraint so lam keeps
        its meaning (the start is rescaled to it, WH unchanged). Coordinate descent
        (HALS, Cichocki & Phan 2009) over the columns of W and rows of H: a column w of
        W minimises a separable upper bound of its objective (L <= 2D, as D + S is
        positive semi-definite), w <- max(0, (R h + lam (D w0 + S w0)) / (|h|^2 + 2 lam d)),
        R the residual without that component; a row h of H is the exact minimiser on
        the unit sphere, h <- max(0, R^T w) / |max(0, R^T w)|. Both steps never raise
        the objective; in our runs it converges in far fewer iterations than MU and
        clusters better.

    Parameters
    ----------
    X : array_like of shape (n_samples, n_features)
        The data, non-negative; used as float32.
    W : array_like of shape (n_samples, k)
        The starting coefficients; copied, not changed.
    H : array_like of shape (k, n_features)
        The starting basis; copied, not changed.
    S : scipy.sparse matrix of shape (n_samples, n_samples)
        The symmetric non-negative graph weights.
    lam : float
        The weight of the graph term (>= 0).
    solver : {"mu", "hals"}, default "mu"
        The update scheme, see above.
    max_iter : int, default 200
        As in :func:`nmfstudy.nmf.solvers.nmf_mu`.
    tol : float, default 1e-4
        As in :func:`nmfstudy.nmf.solvers.nmf_mu`.
    callback : callable, optional
        As in :func:`nmfstudy.nmf.solvers.nmf_mu`.

    Returns
    -------
    FitResult
        Its loss_history[i] is sqrt(||X - WH||_F^2 + lam Tr(W^T L W)) after
        iteration i + 1: the full GNMF objective, square-rooted so that it is in the units
        of nmf_mu's ||X - WH||_F and equals it at lam = 0. The stopping rule applies to it.
        The plain reconstruction error of the result is
        ``nmfstudy.nmf.solvers.frobenius_loss(X, res.W, res.H)`` (or :func:`gnmf_objective`).

    Raises
    ------
    ValueError
        If X, W or H is invalid (as in :func:`nmfstudy.nmf.solvers.nmf_mu`), S is not a sparse
        symmetric finite non-negative n_samples x n_samples matrix, lam is negative, or
        solver is unknown.
    """
    X, W, H = check_nmf_arguments(X, W, H, max_iter, tol, 0.0, "same", 0.0, None, None, callback)
    S = _check_graph(S, X.shape[0])
    lam = float(check("lam", lam, [Interval(Real, 0.0)]))
    check("solver", solver, [Options(GNMF_SOLVERS)])
    mon = Monitor(tol, max_iter, callback)
    x_sq = squared_norm(X)
    d = np.asarray(S.sum(axis=1), dtype=np.float32).ravel()
    run = _gnmf_mu if solver == "mu" else _gnmf_hals
    return run(X, W, H, S, d, float(lam), x_sq, mon, max_iter)


def _gnmf_loss(x_sq, cross, WtW, HHt, lam, d, Wt, SWt) -> float:
    """sqrt(||X||^2 - 2 tr(W^T X H^T) + tr(W^T W H H^T) + lam Tr(W^T L W)), Wt = W^T, SWt = (S W)^T."""
    obj = x_sq - 2.0 * cross + tdot(WtW, HHt)
    if lam:
        Wt64 = Wt.astype(np.float64)
        obj += lam * (float(np.einsum("ji,ji,i->", Wt64, Wt64, d)) - float(np.einsum("ji,ji->", Wt64, SWt)))
    return float(np.sqrt(max(obj, 0.0)))


def _gnmf_mu(X, W, H, S, d, lam, x_sq, mon, max_iter) -> FitResult:
    lam32 = np.float32(lam)
    HHt = H @ H.T
    SW = S @ W if lam else None
    for it in range(max_iter):
        XHt = X @ H.T
        if it == 0:
            WtW = W.T @ W
            mon.start(_gnmf_loss(x_sq, tdot(W, XHt), WtW, HHt, lam, d, W.T, SW.T if lam else None),
                      W, H, WtW, HHt)
        denom = W @ HHt
        if lam:
            XHt += lam32 * SW
            denom += lam32 * d[:, None] * W
        denom[denom == 0] = MU_EPS
        XHt /= denom
        W *= XHt

        WtX = np.ascontiguousarray((X.T @ W).T)  # X^T W: the fast BLAS path for a tall X
        WtW = W.T @ W
        denom = WtW @ H
        denom[denom == 0] = MU_EPS
        H *= WtX / denom

        HHt = H @ H.T
        if lam:
            SW = S @ W
        if mon.step(_gnmf_loss(x_sq, tdot(WtX, H), WtW, HHt, lam, d, W.T, SW.T if lam else None),
                    W, H, WtW, HHt):
            break
    return mon.result(W, H)


def _gnmf_hals(X, W, H, S, d, lam, x_sq, mon, max_iter) -> FitResult:
    k = H.shape[0]
    norms = np.linalg.norm(H, axis=1)
    live = norms > 0
    H[live] /= norms[live, None]
    Wt = np.ascontiguousarray(W.T * norms[:, None])  # rows of Wt are the coordinates
    lam32 = np.float32(lam)
    lam_d, two_lam_d = lam32 * d, 2 * lam32 * d
    SWt = np.ascontiguousarray((S @ Wt.T).T) if lam else None
    HHt = H @ H.T
    for it in range(max_iter):
        A = np.ascontiguousarray((X @ H.T).T)  # H X^T
        if it == 0:
            mon.start(_gnmf_loss(x_sq, tdot(Wt, A), Wt @ Wt.T, HHt, lam, d, Wt, SWt))
        # one BLAS thread in the sweeps: gemv on k x n blocks gains nothing from threads
        # (see solvers.nmf_hals); the products with X keep them all
        with threadpools.limit(limits=1, user_api="blas"):
            for j in range(k):
                # R h_j = (H X^T)_j - (H H^T)_j W^T + |h_j|^2 w_j
                num = A[j] - HHt[j] @ Wt
                num += HHt[j, j] * Wt[j]
                denom = np.float32(HHt[j, j])
                if lam:  # SWt[j] is still S w_j: column j has not moved since
                    num += lam_d * Wt[j]
                    num += lam32 * SWt[j]
                    denom = denom + two_lam_d
                np.maximum(num / denom, 0.0, out=Wt[j])
        SWt = np.ascontiguousarray((S @ Wt.T).T) if lam else None

        WtX = np.ascontiguousarray((X.T @ Wt.T).T)  # X^T W: the fast BLAS path
        WtW = Wt @ Wt.T
        with threadpools.limit(limits=1, user_api="blas"):
            for j in range(k):
                r = WtX[j] - WtW[j] @ H
                r += WtW[j, j] * H[j]
                np.maximum(r, 0.0, out=r)
                nr = np.linalg.norm(r)
                if nr > 0:
                    H[j] = r / nr
                elif WtW[j, j] > 0:  # all correlations <= 0: the best unit h is one pixel
                    H[j] = 0.0
                    H[j, np.argmax(WtX[j] - WtW[j] @ H)] = 1.0
        HHt = H @ H.T
        if mon.step(_gnmf_loss(x_sq, tdot(WtX, H), WtW, HHt, lam, d, Wt, SWt)):
            break
    return mon.result(Wt.T, H)


# --------------------------------------------------------------------------- SymNMF


def normalize_graph(S) -> sp.csr_matrix:
    """D^-1/2 S D^-1/2 (Kuang et al. 2012, section 5); isolated nodes keep zero rows.

    Parameters
    ----------
    S : scipy.sparse matrix or array_like of shape (n, n)
        The symmetric non-negative graph weights; D = diag(S 1).

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n, n), float32
        The normalised graph.
    """
    S = sp.csr_matrix(S, dtype=np.float32)
    d = np.asarray(S.sum(axis=1)).ravel()
    inv = np.zeros_like(d)
    inv[d > 0] = 1.0 / np.sqrt(d[d > 0])
    Dm = sp.diags(inv.astype(np.float32))
    return (Dm @ S @ Dm).tocsr().astype(np.float32)


SYMNMF_SOLVERS = ("anls", "mu")


def symnmf(S, k: int, *, seed: int = 0, n_init: int = 1, max_iter: int = 500, tol: float = 1e-7,
           solver: str = "anls", normalize: bool = True, beta: float = 0.5,
           inner_sweeps: int = 2, callback: Callback | None = None, starts=None,
           screen_iter: int | None = None) -> FitResult:
    """Symmetric NMF of a sparse similarity graph: min ||A - H H^T||_F^2 over H >= 0.

    Kuang, Ding, Park (SDM 2012). A = D^-1/2 S D^-1/2 (``normalize=True``, as in the
    paper) or S itself. Only sparse products A H (nnz x k) and k x k Gram matrices are
    formed, never H H^T; the loss is ||A - HH^T||_F from
    ||A||^2 - 2 tr(H^T A H) + ||H^T H||^2.

    Start: uniform random in [0, 2 sqrt(mean(A) / k)] seeded by ``seed``, so that
    H H^T has A's mean entry (the initialisation of Kuang et al.'s code), or the given
    ``starts`` (e.g. :func:`partition_start`). The problem is non-convex and the clusters
    depend on the start: with ``n_init`` > 1 (or several ``starts``) the runs are compared,
    like K-means' n_init, and the one with the lowest final loss is returned (its seed in
    ``result.seed``); no labels are used. With ``screen_iter``, every start first runs that
    many iterations, and only the one with the lowest loss then runs on to the stopping rule
    (from good starts the ranking of the local minima shows after a few tens of iterations,
    long before each has converged).

    Stopping: as the other solvers (relative loss decrease < tol, or max_iter), but
    the default tol is 1e-7: the loss is dominated by the part of the sparse A that no
    rank-k product can fit, so its relative decrease is tiny from the first
    iterations (on MNIST kNN graphs 1e-7 stops after ~100 iterations). Local minima differ
    by a few parts in a million there, so starts that are to be compared want ~1e-9.
    ``callback(iteration, loss, elapsed_s)`` is called in every run, the iterations numbered on
    across the runs (:func:`numbered_on`: the screening's and the winner's too), so that a reporter
    never sees a step twice; the seconds are each run's own. True stops all.

    solver:
      - "anls": Kuang, Yun, Park (J. Global Optim. 2015): alternate W and H in
        min ||A - W H^T||^2 + alpha ||W - H||^2 with alpha = max(A)^2 (their choice),
        each subproblem solved inexactly by ``inner_sweeps`` HALS sweeps (exact
        coordinate minimisation over one column, Zhu et al. NeurIPS 2018). The
        penalty pulls W and H together; H is returned.
      - "mu": H <- H * (1 - beta + beta (A H) / (H H^T H)), beta = 1/2 (He et al.,
        IEEE TNN 2011): cheap and monotone in practice, but slower to converge.

    Clusters: ``result.labels`` (argmax of each row of H).

    Parameters
    ----------
    S : scipy.sparse matrix of shape (n, n)
        The symmetric finite non-negative similarity graph, n >= 2 (e.g.
        :func:`nmfstudy.nmf.graph.knn_graph`).
    k : int
        The rank of H (the number of clusters), in [1, n].
    seed : int, default 0
        The seed of the first start, in [0, 2**32 - 1].
    n_init : int, default 1
        The number of starts (>= 1); the run with the lowest final loss is returned.
    max_iter : int, default 500
        The number of iterations at most, per run.
    tol : float, default 1e-7
        Stop a run when the relative loss decrease falls below tol (see above for the default).
    solver : {"anls", "mu"}, default "anls"
        The update scheme, see above.
    normalize : bool, default True
        Factor D^-1/2 S D^-1/2 (:func:`normalize_graph`) rather than S.
    beta : float, default 0.5
        The step of the "mu" solver, in (0, 1].
    inner_sweeps : int, default 2
        HALS sweeps per subproblem of the "anls" solver (>= 1).
    callback : callable, optional
        Called as ``callback(iteration, loss, elapsed_s)`` after every iteration of every run,
        `iteration` counting every iteration run so far, across the runs; returning True stops all runs.
    starts : sequence of array_like of shape (n, k), optional
        Start matrices (non-negative, finite; copied): one run from each, in place of the
        ``n_init`` random starts; run i has seed ``seed + i``.
    screen_iter : int, optional
        With several starts: the iterations each runs before all but the lowest-loss one are
        dropped (>= 1); None runs every start to the end.

    Returns
    -------
    FitResult
        The best run's H (n_samples x k, A ~ H H^T), histories and seed; ``stopped_by_callback``
        is set when the callback stopped the runs.

    Raises
    ------
    ValueError
        If S is not a square sparse symmetric finite non-negative matrix with at least 2
        rows, another argument is out of its range, or callback is not callable.
    """
    if not sp.issparse(S) or S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] < 2:
        raise ValueError(f"S must be a square scipy.sparse matrix, got {type(S).__name__} "
                         f"{getattr(S, 'shape', None)}")
    n = S.shape[0]
    S = _check_graph(S, n)
    check("k", k, [Interval(Integral, 1, n)])
    check("seed", seed, SEED)
    check("max_iter", max_iter, MAX_ITER)
    check("tol", tol, TOL)
    check("solver", solver, [Options(SYMNMF_SOLVERS)])
    check("beta", beta, [Interval(Real, 0.0, 1.0, closed="right")])
    check("inner_sweeps", inner_sweeps, [Interval(Integral, 1)])
    check("n_init", n_init, [Interval(Integral, 1)])
    check("screen_iter", screen_iter, [Interval(Integral, 1), None])
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable or None, got {type(callback).__name__}")

    if starts is not None:
        starts = [_check_start(H, n, k, i) for i, H in enumerate(starts)]
        if not starts:
            raise ValueError("starts must hold at least one start matrix, got none")
    A = normalize_graph(S) if normalize else S
    # samples in reverse Cuthill-McKee order: a sample's neighbours then sit near it in memory, and
    # the sparse products, bound by gathering the neighbours' rows, run 1.3x (k=10) to 2x (k=50) faster
    order = reverse_cuthill_mckee(A, symmetric_mode=True)
    A_ordered = A[order][:, order].tocsr()
    n_runs = n_init if starts is None else len(starts)
    first = max_iter if screen_iter is None or n_runs == 1 else screen_iter
    best, stopped = None, False
    callback = numbered_on(callback)
    for run in range(n_runs):
        H = _random_start(A, k, seed + run) if starts is None else starts[run]
        res = _SymNMFRun(A_ordered, seed + run, max_iter, tol, solver, beta, inner_sweeps, callback, H[order])
        res.advance(first)
        stopped = res.mon.stopped_by_callback
        if best is None or res.loss < best.loss:
            best = res
        if stopped:
            break
    if not stopped and not best.done:
        best.advance(max_iter)  # the screening's winner runs on
    result = best.result()
    result.H[order] = result.H.copy()  # back to the samples' order
    result.stopped_by_callback = stopped or result.stopped_by_callback
    return result


def numbered_on(callback: Callback | None) -> Callback | None:
    """`callback` with the iterations of one fit numbered on across its starts: 1, 2, ... over every one run.

    Each start's solver counts its own iterations from 1; a reporter (Optuna's ``trial.report``, whose
    step must not repeat) needs one step per iteration of the whole fit. Only the number passed on
    changes: the solvers, their histories and results are those of the callback given.

    Parameters
    ----------
    callback : callable or None
        ``callback(iteration, loss, elapsed_s)``; True stops.

    Returns
    -------
    callable or None
        A callback for every start of the fit, that calls `callback` with the number of iterations
        run so far, this one included; None for None.
    """
    if callback is None:
        return None
    steps = itertools.count(1)

    def on(iteration: int, loss: float, elapsed_s: float):
        return callback(next(steps), loss, elapsed_s)

    return on


def _check_start(H, n: int, k: int, i: int) -> np.ndarray:
    H = np.array(H, dtype=np.float32)  # a copy: the runs update it in place
    if H.shape != (n, k):
        raise ValueError(f"starts[{i}] must have shape {(n, k)}, got {H.shape}")
    if not np.isfinite(H).all() or H.min() < 0:
        raise ValueError(f"starts[{i}] must be finite and non-negative")
    return H


def partition_start(A, labels, k: int, floor: float = 0.05) -> np.ndarray:
    """A SymNMF start from a partition: the best-scaled cluster indicators, `floor` of them elsewhere.

    For a hard H = sum_c s_c 1_c (1_c the indicator of cluster c) the loss is
    ||A||^2 - 2 sum_c s_c^2 a_c + sum_c s_c^4 n_c^2 (a_c = 1_c^T A 1_c, n_c = |c|), lowest at
    s_c = sqrt(a_c) / n_c, where it is ||A||^2 - sum_c a_c^2 / n_c^2. Each row gets its cluster's
    s_c and `floor` s_c on the other clusters, so that no entry starts at 0 (where the updates
    would keep it); an empty cluster takes the mean scale of the others.

    Parameters
    ----------
    A : scipy.sparse matrix of shape (n, n)
        The (normalized) graph SymNMF factors.
    labels : array_like of shape (n,), int
        The cluster of each sample, in [0, k).
    k : int
        The number of clusters.
    floor : float, default 0.05
        The other clusters' share of each row.

    Returns
    -------
    ndarray of shape (n, k), float32
        The start.
    """
    labels = np.asarray(labels)
    n = len(labels)
    P = membership(labels, k)
    a = np.asarray((P.T @ (A @ P)).diagonal()).ravel()
    size = np.bincount(labels, minlength=k)
    scale = np.sqrt(np.maximum(a, 0.0)) / np.maximum(size, 1)
    if (size == 0).any() and (size > 0).any():  # an empty cluster's column would stay 0 under the updates
        scale[size == 0] = scale[size > 0].mean()
    H = np.full((n, k), floor, dtype=np.float64)
    H[np.arange(n), labels] = 1.0
    return (H * scale).astype(np.float32)


def _random_start(A, k: int, seed: int) -> np.ndarray:
    """Uniform in [0, 2 sqrt(mean(A) / k)], seeded: H H^T has A's mean entry (Kuang et al.'s code)."""
    n = A.shape[0]
    mean_a = float(A.data.sum(dtype=np.float64)) / (n * n)
    rng = np.random.default_rng(seed)
    return (2.0 * np.sqrt(mean_a / k) * rng.random((n, k))).astype(np.float32)


class _SymNMFRun:
    """One SymNMF run that can be advanced in stages (for screening several starts)."""

    def __init__(self, A, seed, max_iter, tol, solver, beta, inner_sweeps, callback, H) -> None:
        self.A, self.seed, self.max_iter, self.solver = A, seed, max_iter, solver
        self.beta, self.inner_sweeps = np.float32(beta), inner_sweeps
        self.a_sq = float(np.dot(A.data.astype(np.float64), A.data))
        self.mon = Monitor(tol, max_iter, callback)
        self.done = False
        # the factors are kept transposed (k x n): the HALS coordinates are then contiguous rows
        self.Ht = np.ascontiguousarray(H.T)
        self.Wt = self.Ht.copy() if solver == "anls" else None
        self.alpha = np.float32(float(A.data.max()) ** 2 if A.nnz else 1.0)
        self.AHt, self.HtH = self._times_a(self.Ht), self.Ht @ self.Ht.T
        self.mon.start(self._loss())

    def _times_a(self, Ft):  # (A F)^T = F^T A for the symmetric A
        return np.ascontiguousarray((self.A @ Ft.T).T)

    def _loss(self) -> float:
        cross = float(np.einsum("ij,ij->", self.Ht, self.AHt, dtype=np.float64))
        return float(np.sqrt(max(self.a_sq - 2.0 * cross + tdot(self.HtH, self.HtH), 0.0)))

    @property
    def loss(self) -> float:
        """The loss now (the start's before any iteration)."""
        return float(self.mon.losses[self.mon.n_iter - 1]) if self.mon.n_iter else self.mon.prev

    def advance(self, n_iter: int) -> None:
        """Run up to `n_iter` more iterations; `done` once the stopping rule, max_iter or the callback ends it."""
        Ht, mon = self.Ht, self.mon
        # anls: k x n gemv, on which BLAS threads cost more than they gain
        with threadpools.limit(limits=1, user_api="blas") if self.solver == "anls" else nullcontext():
            for _ in range(min(n_iter, self.max_iter - mon.n_iter)):
                if self.solver == "mu":
                    # H * AH / (H H^T H) <= AH / diag(H^T H): multiplying first cannot overflow
                    denom = self.HtH @ Ht
                    denom[denom == 0] = MU_EPS
                    AHt = self.AHt
                    AHt *= Ht
                    AHt /= denom
                    AHt *= self.beta
                    Ht *= 1 - self.beta
                    Ht += AHt
                else:
                    # W-step: min ||A - W H^T||^2 + alpha ||W - H||^2, whose normal equations are
                    # W (H^T H + alpha I) = A H + alpha H; then the H-step with the roles swapped
                    self.AHt += self.alpha * Ht
                    _hals_rows(self.Wt, self.AHt, self.HtH, self.alpha, self.inner_sweeps)
                    AWt = self._times_a(self.Wt)
                    AWt += self.alpha * self.Wt
                    _hals_rows(Ht, AWt, self.Wt @ self.Wt.T, self.alpha, self.inner_sweeps)
                self.AHt, self.HtH = self._times_a(Ht), Ht @ Ht.T
                if mon.step(self._loss()):
                    self.done = True
                    return
        self.done = mon.n_iter >= self.max_iter

    def result(self) -> FitResult:
        return FitResult(H=np.ascontiguousarray(self.Ht.T), seed=self.seed, **self.mon.history())


def _hals_rows(Ft: np.ndarray, Bt: np.ndarray, G: np.ndarray, alpha: np.float32, sweeps: int) -> None:
    """HALS sweeps on the rows of Ft (k x n) for min 1/2 tr(Ft^T (G + alpha I) Ft) - tr(Bt^T Ft), Ft >= 0."""
    G = G + alpha * np.eye(G.shape[0], dtype=np.float32)
    for _ in range(sweeps):
        for j in range(Ft.shape[0]):
            if G[j, j] <= 0:
                continue
            row = Bt[j] - G[j] @ Ft
            row /= G[j, j]
            row += Ft[j]
            np.maximum(row, 0.0, out=Ft[j])


# --------------------------------------------------------------------------- clusters


# How rows of a factor become clusters: argmax, or k-means on the L2-normalized rows.
ASSIGN_RULES = ("argmax", "kmeans")


def cluster_rows(W: np.ndarray, n_clusters: int, method: str = "argmax", seed: int = 0) -> np.ndarray:
    """Clusters from a coefficient matrix (n_samples x k).

    Parameters
    ----------
    W : array_like of shape (n_samples, k)
        The coefficients; used as float32.
    n_clusters : int
        The number of clusters (used by "kmeans" only).
    method : {"argmax", "kmeans"}, default "argmax"
        How rows become clusters:

        - "argmax": the largest coefficient of each row (needs n_clusters == k).
        - "kmeans": K-means (n_init=10, seeded) on the L2-normalised rows: Cai et al. (2011)
          cluster GNMF's new representation with K-means; normalised, a row says which
          parts a sample mixes, not how much ink it has.
    seed : int, default 0
        The K-means seed.

    Returns
    -------
    ndarray of shape (n_samples,), int
        The cluster of each row.

    Raises
    ------
    InvalidParameterError
        If method is not one of ``ASSIGN_RULES`` (a ValueError).
    """
    W = np.asarray(W, dtype=np.float32)
    if method == "argmax":
        return W.argmax(axis=1)
    if method != "kmeans":
        raise InvalidParameterError("method", Options(ASSIGN_RULES).describe(method))
    from sklearn.cluster import KMeans

    norms = np.linalg.norm(W, axis=1, keepdims=True)
    U = W / np.where(norms > 0, norms, 1.0)
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(U)
