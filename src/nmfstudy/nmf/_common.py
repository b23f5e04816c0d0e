"""What the package's solvers share: the result type, float64-accumulated norms, argument
checks, and the monitor that records each iteration and decides when to stop.

Private to :mod:`nmfstudy.nmf`: its solvers import these names, nothing outside the package does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
from threadpoolctl import ThreadpoolController

from ..params import Interval, Options, check, validate

threadpools = ThreadpoolController()

Callback = Callable[[int, float, float], "bool | None"]


@dataclass
class NMFResult:
    """What a solver returns.

    loss_history[i] is ||X - WH||_F after iteration i + 1 and time_history[i] the seconds
    elapsed since the solver was entered at that point (float64, len == n_iter).
    """

    W: np.ndarray
    H: np.ndarray
    n_iter: int
    loss_history: np.ndarray
    time_history: np.ndarray
    stopped_by_callback: bool = False

    @property
    def loss(self) -> float:
        """The final ||X - WH||_F."""
        return float(self.loss_history[-1]) if len(self.loss_history) else float("nan")


def squared_norm(X: np.ndarray, chunk_rows: int = 4096) -> float:
    """||X||_F^2 accumulated in float64, in row blocks so no float64 copy of X is made."""
    X2 = X.reshape(X.shape[0], -1)
    return float(sum(np.einsum("ij,ij->", b, b, dtype=np.float64)
                     for b in (X2[i:i + chunk_rows] for i in range(0, X2.shape[0], chunk_rows))))


def tdot(A: np.ndarray, B: np.ndarray) -> float:
    """sum(A * B) accumulated in float64 (einsum casts in small buffers, no float64 copies)."""
    return float(np.einsum("ij,ij->", A, B, dtype=np.float64))


def loss_from_products(x_sq: float, cross: float, WtW: np.ndarray, HHt: np.ndarray) -> float:
    """sqrt(||X||^2 - 2 tr(W^T X H^T) + tr(W^T W H H^T)), clipped at 0 against cancellation."""
    return float(np.sqrt(max(x_sq - 2.0 * cross + tdot(WtW, HHt), 0.0)))


def as_factor(A, name: str, shape: tuple[int, int], copy: bool) -> np.ndarray:
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
    return hasattr(A, "tocsr") or hasattr(A, "nnz")


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
    """X as float32 (no copy if it already is), after checking it is dense, 2-D, finite and non-negative."""
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
    """Checks every argument once, at the door; returns float32 X (no copy if already float32), W, H."""
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
    """

    def __init__(self, tol, max_iter, callback, projected, penalties, *, window: int = 0):
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

    def objective(self, loss, W, H, WtW, HHt) -> float:
        """The penalised loss sqrt(2 * objective) at (W, H), from the loss and the Gram matrices."""
        return self._penalised_loss(loss, *self._penalty_terms(W, H, WtW, HHt))

    def start(self, loss, W, H, WtW, HHt) -> float:
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

        From the decreases d1, d2 of the last two windows of ``window`` iterations: if the loss
        keeps shrinking by the ratio r = d2 / d1 per window, it still falls by
        d2 r / (1 - r) (the tail of a geometric series; Aitken's estimate of the limit). Exact
        for linear convergence; for a sublinear tail L_t - L_inf ~ t^-a it underestimates by
        a / (a + 1). inf while the decrease is not shrinking, 0 when a whole window made no
        progress (an extrapolating solver's restarts that never pay any more).
        """
        t, w, f = self.n_iter, self.window, self.objectives
        if t < 2 * w:
            return np.inf
        d1, d2 = f[t - 2 * w] - f[t - w], f[t - w] - f[t]
        if d2 <= 0:
            return 0.0
        if d2 >= d1 or f[t] <= 0:
            return np.inf
        r = d2 / d1
        return d2 * r / (1.0 - r) / f[t]

    def step(self, loss, W, H, WtW, HHt, *, objective: float | None = None) -> bool:
        """Records one iteration; True when the solver should stop.

        ``objective`` is the penalised loss when the caller already has it.
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

    def result(self, W, H) -> NMFResult:
        n = self.n_iter
        return NMFResult(np.ascontiguousarray(W, dtype=np.float32), np.ascontiguousarray(H, dtype=np.float32),
                         n, self.losses[:n].copy(), self.times[:n].copy(), self.stopped_by_callback)


