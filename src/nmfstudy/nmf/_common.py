"""What the package's solvers share: the result type, float64-accumulated norms, argument
checks, and the monitor that records each iteration and decides when to stop.

Private to :mod:`nmfstudy.nmf`: its solvers import these names, nothing outside the package does;
what others need (the result type, the callback type, the argument declarations) :mod:`nmfstudy.nmf`
exports.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController

from ..params import Interval, Options, check, validate

threadpools = ThreadpoolController()

Callback = Callable[[int, float, float], "bool | None"]


def blas_threads() -> int:
    """How many threads BLAS may use here (threadpoolctl's view of OMP_NUM_THREADS and its limits): the
    package's own threaded loops use as many."""
    return max([p["num_threads"] for p in threadpools.info() if p["user_api"] == "blas"] or [1])


class _Workers:
    """The package's worker threads, made once: a thread started per call costs milliseconds on a machine
    whose cores BLAS's own threads keep busy (2.3 ms a start on 2 cores, more than a sparse product gains).
    A forked child starts without them (threads do not survive a fork) and makes its own."""

    def __init__(self) -> None:
        self.pool: ThreadPoolExecutor | None = None
        self.size = 0
        self.lock = threading.Lock()
        os.register_at_fork(after_in_child=self.forget)

    def forget(self) -> None:
        self.pool, self.size, self.lock = None, 0, threading.Lock()

    def run(self, tasks: list[Callable[[], object]]) -> None:
        """Run every task, the first on this thread and the others on the workers; raise what one raised."""
        if len(tasks) > 1:
            with self.lock:
                if self.pool is None or self.size < len(tasks) - 1:
                    self.pool, self.size = ThreadPoolExecutor(len(tasks) - 1, thread_name_prefix="nmfstudy"), \
                        len(tasks) - 1
                pool = self.pool
            others = [pool.submit(task) for task in tasks[1:]]
            try:
                tasks[0]()
            finally:
                for other in others:
                    other.result()
        elif tasks:
            tasks[0]()


_workers = _Workers()


@contextmanager
def own_threads() -> Iterator[int]:
    """Run the block on the package's threads instead of BLAS's; yields how many BLAS had (:func:`blas_threads`).

    BLAS gets one thread meanwhile: OpenBLAS's idle threads keep polling the cores for a while
    after each call, and on a 2-core machine they took the cores from the package's own threads
    (NMFR on all 63,000 MNIST images: its sparse products 15 ms with BLAS's 2 threads about, 8.7 ms
    without, the fit 24 s against 18.5 s). What is left for BLAS inside such loops is small
    (k x k products). BLAS's own values may depend on its thread count (its dot product of 704,000
    terms sums in another order on two threads than on one); on one thread, always, they do not
    depend on the machine's, and the package's threads compute the same values on any number.
    """
    n = blas_threads()
    with threadpools.limit(limits=1, user_api="blas"):
        yield n


def in_threads(n: int, work: Callable[[int, int], object], min_size: int, n_threads: int) -> None:
    """`work(start, end)` over [0, n), one contiguous part per thread (`n_threads` at most, parts of at least
    `min_size`); numpy releases the GIL in the parts' work. Call it inside :func:`own_threads`.

    For loops over fixed blocks (n counts blocks) whose steps each write their own part of an output:
    their values then do not depend on how many threads ran them.
    """
    n_parts = max(1, min(n_threads, n // max(min_size, 1)))
    bounds = np.linspace(0, n, n_parts + 1).astype(np.int64).tolist()
    _workers.run([lambda lo=lo, hi=hi: work(lo, hi) for lo, hi in itertools.pairwise(bounds)])


# rows per block of `in_row_blocks`: a block's temporaries (rows x k float64) stay in the CPU's cache
ROWS_PER_BLOCK = 2048


def in_row_blocks(n_rows: int, work: Callable[[slice], object], n_threads: int, rows: int | None = None,
                  min_blocks: int = 4) -> None:
    """`work(block)` for each fixed block of `rows` rows (a slice of [0, n_rows); default `ROWS_PER_BLOCK`), the
    blocks shared out among `n_threads` threads, `min_blocks` each at least (:func:`in_threads`).

    For row-by-row work (updates and element-wise steps of dense factors, products per pair): each block's
    temporaries stay in the CPU's cache, and since the blocks do not depend on the thread count, neither do the
    values.
    """
    rows = ROWS_PER_BLOCK if rows is None else rows

    def blocks(first, last):
        for start in range(first * rows, min(last * rows, n_rows), rows):
            work(slice(start, start + rows))

    in_threads(-(-n_rows // rows), blocks, min_blocks, n_threads)


class RowBlocks:
    """A sparse matrix whose products with dense blocks run on several threads, one block of its rows each.

    scipy multiplies a CSR matrix by a dense block on one thread, with the GIL released. Cut into
    as many row blocks of equal non-zeros as BLAS may use threads, each block multiplied on its own
    thread, every row of the product is computed exactly as the one-thread product computes it (the
    same sum in the same order), so the values are the same to the last bit. On all 63,000 MNIST
    images (the 15-NN graph, 1.4 M non-zeros, times a 63,000 x 10 float64 block) two threads take
    8.7 ms for 12.9 ms (in :func:`own_threads`). Matrices under `min_nnz` non-zeros stay whole: a thread
    costs more than it saves.

    Parameters
    ----------
    A : sparse matrix (n x m)
        Converted to CSR once.
    n_threads : int or None, default None
        Row blocks at most; None: :func:`blas_threads`. Inside a loop that also calls BLAS, make it in
        :func:`own_threads` and give it the number that yields.
    min_nnz : int, default 2**18
        Non-zeros per block at least.
    """

    def __init__(self, A, n_threads: int | None = None, min_nnz: int = 2**18) -> None:
        A = sp.csr_matrix(A)
        n_blocks = max(1, min(blas_threads() if n_threads is None else n_threads, A.nnz // min_nnz))
        cuts = np.searchsorted(A.indptr, np.linspace(0, A.nnz, n_blocks + 1)[1:-1]).tolist()
        bounds = sorted({0, *cuts, A.shape[0]})
        self.shape, self.dtype, self._A = A.shape, A.dtype, A
        self.blocks = [(lo, hi, A[lo:hi]) for lo, hi in itertools.pairwise(bounds)] if n_blocks > 1 else \
            [(0, A.shape[0], A)]

    def reweighted(self, data: np.ndarray) -> RowBlocks:
        """The matrix with A's non-zero pattern and the values `data` (in A's order), cut as this one is;
        its blocks share A's indices (no copy of the pattern, as ``csr_matrix((data, A.indices, A.indptr))``)."""
        A = self._A
        new = object.__new__(RowBlocks)
        new.shape, new.dtype, new._A = A.shape, data.dtype, sp.csr_matrix((data, A.indices, A.indptr), shape=A.shape)
        new.blocks = [(lo, hi, sp.csr_matrix((data[A.indptr[lo]:A.indptr[hi]], A.indices[A.indptr[lo]:A.indptr[hi]],
                                              A.indptr[lo:hi + 1] - A.indptr[lo]), shape=(hi - lo, A.shape[1])))
                      for lo, hi, _ in self.blocks]
        return new

    def __matmul__(self, B: np.ndarray) -> np.ndarray:
        if len(self.blocks) == 1:
            return self.blocks[0][2] @ B
        out = np.empty((self.shape[0], *B.shape[1:]), dtype=np.result_type(self.dtype, B.dtype))

        def product(lo, hi, rows):
            out[lo:hi] = rows @ B

        _workers.run([lambda block=block: product(*block) for block in self.blocks])
        return out


@dataclass
class FitResult:
    """What every solver of the package returns: the factors and the per-iteration loss and timing.

    Each parameter is kept as the attribute of the same name. A solver sets the factors it has:
    NMF and GNMF X ~ W H (both), SymNMF A ~ H H^T (`H` only, n_samples x k), NMFR and DCD
    (`W` only, n_samples x k).

    Parameters
    ----------
    n_iter : int
        The number of iterations run.
    loss_history : ndarray of shape (n_iter,), float64
        ``loss_history[i]`` is the solver's loss (e.g. ||X - WH||_F) after iteration i + 1.
    time_history : ndarray of shape (n_iter,), float64
        ``time_history[i]`` is the seconds elapsed since the solver was entered, at that point.
    W : ndarray of shape (n_samples, k), optional
        The coefficients (float32 from the NMF solvers, float64 from NMFR and DCD).
    H : ndarray, optional
        The basis images (k, n_features), float32; for SymNMF the factor (n_samples, k).
    stopped_by_callback : bool, default False
        True when the callback asked the run to stop.
    start_loss : float, default NaN
        The loss at the start, where the solver records it (NMFR, DCD).
    seed : int or None, default None
        The seed of the start that gave the factors, where the solver tried several (SymNMF).
    """

    n_iter: int
    loss_history: np.ndarray
    time_history: np.ndarray
    W: np.ndarray | None = None
    H: np.ndarray | None = None
    stopped_by_callback: bool = False
    start_loss: float = float("nan")
    seed: int | None = None

    @property
    def loss(self) -> float:
        """The final loss.

        Returns
        -------
        float
            The last entry of `loss_history`; NaN when no iteration was run.
        """
        return float(self.loss_history[-1]) if len(self.loss_history) else float("nan")

    @property
    def labels(self) -> np.ndarray:
        """Cluster of each sample: the largest entry of its row of W (of H, SymNMF's, when there is no W).

        Returns
        -------
        ndarray of shape (n_samples,), int
            The column index of the largest entry of each row.
        """
        return (self.H if self.W is None else self.W).argmax(axis=1)


def squared_norm(X: np.ndarray, chunk_rows: int = 4096) -> float:
    """||X||_F^2 accumulated in float64, in row blocks so no float64 copy of X is made.

    Parameters
    ----------
    X : ndarray
        The array; every axis after the first is flattened into the rows.
    chunk_rows : int, default 4096
        Rows summed per block.

    Returns
    -------
    float
        The sum of the squared entries of X.
    """
    X2 = X.reshape(X.shape[0], -1)
    return float(sum(np.einsum("ij,ij->", b, b, dtype=np.float64)
                     for b in (X2[i:i + chunk_rows] for i in range(0, X2.shape[0], chunk_rows))))


def tdot(A: np.ndarray, B: np.ndarray) -> float:
    """sum(A * B) accumulated in float64 (einsum casts in small buffers, no float64 copies).

    Parameters
    ----------
    A, B : ndarray of the same 2-D shape
        The two matrices.

    Returns
    -------
    float
        The trace inner product tr(A^T B).
    """
    return float(np.einsum("ij,ij->", A, B, dtype=np.float64))


def loss_from_products(x_sq: float, cross: float, WtW: np.ndarray, HHt: np.ndarray) -> float:
    """||X - WH||_F from precomputed products, without forming the residual.

    sqrt(||X||^2 - 2 tr(W^T X H^T) + tr(W^T W H H^T)), clipped at 0 against cancellation.

    Parameters
    ----------
    x_sq : float
        ||X||_F^2.
    cross : float
        tr(W^T X H^T), e.g. ``tdot(W, X @ H.T)``.
    WtW : ndarray of shape (k, k)
        W^T W.
    HHt : ndarray of shape (k, k)
        H H^T.

    Returns
    -------
    float
        ||X - WH||_F.
    """
    return float(np.sqrt(max(x_sq - 2.0 * cross + tdot(WtW, HHt), 0.0)))


def as_factor(A, name: str, shape: tuple[int, int], copy: bool) -> np.ndarray:
    """A starting factor as float32, after checking it is dense, of the expected shape, finite and non-negative.

    Parameters
    ----------
    A : array_like
        The factor given by the caller.
    name : str
        Its name, for the error messages ("W" or "H").
    shape : tuple of int
        The shape it must have.
    copy : bool
        Return a C-contiguous copy, for a solver that updates the factor in place: the
        caller's start is then never changed. Without it, no copy is made when A already is float32.

    Returns
    -------
    ndarray of shape `shape`, float32
        The checked factor.

    Raises
    ------
    ValueError
        If A is None, sparse or not array-like, has another shape, or holds a negative or
        non-finite entry.
    """
    if A is None or not hasattr(A, "__array__") or is_sparse(A):
        raise ValueError(f"{name} must be a dense array of shape {shape}, got {type(A).__name__}")
    # a copy when the solver updates it in place: the caller's start is never changed
    A = np.array(A, dtype=np.float32, order="C") if copy else np.asarray(A, dtype=np.float32)
    if A.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {A.shape}")
    if not np.isfinite(A).all() or (A < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    return A


def is_sparse(A) -> bool:
    """Whether A is a sparse matrix, by duck typing (a ``tocsr`` method or an ``nnz`` attribute).

    Parameters
    ----------
    A : object
        Any object.

    Returns
    -------
    bool
        True for a scipy.sparse matrix or array, or anything that looks like one.
    """
    return hasattr(A, "tocsr") or hasattr(A, "nnz")


NO_PENALTY = (0.0, 0.0, 0.0, 0.0)  # Monitor's penalties for a solver without any

# The scalar arguments every solver of the package takes, declared once (see nmfstudy.params).
MAX_ITER = [Interval(Integral, 1)]
TOL = [Interval(Real, 0.0)]
SPARSENESS = [Interval(Real, 0.0, 1.0, closed="left"), None]  # a Hoyer target, or None for none
PENALTIES = {
    "alpha_W": [Interval(Real, 0.0)],
    "alpha_H": [Interval(Real, 0.0), Options(("same",))],
    "l1_ratio": [Interval(Real, 0.0, 1.0)],
    "hoyer_W": SPARSENESS,
    "hoyer_H": SPARSENESS,
}


def check_data_matrix(X) -> np.ndarray:
    """X as float32 (no copy if it already is), after checking it is dense, 2-D, finite and non-negative.

    Parameters
    ----------
    X : array_like of shape (n_samples, n_features)
        The data matrix; a list or tuple of rows is accepted too.

    Returns
    -------
    ndarray of shape (n_samples, n_features), float32
        X itself when it already is a float32 array.

    Raises
    ------
    ValueError
        If X is None, sparse, not 2-D, empty, or holds NaN, infinity or a negative entry.
    """
    if X is None or is_sparse(X) or not hasattr(X, "__array__") and not isinstance(X, (list, tuple)):
        raise ValueError(f"X must be a dense 2-D array, got {type(X).__name__}")
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.size == 0:
        raise ValueError(f"X must be a non-empty 2-D array, got shape {X.shape}")
    # min and max see NaN and infinity without an n x p temporary (np.isfinite(X) would be one)
    lo, hi = X.min(), X.max()
    if np.isnan(lo) or np.isinf(hi) or np.isinf(lo):
        raise ValueError("X must not contain NaN or infinity")
    if lo < 0:
        raise ValueError("X must be non-negative")
    return X


def check_nmf_arguments(X, W, H, max_iter, tol, alpha_W, alpha_H, l1_ratio, hoyer_W, hoyer_H, callback, copy_W=True):
    """Check every argument of a solver once, at the door; returns X, W and H as float32.

    Parameters
    ----------
    X : array_like of shape (n_samples, n_features)
        The data matrix, checked by :func:`check_data_matrix`.
    W : array_like of shape (n_samples, k)
        The starting coefficients; k is taken from its second dimension.
    H : array_like of shape (k, n_features)
        The starting basis; always copied.
    max_iter : int
        The iteration limit, >= 1.
    tol : float
        The stopping tolerance, >= 0.
    alpha_W : float
        The penalty weight on W, >= 0.
    alpha_H : float or "same"
        The penalty weight on H, >= 0, or "same" for alpha_W.
    l1_ratio : float
        The L1 share of the penalties, in [0, 1].
    hoyer_W, hoyer_H : float or None
        Target Hoyer sparseness in [0, 1) of the columns of W / rows of H, or None.
    callback : callable or None
        The solver's iteration callback.
    copy_W : bool, default True
        Copy W (for a solver that updates it in place); False when the solver makes its own.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), float32
        No copy if X already was float32.
    W : ndarray of shape (n_samples, k), float32
        A copy when `copy_W`.
    H : ndarray of shape (k, n_features), float32
        A copy.

    Raises
    ------
    ValueError
        If any argument is invalid (an `InvalidParameterError`, a subclass, for the scalar
        settings), if a Hoyer target is set on a factor with fewer than 2 entries per vector,
        or if callback is not callable.
    """
    X = check_data_matrix(X)
    n, p = X.shape
    if W is None or not hasattr(W, "shape") or np.ndim(W) != 2:
        raise ValueError(f"W must be a 2-D array (n_samples x k), got {type(W).__name__}")
    k = W.shape[1]
    if k < 1:
        raise ValueError("W must have at least one column (k >= 1)")
    W = as_factor(W, "W", (n, k), copy_W)
    H = as_factor(H, "H", (k, p), True)
    check("max_iter", max_iter, MAX_ITER)
    check("tol", tol, TOL)
    validate(dict(alpha_W=alpha_W, alpha_H=alpha_H, l1_ratio=l1_ratio, hoyer_W=hoyer_W, hoyer_H=hoyer_H), PENALTIES)
    if hoyer_W is not None and n < 2:
        raise ValueError("hoyer_W needs at least 2 samples")
    if hoyer_H is not None and p < 2:
        raise ValueError("hoyer_H needs at least 2 features")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable or None, got {type(callback).__name__}")
    return X, W, H


class Monitor:
    """Loss history, timing, the callback and the stopping rule shared by the solvers.

    The stopping rule is on the penalised loss sqrt(2 * objective) (= ||X - WH||_F without
    penalties). With ``window=0`` it stops when the last iteration's relative decrease falls
    below tol; under a Hoyer projection the loss may rise, so there the rule is on the
    absolute relative change. With ``window=w > 0`` it estimates how far the run still is from
    its limit (see :meth:`remaining`) and stops when that estimate, relative to the loss, falls
    below tol.

    Parameters
    ----------
    tol : float
        The stopping tolerance; 0 or less never stops on the loss (only the callback or
        max_iter end the run).
    max_iter : int
        The iteration limit: the size of the history buffers.
    callback : callable or None
        Called as ``callback(iteration, loss, elapsed_s)`` after every iteration; a true
        return value stops the run.
    projected : bool, default False
        True when a factor is projected to Hoyer's sparseness (the loss may then rise).
    penalties : tuple of 4 float, default all 0
        (l1_W, l1_H, l2_W, l2_H), scikit-learn's scaled penalty weights; all 0 for none.
    window : int, default 0
        0 for the last-step rule, w > 0 for the windowed (estimated limit) rule of :meth:`remaining`.
    """

    def __init__(self, tol, max_iter, callback, projected: bool = False, penalties=NO_PENALTY, *, window: int = 0):
        self.t0 = time.perf_counter()
        self.tol, self.callback, self.projected, self.window = tol, callback, projected, window
        self.l1_W, self.l1_H, self.l2_W, self.l2_H = penalties
        self.penalised = any(penalties)
        self.losses = np.empty(max_iter)
        self.times = np.empty(max_iter)
        # objectives[i]: the penalised loss after iteration i (0: the start), for the window rule
        self.objectives = np.empty(max_iter + 1) if window else None
        self.n_iter = 0
        self.prev = np.inf
        self.stopped_by_callback = False

    def _penalised_loss(self, loss, Wsum, Wsq, Hsum, Hsq) -> float:
        if not self.penalised:
            return loss
        pen = self.l1_W * Wsum + 0.5 * self.l2_W * Wsq + self.l1_H * Hsum + 0.5 * self.l2_H * Hsq
        return float(np.sqrt(loss * loss + 2.0 * pen))

    def objective(self, loss, W=None, H=None, WtW=None, HHt=None) -> float:
        """The penalised loss sqrt(2 * objective) at (W, H), from the loss and the Gram matrices.

        Parameters
        ----------
        loss : float
            ||X - WH||_F at (W, H).
        W, H : ndarray or None, default None
            The factors (either orientation: only their sums are used); may be None without penalties.
        WtW, HHt : ndarray of shape (k, k) or None, default None
            The Gram matrices of the factors (their traces give the squared norms); may be None
            without penalties.

        Returns
        -------
        float
            sqrt(loss^2 + 2 * penalty); `loss` itself without penalties.
        """
        return self._penalised_loss(loss, *self._penalty_terms(W, H, WtW, HHt))

    def start(self, loss, W=None, H=None, WtW=None, HHt=None) -> float:
        """Record the start's penalised loss, the reference for the first iteration's decrease.

        Parameters
        ----------
        loss : float
            ||X - WH||_F at the starting factors.
        W, H : ndarray or None, default None
            The starting factors, as in :meth:`objective`.
        WtW, HHt : ndarray of shape (k, k) or None, default None
            Their Gram matrices, as in :meth:`objective`.

        Returns
        -------
        float
            The start's penalised loss.
        """
        self.prev = self.objective(loss, W, H, WtW, HHt)
        if self.window:
            self.objectives[0] = self.prev
        return self.prev

    def _penalty_terms(self, W, H, WtW, HHt):
        if not self.penalised:
            return 0.0, 0.0, 0.0, 0.0
        # the factors are non-negative, so |.|_1 is the sum; the squared norms are Gram traces
        return (float(W.sum(dtype=np.float64)), float(np.trace(WtW, dtype=np.float64)),
                float(H.sum(dtype=np.float64)), float(np.trace(HHt, dtype=np.float64)))

    def remaining(self) -> float:
        """The estimated decrease still to come, relative to the current penalised loss.

        From the decreases d1, d2 of the last two windows of w iterations: if the loss keeps
        shrinking by the ratio r = d2 / d1 per window, it still falls by d2 r / (1 - r) (the
        tail of a geometric series; Aitken's estimate of the limit). Exact for linear
        convergence; for a sublinear tail L_t - L_inf ~ t^-a it underestimates by a / (a + 1).
        The estimate is taken over windows of ``window`` and of 2 ``window`` iterations and the
        larger one kept: the short windows follow the current rate, the long ones keep a pause
        between restarts, or a slow stretch, from passing for convergence (on 30 small problems
        the median stop 0.06% above the limit, against 0.17% with the short windows alone, for
        20% more iterations). A long pause before a further descent still passes for
        convergence: no rule that sees only the past can tell it from a limit.

        Returns
        -------
        float
            The estimate divided by the current penalised loss; inf before four windows (the
            first holds the start's steep fall, against which any later decrease looks like
            convergence) and while the decrease is not shrinking, 0 when the last windows made
            no progress at all (an extrapolating solver's restarts that never pay any more).
        """
        t, w = self.n_iter, self.window
        if t < 4 * w:
            return np.inf
        return max(self._tail(w), self._tail(2 * w))

    def _tail(self, w: int) -> float:
        """The geometric tail estimate of :meth:`remaining` from the last two windows of w iterations."""
        t, f = self.n_iter, self.objectives
        d1, d2 = f[t - 2 * w] - f[t - w], f[t - w] - f[t]
        if d2 <= 0:
            return 0.0
        if d2 >= d1 or f[t] <= 0:
            return np.inf
        r = d2 / d1
        return d2 * r / (1.0 - r) / f[t]

    def step(self, loss, W=None, H=None, WtW=None, HHt=None, *, objective: float | None = None) -> bool:
        """Record one iteration; True when the solver should stop.

        Calls the callback, then applies the stopping rule (see the class docstring).

        Parameters
        ----------
        loss : float
            ||X - WH||_F after this iteration (what the history and the callback see).
        W, H : ndarray or None, default None
            The factors after this iteration, as in :meth:`objective`; unused when `objective`
            is given.
        WtW, HHt : ndarray of shape (k, k) or None, default None
            Their Gram matrices, as in :meth:`objective`; unused when `objective` is given.
        objective : float, optional
            The penalised loss, when the caller already has it.

        Returns
        -------
        bool
            True when the callback asked to stop or the stopping rule is met.
        """
        it = self.n_iter
        elapsed = time.perf_counter() - self.t0
        self.losses[it], self.times[it] = loss, elapsed
        self.n_iter += 1
        if self.window:
            self.objectives[self.n_iter] = self.objective(loss, W, H, WtW, HHt) if objective is None else objective
        if self.callback is not None and self.callback(self.n_iter, loss, elapsed):
            self.stopped_by_callback = True
            return True
        if self.tol <= 0:
            return False
        if self.window:
            return self.remaining() < self.tol
        cur = self.objective(loss, W, H, WtW, HHt) if objective is None else objective
        prev, self.prev = self.prev, cur
        if prev == 0:
            return True
        change = (prev - cur) / prev
        return (abs(change) if self.projected else change) < self.tol

    def history(self) -> dict:
        """What the run recorded, as the keyword arguments of :class:`FitResult` it fills.

        Returns
        -------
        dict
            ``n_iter``, copies of ``loss_history`` and ``time_history`` over the iterations run,
            and ``stopped_by_callback``.
        """
        n = self.n_iter
        return dict(n_iter=n, loss_history=self.losses[:n].copy(), time_history=self.times[:n].copy(),
                    stopped_by_callback=self.stopped_by_callback)

    def result(self, W, H) -> FitResult:
        """The run's result: the final factors with the recorded history.

        Parameters
        ----------
        W : ndarray of shape (n_samples, k)
            The final coefficients.
        H : ndarray of shape (k, n_features)
            The final basis.

        Returns
        -------
        FitResult
            W and H as C-contiguous float32 arrays, and copies of the loss and time
            histories of the iterations run.
        """
        return FitResult(W=np.ascontiguousarray(W, dtype=np.float32), H=np.ascontiguousarray(H, dtype=np.float32),
                         **self.history())


class LabelStability:
    """Stops a soft clustering when its hard clusters (argmax of each row) have stopped changing.

    A multiplicative refinement of a clustering (NMFR, DCD) creeps along for hundreds of
    iterations after its clusters have settled, each iteration lowering the objective a little,
    so a rule on the objective's relative decrease needs a tolerance too fine to tell the two
    apart. This rule watches what the clustering is: it stops when, over the last `window`
    iterations, fewer than `tol` n label changes happened in all (a sample that changes twice
    counts twice, so an oscillating sample never passes for settled), and the objective fell by
    less than `guard` (relative) over them. The guard is for the first iterations from a hard
    start (NMFR's lifted grouping: 1 on the cluster, 0.05 elsewhere), where W moves fast but no
    argmax has turned yet, and for the bursts of changes that follow: on full MNIST at k=10 (over-relaxed
    steps) no label changes in NMFR's first ~20 iterations while its objective falls by 1% per 10,
    then bursts of 10-40 changes an iteration until it falls by about 1e-4 per 10. DCD's objective
    carries a large constant, so that there the guard passes early and the label count decides.

    Parameters
    ----------
    tol : float
        Fraction of the samples; 0 never stops.
    window : int
        Iterations the changes are summed over (>= 1).
    guard : float, default 1e-4
        The largest relative decrease of the objective over the window at which it may stop.
    """

    def __init__(self, tol: float, window: int, guard: float = 1e-4) -> None:
        self.tol, self.window, self.guard = float(tol), int(window), float(guard)
        self._labels: np.ndarray | None = None
        self._changes: list[int] = []
        self._losses: list[float] = []

    def settled(self, W: np.ndarray, loss: float) -> bool:
        """Record the clusters of W and the objective after one iteration; True once they have settled.

        Parameters
        ----------
        W : ndarray of shape (n_samples, k)
            The factor after the iteration (the start's, the first time).
        loss : float
            The objective at W (non-negative).

        Returns
        -------
        bool
        """
        labels = W.argmax(axis=1)
        if self._labels is not None:
            self._changes.append(int(np.count_nonzero(labels != self._labels)))
        self._labels = labels
        self._losses.append(float(loss))
        if self.tol <= 0 or len(self._changes) < self.window:
            return False
        before = self._losses[-self.window - 1]
        fell = (before - self._losses[-1]) / before if before > 0 else 0.0
        return fell < self.guard and sum(self._changes[-self.window:]) < self.tol * len(labels)


class Relaxation:
    """The exponent e of an over-relaxed multiplicative step W <- W * r^e, with its safeguard.

    A majorization-minimization update W <- W * r (r the ratio of the majorizer's gradients) is
    monotone but slow when the objective is flat; raising r to a power e > 1 takes a longer step
    in the same (log-space) direction (Badeau, Bertin, Vincent, "Stability analysis of
    multiplicative update algorithms and application to nonnegative matrix factorization", IEEE
    TNN 21(12), 2010). The exponent grows by `grow` after each step that lowered the objective,
    up to `max_exponent`; a step that did not is taken again with e = 1 (the monotone step),
    and the exponent starts over. So the objective never rises, as with the plain update.

    Parameters
    ----------
    max_exponent : float
        Largest exponent (>= 1; 1: the plain update).
    grow : float, default 2.0
        Factor by which the exponent grows after an accepted step.
    """

    def __init__(self, max_exponent: float, grow: float = 2.0) -> None:
        self.max_exponent, self.grow = float(max_exponent), float(grow)
        self.exponent = 1.0
        self.rejected = 0  # steps taken again with e = 1

    def descend(self, propose, evaluate, loss: float):
        """One safeguarded step from an objective value `loss`: the over-relaxed candidate if it lowers
        the objective, else the plain one (exponent 1), which the majorization keeps monotone.

        Parameters
        ----------
        propose : callable
            ``propose(exponent) -> candidate``, the step taken with that exponent (1: the plain update).
        evaluate : callable
            ``evaluate(candidate) -> (loss, *extra)``: the objective at the candidate, and whatever
            else the caller computed on the way (a product it reuses).

        Returns
        -------
        tuple
            The candidate that stands, and its `evaluate` result.
        """
        candidate = propose(self.exponent)
        result = evaluate(candidate)
        if not self.accept(result[0] <= loss):
            candidate = propose(1.0)
            result = evaluate(candidate)
        return candidate, result

    def accept(self, lower: bool) -> bool:
        """After a step: whether it stands (it lowered the objective, or it was the monotone one); updates e."""
        if lower or self.exponent == 1.0:
            self.exponent = min(self.exponent * self.grow, self.max_exponent)
            return True
        self.exponent = 1.0
        self.rejected += 1
        return False
