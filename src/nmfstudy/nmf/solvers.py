"""Our own NMF solvers: plain functions over numpy arrays, float32 and BLAS throughout.

Orientation follows scikit-learn: X (n_samples x n_features, non-negative) ~= W @ H with
W (n_samples x k) the coefficients and H (k x n_features) the basis images.

- :func:`nmf_mu`: Lee & Seung's multiplicative updates for the Frobenius loss.
- :func:`nmf_hals`: hierarchical alternating least squares (exact coordinate descent on
  the columns of W and the rows of H) with Gillis & Glineur's repeated inner sweeps.
- :func:`nmf_hals_extrapolated`: HALS with Ang & Gillis's extrapolation and restarts, stopped
  on an estimate of the decrease still to come (``method=nmf``'s default).
- :func:`project_hoyer`: Hoyer's (2004) projection onto a target sparseness.
- :func:`frobenius_loss`: ||X - WH||_F without forming X - WH.

Both solvers minimise scikit-learn's (>= 1.2) objective, with the same penalty scaling so a
configuration means the same for its solvers and ours::

    0.5 ||X - WH||_F^2
    + alpha_W * l1_ratio * n_features * ||W||_1 + 0.5 * alpha_W * (1 - l1_ratio) * n_features * ||W||_F^2
    + alpha_H * l1_ratio * n_samples  * ||H||_1 + 0.5 * alpha_H * (1 - l1_ratio) * n_samples  * ||H||_F^2

optionally under Hoyer's sparseness constraints on the rows of H (``hoyer_H``) and the
columns of W (``hoyer_W``). The reported loss is always ||X - WH||_F (not squared), like
scikit-learn's ``reconstruction_err_``.
"""
from __future__ import annotations

from numbers import Integral, Real

import numpy as np

from ..params import Boolean, Interval, check
from ._common import (
    SPARSENESS,
    Callback,
    FitResult,
    Monitor,
    check_nmf_arguments,
    loss_from_products,
    squared_norm,
    tdot,
    threadpools,
)

__all__ = [
    "FitResult", "nmf_mu", "nmf_hals", "nmf_hals_extrapolated", "project_hoyer", "frobenius_loss", "nmf_objective",
]

# scikit-learn's MU guard for a zero denominator.
MU_EPS = np.finfo(np.float32).eps
# Value given to a factor vector that died (all zeros), so the other factor's Gram matrix keeps a
# non-zero diagonal; also the floor under a Hoyer-projected factor in MU, where zeros would lock.
_REVIVE_EPS = 1e-10

# --------------------------------------------------------------------------- losses

def frobenius_loss(X: np.ndarray, W: np.ndarray, H: np.ndarray, *, x_sq: float | None = None) -> float:
    """||X - WH||_F from the trace identity: one product X^T W, never the n x p residual.

    Parameters
    ----------
    X : array_like of shape (n_samples, n_features)
        The data matrix; used as float32.
    W : array_like of shape (n_samples, k)
        The coefficients; used as float32.
    H : array_like of shape (k, n_features)
        The basis; used as float32.
    x_sq : float, optional
        ||X||_F^2, when already known (it is then not recomputed).

    Returns
    -------
    float
        ||X - WH||_F (not squared), accumulated in float64 and clipped at 0.
    """
    X, W, H = (np.asarray(a, dtype=np.float32) for a in (X, W, H))
    if x_sq is None:
        x_sq = squared_norm(X)
    XtW = X.T @ W  # (p x k); X.T @ W is the fast BLAS path for a tall X
    return loss_from_products(x_sq, tdot(XtW, H.T), W.T @ W, H @ H.T)


def nmf_objective(X: np.ndarray, W: np.ndarray, H: np.ndarray, *, alpha_W: float = 0.0,
                  alpha_H: float | str = "same", l1_ratio: float = 0.0) -> float:
    """scikit-learn's penalised NMF objective (see the module docstring) at (W, H).

    Parameters
    ----------
    X : array_like of shape (n_samples, n_features)
        The data matrix; used as float32.
    W : array_like of shape (n_samples, k)
        The coefficients.
    H : array_like of shape (k, n_features)
        The basis.
    alpha_W : float, default 0.0
        The penalty weight on W, scaled by n_features as in scikit-learn >= 1.2.
    alpha_H : float or "same", default "same"
        The penalty weight on H, scaled by n_samples; "same" uses alpha_W.
    l1_ratio : float, default 0.0
        The L1 share of the penalties (0: pure L2, 1: pure L1).

    Returns
    -------
    float
        0.5 ||X - WH||_F^2 plus the scaled L1 and L2 penalties, the penalties summed in float64.
    """
    X = np.asarray(X, dtype=np.float32)
    l1_W, l1_H, l2_W, l2_H = _regularization(X.shape, alpha_W, alpha_H, l1_ratio)
    W64, H64 = np.asarray(W, np.float64), np.asarray(H, np.float64)
    return (0.5 * frobenius_loss(X, W, H) ** 2
            + l1_W * W64.sum() + 0.5 * l2_W * (W64 ** 2).sum()
            + l1_H * H64.sum() + 0.5 * l2_H * (H64 ** 2).sum())


# --------------------------------------------------------------------------- Hoyer projection


def project_hoyer(x: np.ndarray, sparseness: float) -> np.ndarray:
    """The non-negative vector closest to ``x`` with the same L2 norm and the given sparseness.

    Hoyer, P. O. (2004). Non-negative matrix factorization with sparseness constraints.
    JMLR 5, 1457-1469 (the projection operator of section 3.1). Sparseness is Hoyer's
    (sqrt(n) - |s|_1 / |s|_2) / (sqrt(n) - 1), so fixing |s|_2 and the sparseness fixes |s|_1.
    Works in float64.

    Parameters
    ----------
    x : array_like of shape (n,) or (m, n), n >= 2
        The vector, or row vectors; a 2-D ``x`` is projected row by row. All-zero rows stay zero.
    sparseness : float
        The target Hoyer sparseness, in [0, 1).

    Returns
    -------
    ndarray of the shape of ``x``
        The projection, in ``x``'s floating dtype (float64 for an integer ``x``).

    Raises
    ------
    ValueError
        If ``x`` is not 1-D or 2-D, its vectors are shorter than 2 or hold NaN or infinity,
        or ``sparseness`` is outside [0, 1).
    """
    x = np.asarray(x)
    if x.ndim not in (1, 2) or x.shape[-1] < 2:
        raise ValueError(f"x must be a vector or a 2-D array of row vectors of length >= 2, got shape {x.shape}")
    check("sparseness", sparseness, SPARSENESS[:1])
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    S = np.array(np.atleast_2d(x), dtype=np.float64)
    if not np.isfinite(S).all():
        raise ValueError("x must be finite")
    n = S.shape[1]
    l2 = np.sqrt((S * S).sum(axis=1))
    l1 = l2 * (np.sqrt(n) - sparseness * (np.sqrt(n) - 1.0))
    S += ((l1 - S.sum(axis=1)) / n)[:, None]  # onto the hyperplane sum(s) = l1
    Z = np.zeros(S.shape, dtype=bool)  # coordinates fixed at zero
    todo = np.flatnonzero(l2 > 0)
    S[l2 == 0] = 0.0
    while todo.size:
        s, z, L1, L2 = S[todo], Z[todo], l1[todo], l2[todo]
        free = n - z.sum(axis=1)
        mid = np.where(z, 0.0, (L1 / free)[:, None])  # centre of the simplex slice
        d = s - mid
        a = (d * d).sum(axis=1)
        flat = a <= 1e-30 * L2 ** 2
        if flat.any():
            # s sits on the centre (a constant vector): every direction is as close; take the
            # first free coordinate so the result is deterministic.
            first = np.argmax(~z[flat], axis=1)
            d[flat] = np.where(z[flat], 0.0, -1.0 / free[flat, None])
            d[flat, first] += 1.0
            a[flat] = (d[flat] ** 2).sum(axis=1)
        b = 2.0 * (mid * d).sum(axis=1)
        c = (mid * mid).sum(axis=1) - L2 ** 2
        alpha = (-b + np.sqrt(np.maximum(b * b - 4.0 * a * c, 0.0))) / (2.0 * a)
        s = mid + alpha[:, None] * d  # onto the L2 sphere, staying on the hyperplane
        neg = s < 0
        done = ~neg.any(axis=1)
        z |= neg
        s[z] = 0.0
        shift = np.where(done, 0.0, (s.sum(axis=1) - L1) / np.maximum(n - z.sum(axis=1), 1))
        s -= np.where(z, 0.0, shift[:, None])  # back onto the hyperplane on the free coordinates
        S[todo], Z[todo] = s, z
        todo = todo[~done]
    return S.reshape(x.shape).astype(out_dtype, copy=False)


# --------------------------------------------------------------------------- validation


def _regularization(shape, alpha_W, alpha_H, l1_ratio) -> tuple[float, float, float, float]:
    """scikit-learn's scaling (NMF._compute_regularization): l1_W, l1_H, l2_W, l2_H."""
    n_samples, n_features = shape
    alpha_H = alpha_W if isinstance(alpha_H, str) and alpha_H == "same" else alpha_H
    return (n_features * alpha_W * l1_ratio, n_samples * alpha_H * l1_ratio,
            n_features * alpha_W * (1.0 - l1_ratio), n_samples * alpha_H * (1.0 - l1_ratio))


# --------------------------------------------------------------------------- bookkeeping

def _revive_dead_rows(F: np.ndarray) -> None:
    """Gives an all-zero row of F (a component that died) a tiny constant value in place.

    Its Gram diagonal would otherwise be 0 and the other factor's update divide by it.
    Individual zeros are harmless to HALS (its updates are additive) and kept exact.
    """
    dead = ~F.any(axis=1)
    if dead.any():
        F[dead] = _REVIVE_EPS


# --------------------------------------------------------------------------- MU


def nmf_mu(X, W, H, *, max_iter: int = 200, tol: float = 1e-4, alpha_W: float = 0.0,
           alpha_H: float | str = "same", l1_ratio: float = 0.0, hoyer_W: float | None = None,
           hoyer_H: float | None = None, callback: Callback | None = None) -> FitResult:
    """NMF by Lee & Seung's multiplicative updates for the Frobenius loss.

    Lee, D. D. & Seung, H. S. (2001). Algorithms for non-negative matrix factorization.
    NIPS 13. The penalties enter the denominators as in scikit-learn's ``solver='mu'``;
    the objective then never increases. Entries that reach exactly zero stay zero (as in
    scikit-learn), so start from 'nndsvda' or 'random' rather than 'nndsvd'.

    Parameters
    ----------
    X : array_like of shape (n_samples, n_features)
        The data, non-negative; used as float32.
    W : array_like of shape (n_samples, k)
        The starting coefficients; copied, not changed.
    H : array_like of shape (k, n_features)
        The starting basis; copied, not changed.
    max_iter : int, default 200
        The number of iterations at most (one iteration updates W, then H).
    tol : float, default 1e-4
        Stop when the relative decrease of the (penalised) loss falls below tol; 0 runs
        all max_iter iterations.
    alpha_W : float, default 0.0
        The penalty weight on W, as in scikit-learn >= 1.2.
    alpha_H : float or "same", default "same"
        The penalty weight on H; "same" uses alpha_W.
    l1_ratio : float, default 0.0
        The L1 share of the penalties, in [0, 1].
    hoyer_W, hoyer_H : float or None, default None
        Target Hoyer sparseness in [0, 1) of each column of W / each row of H,
        enforced by :func:`project_hoyer` after each update of that factor (Hoyer 2004);
        projected entries are floored at 1e-10 since multiplicative updates cannot leave 0.
    callback : callable, optional
        Called as ``callback(iteration, loss, elapsed_s)`` after every iteration; returning
        True stops the run (``stopped_by_callback``).

    Returns
    -------
    FitResult
        Float32 W and H, and the per-iteration loss ||X - WH||_F and times.

    Raises
    ------
    ValueError
        If X, W or H is not a finite non-negative dense array of matching shapes, or another
        argument is out of its range (see :func:`nmfstudy.nmf._common.check_nmf_arguments`).
    """
    X, W, H = check_nmf_arguments(X, W, H, max_iter, tol, alpha_W, alpha_H, l1_ratio, hoyer_W, hoyer_H, callback)
    l1_W, l1_H, l2_W, l2_H = pen = _regularization(X.shape, alpha_W, alpha_H, l1_ratio)
    mon = Monitor(tol, max_iter, callback, hoyer_W is not None or hoyer_H is not None, pen)
    x_sq = squared_norm(X)

    HHt = H @ H.T
    for it in range(max_iter):
        # W <- W * (X H^T) / (W H H^T + penalties)
        XHt = X @ H.T
        if it == 0:  # the start's loss comes free from this product
            WtW = W.T @ W
            mon.start(loss_from_products(x_sq, tdot(W, XHt), WtW, HHt), W, H, WtW, HHt)
        denom = W @ HHt
        if l1_W:
            denom += np.float32(l1_W)
        if l2_W:
            denom += np.float32(l2_W) * W
        denom[denom == 0] = MU_EPS
        XHt /= denom
        W *= XHt
        if hoyer_W is not None:
            W = np.maximum(project_hoyer(W.T, hoyer_W).T, np.float32(_REVIVE_EPS)).astype(np.float32, order="C")

        # H <- H * (W^T X) / (W^T W H + penalties)
        WtX = np.ascontiguousarray((X.T @ W).T)  # X^T W: the fast BLAS path for a tall X
        WtW = W.T @ W
        denom = WtW @ H
        if l1_H:
            denom += np.float32(l1_H)
        if l2_H:
            denom += np.float32(l2_H) * H
        denom[denom == 0] = MU_EPS
        H *= WtX / denom
        if hoyer_H is not None:
            H = np.maximum(project_hoyer(H, hoyer_H), np.float32(_REVIVE_EPS)).astype(np.float32)

        HHt = H @ H.T
        if mon.step(loss_from_products(x_sq, tdot(WtX, H), WtW, HHt), W, H, WtW, HHt):
            break
    return mon.result(W, H)


# --------------------------------------------------------------------------- HALS


def _sweeps_per_products(n: int, p: int, k: int, m: int) -> float:
    """Gillis & Glineur's rho: 1 + (cost of a phase's products) / (cost of one sweep over F, k x m).

    The products with X (n p k multiply-adds) run as compute-bound BLAS-3; a sweep is k
    memory-bound matrix-vector products over F (m k^2) plus ~8 numpy calls per row. Measured
    on x86 with OpenBLAS, a sweep's multiply-add costs ~8 of the products', a call ~5000.
    """
    products = n * p * k + m * k * k
    sweep = 8.0 * m * k * k + 8 * 5000.0 * k
    return 1.0 + products / sweep


def _hals_sweeps(F: np.ndarray, A: np.ndarray, B: np.ndarray, max_sweeps: int, eps: float) -> int:
    """Cyclic exact updates of the rows of F (k x m) for min 0.5 tr(F^T B F) - tr(A^T F), F >= 0.

    A (k x m) and B (k x k) already hold the penalties (A -= l1, diag(B) += l2). The sweeps
    repeat while the change of F is above ``eps`` times the first sweep's change
    (Gillis & Glineur 2012, section 3): they only touch F, A and B, far cheaper than X.
    Returns the number of sweeps done.
    """
    k = F.shape[0]
    first = None
    # one BLAS thread: threaded gemv on a k x m block costs ~30x more than it saves, and far
    # worse when another process holds the cores (its threads spin on each other)
    with threadpools.limit(limits=1, user_api="blas"):
        sweeps = 0
        while sweeps < max_sweeps:
            sweeps += 1
            change = 0.0
            for j in range(k):
                if B[j, j] <= 0:
                    continue
                new = B[j] @ F  # (F^T B)_j: the gradient is this minus A_j
                new -= A[j]
                new *= -1.0 / B[j, j]
                new += F[j]
                np.maximum(new, 0.0, out=new)
                diff = new - F[j]
                change += float(diff @ diff)
                F[j] = new
            if first is None:
                first = change
            if change <= eps * first:
                break
    return sweeps


def nmf_hals(X, W, H, *, max_iter: int = 200, tol: float = 1e-4, alpha_W: float = 0.0,
             alpha_H: float | str = "same", l1_ratio: float = 0.0, hoyer_W: float | None = None,
             hoyer_H: float | None = None, callback: Callback | None = None,
             inner_alpha: float = 0.0, inner_eps: float = 0.01) -> FitResult:
    """NMF by hierarchical alternating least squares (HALS), optionally accelerated.

    Cichocki, A. & Phan, A.-H. (2009). Fast local algorithms for large scale nonnegative
    matrix and tensor factorizations. IEICE Trans. Fundamentals E92-A(3), 708-721 (HALS,
    the same coordinate descent as scikit-learn's ``solver='cd'``).
    Gillis, N. & Glineur, F. (2012). Accelerated multiplicative updates and hierarchical
    ALS algorithms for nonnegative matrix factorization. Neural Computation 24(4), 1085-1105:
    X H^T, H H^T (W-phase) and W^T X, W^T W (H-phase) are formed once per phase, then the
    cheap k-row sweeps are repeated at most 1 + inner_alpha * rho times (rho: the cost of
    the products over the cost of a sweep) and while a sweep still changes the factor by more
    than inner_eps times the first sweep did.

    A Hoyer-constrained factor is projected after its phase. :func:`nmf_hals_extrapolated`
    takes fewer iterations to the same loss.

    Parameters
    ----------
    X : array_like of shape (n_samples, n_features)
        The data, non-negative; used as float32.
    W : array_like of shape (n_samples, k)
        The starting coefficients; not changed (the solver works on its own transposed copy).
    H : array_like of shape (k, n_features)
        The starting basis; copied, not changed.
    max_iter : int, default 200
        As in :func:`nmf_mu`.
    tol : float, default 1e-4
        As in :func:`nmf_mu`.
    alpha_W : float, default 0.0
        As in :func:`nmf_mu`.
    alpha_H : float or "same", default "same"
        As in :func:`nmf_mu`.
    l1_ratio : float, default 0.0
        As in :func:`nmf_mu`.
    hoyer_W, hoyer_H : float or None, default None
        As in :func:`nmf_mu`, each constrained factor projected after its phase (no floor).
    callback : callable, optional
        As in :func:`nmf_mu`.
    inner_alpha : float, default 0.0
        Gillis & Glineur's alpha, >= 0: at most 1 + inner_alpha * rho sweeps per phase (the
        paper suggests alpha = 0.5). The default 0 does one sweep per phase, scikit-learn's
        cd schedule: on full MNIST (bench/RESULTS.md) alpha = 0.5 reached the target 12% sooner
        at k=10 (1.80 s against 2.05 s), but at k=50 it stalled above the target loss where one
        sweep per phase reached it 5x faster than scikit-learn.
    inner_eps : float, default 0.01
        Gillis & Glineur's epsilon, >= 0 (the paper's value): the sweeps of a phase stop once
        one changes the factor by at most inner_eps times the first sweep's change.

    Returns
    -------
    FitResult
        Float32 W and H, and the per-iteration loss ||X - WH||_F and times. Components that
        stayed dead (e.g. under a strong L1 penalty) are returned as exact zeros.

    Raises
    ------
    ValueError
        If an argument is invalid, as in :func:`nmf_mu`, or inner_alpha or inner_eps is
        negative (or NaN).
    """
    X, W, H = check_nmf_arguments(X, W, H, max_iter, tol, alpha_W, alpha_H, l1_ratio, hoyer_W, hoyer_H, callback,
                        copy_W=False)
    if not inner_alpha >= 0 or not inner_eps >= 0:
        raise ValueError("inner_alpha and inner_eps must be >= 0")
    pen = _regularization(X.shape, alpha_W, alpha_H, l1_ratio)
    mon = Monitor(tol, max_iter, callback, hoyer_W is not None or hoyer_H is not None, pen)
    return _hals(X, W, H, mon, pen, max_iter=max_iter, inner_alpha=inner_alpha, inner_eps=inner_eps,
                 hoyer_W=hoyer_W, hoyer_H=hoyer_H)


def nmf_hals_extrapolated(X, W, H, *, max_iter: int = 500, tol: float = 1e-4, alpha_W: float = 0.0,
                          alpha_H: float | str = "same", l1_ratio: float = 0.0, callback: Callback | None = None,
                          beta0: float = 0.5, eta: float = 1.5, gamma: float = 1.05, gamma_bar: float = 1.01,
                          extrapolate_W: bool = False, window: int = 5, inner_alpha: float = 0.0,
                          inner_eps: float = 0.01) -> FitResult:
    """NMF by HALS with extrapolation and restarts: fewer iterations to a stationary point.

    Ang, A. M. S. & Gillis, N. (2019). Accelerating nonnegative matrix factorization
    algorithms using extrapolation. Neural Computation 31(2), 417-439 (their HALS-E scheme
    with restarts).

    Each iteration is one :func:`nmf_hals` iteration whose basis is pushed along its last step:
    after the H-phase, H_y = H_n + beta (H_n - H_prev) is what the next W-phase solves against
    and where the next H-phase starts. With ``extrapolate_W`` the coefficients are pushed too,
    as in the paper: W_y = max(0, W_n + beta (W_n - W_prev)) is what the H-phase solves against.
    The loss is measured, for free from the H-phase's products, at the feasible pair the H-phase
    saw (W_n or W_y, and H_n). While it decreases, beta grows by ``gamma`` up to a cap beta_bar,
    which itself grows by ``gamma_bar`` up to 1; when it rises, the step is discarded, the run
    restarts from the best pair so far, beta is divided by ``eta`` and beta_bar set to the
    previous beta. Unlike the paper, which restarts from the last accepted non-extrapolated pair
    and compares with the last (possibly rejected) loss, a restart here goes back to the best
    measured pair and compares with its loss, so the loss reported every iteration is that of
    the pair the solver would return then, and never rises (a rejected iteration reports it
    unchanged). As beta shrinks a step tends to a plain HALS step from that pair, which cannot
    raise the loss, so restarts cannot repeat for ever.

    Why the basis only, by default: on the full MNIST from the nndsvda start
    (bench/solvers_results.md), extrapolating H alone with gamma = 1.05, gamma_bar = 1.01 came
    within 0.1% of scikit-learn's converged loss in 15, 172, 65 and 81 iterations at k = 10, 20,
    50 and 100 (plain HALS: 31, 196, settled 0.16% above, 200), where the paper's both-factor scheme
    took 16 at k = 10 but settled 0.13% and 0.18% above it at k = 20 and 50. Any of them may
    settle in another stationary point than plain HALS from the same start, a little lower or
    higher.

    An iteration costs what a :func:`nmf_hals` iteration costs (two products with X) plus a copy
    of W (the best pair's) and a few element-wise passes over H; it needs one more n x k buffer
    (three more with ``extrapolate_W``).

    Parameters
    ----------
    X : array_like of shape (n_samples, n_features)
        As in :func:`nmf_hals`. There are no Hoyer constraints: an extrapolated factor would
        leave them.
    W : array_like of shape (n_samples, k)
        As in :func:`nmf_hals`.
    H : array_like of shape (k, n_features)
        As in :func:`nmf_hals`.
    max_iter : int, default 500
        The number of iterations at most.
    tol : float, default 1e-4
        Stop when the estimated decrease still to come, relative to the (penalised) loss,
        falls below tol (0: run max_iter iterations). The estimate is the geometric tail of the
        decreases over the last windows of ``window`` and of 2 ``window`` iterations, the larger
        (see ``Monitor.remaining``); unlike the last step's decrease it knows how slowly the run
        is converging.
    alpha_W : float, default 0.0
        As in :func:`nmf_hals`.
    alpha_H : float or "same", default "same"
        As in :func:`nmf_hals`.
    l1_ratio : float, default 0.0
        As in :func:`nmf_hals`.
    callback : callable, optional
        As in :func:`nmf_mu`; it sees the reported (best) loss.
    beta0 : float, default 0.5
        The first extrapolation weight, in [0, 1); 0 gives plain HALS (with this stopping rule).
    eta : float, default 1.5
        Beta's decrease on a restart (beta <- beta / eta).
    gamma : float, default 1.05
        Beta's growth after an accepted step.
    gamma_bar : float, default 1.01
        The growth of beta's cap after an accepted step; eta > gamma >= gamma_bar >= 1 as in
        the paper (whose HALS values are 1.5, 1.01 and 1.005).
    extrapolate_W : bool, default False
        Extrapolate the coefficients W too (projected onto W >= 0), the paper's scheme.
    window : int, default 5
        Iterations per short window of the stopping rule (>= 1); the long windows are twice as
        long, and the rule waits for four short windows.
    inner_alpha : float, default 0.0
        Gillis & Glineur's inner sweeps, as in :func:`nmf_hals`.
    inner_eps : float, default 0.01
        Their relative stopping threshold, as in :func:`nmf_hals`.

    Returns
    -------
    FitResult
        The best pair found (float32), the per-iteration loss ||X - WH||_F of the best pair so
        far (non-increasing) and times.

    Raises
    ------
    ValueError
        If an argument is invalid, as in :func:`nmf_hals`, the extrapolation parameters break
        0 <= beta0 < 1 and eta > gamma >= gamma_bar >= 1, window is not an integer >= 1 or
        extrapolate_W is not a bool.
    """
    X, W, H = check_nmf_arguments(X, W, H, max_iter, tol, alpha_W, alpha_H, l1_ratio, None, None, callback,
                                  copy_W=False)
    if not inner_alpha >= 0 or not inner_eps >= 0:
        raise ValueError("inner_alpha and inner_eps must be >= 0")
    for name, value, ok in (("beta0", beta0, lambda v: 0 <= v < 1), ("gamma_bar", gamma_bar, lambda v: v >= 1),
                            ("gamma", gamma, lambda v: v >= gamma_bar), ("eta", eta, lambda v: v > gamma)):
        if not Interval(Real).accepts(value) or not ok(value):
            raise ValueError(f"{name} must satisfy 0 <= beta0 < 1 and eta > gamma >= gamma_bar >= 1; "
                             f"got {name}={value!r}")
    check("window", window, [Interval(Integral, 1)])
    check("extrapolate_W", extrapolate_W, [Boolean()])
    pen = _regularization(X.shape, alpha_W, alpha_H, l1_ratio)
    mon = Monitor(tol, max_iter, callback, False, pen, window=int(window))
    return _hals(X, W, H, mon, pen, max_iter=max_iter, inner_alpha=inner_alpha, inner_eps=inner_eps,
                 extrapolation=(float(beta0), float(eta), float(gamma), float(gamma_bar), extrapolate_W))


def _phase(F, A, G, l2: float, max_sweeps: int, inner_eps: float, hoyer: float | None):
    """One HALS phase: F's rows updated against A and the Gram matrix G (plus the L2 penalty on
    its diagonal), then projected to Hoyer's sparseness when asked; returns F (a new array after
    a projection)."""
    B = G.copy()
    diag = np.arange(len(B))
    B[diag, diag] += np.float32(l2)
    _hals_sweeps(F, A, B, max_sweeps, inner_eps)
    if hoyer is not None:
        F = project_hoyer(F, hoyer)
    _revive_dead_rows(F)
    return F


class _Extrapolation:
    """Ang & Gillis's extrapolation state for :func:`_hals`: beta, its cap, the last accepted
    updates and the best pair so far (with its H H^T, loss and penalised loss)."""

    def __init__(self, Wt, H, HHt, beta0: float, eta: float, gamma: float, gamma_bar: float,
                 extrapolate_W: bool) -> None:
        self.beta, self.eta, self.gamma, self.gamma_bar = beta0, eta, gamma, gamma_bar
        self.beta_bar, self.beta_last = 1.0, beta0
        self.extrapolate_W = extrapolate_W
        self.H_prev = H.copy()
        self.W_best, self.H_best, self.HHt_best = Wt.copy(), H.copy(), HHt
        # the coefficients' last accepted update and this iteration's, only when they are pushed too
        self.W_prev, self.W_n = (Wt.copy(), np.empty_like(Wt)) if extrapolate_W else (None, None)
        self.best = self.best_loss = None

    def push_W(self, Wt) -> None:
        """W_y = max(0, W_n + beta (W_n - W_prev)) in Wt, in place; W_n kept for the next difference."""
        if not self.extrapolate_W:
            return
        np.copyto(self.W_n, Wt)
        Wt -= self.W_prev
        Wt *= np.float32(self.beta)
        Wt += self.W_n
        np.maximum(Wt, 0.0, out=Wt)
        _revive_dead_rows(Wt)

    def restart(self, Wt, H):
        """The step did not pay: back to the best pair, smaller beta, capped by the last one; its H H^T."""
        np.copyto(Wt, self.W_best)
        if self.extrapolate_W:
            np.copyto(self.W_prev, self.W_best)
        np.copyto(H, self.H_best)
        np.copyto(self.H_prev, self.H_best)
        self.beta_bar, self.beta_last, self.beta = self.beta_last, self.beta, self.beta / self.eta
        return self.HHt_best

    def step(self, mon: Monitor, Wt, H, WtW, HHt, loss: float):
        """Accept or reject this iteration's step, record the best pair in `mon`; (H, H H^T, stop)."""
        objective = mon.objective(loss, Wt, H, WtW, HHt)
        if objective > self.best:
            HHt = self.restart(Wt, H)
        else:
            H, HHt = self.accept(Wt, H, HHt, loss, objective)
        return H, HHt, mon.step(self.best_loss, self.W_best, self.H_best, objective=self.best)

    def accept(self, Wt, H, HHt, loss: float, objective: float):
        """Keep the step as the best pair and push H along it; the pushed H and its H H^T."""
        self.best, self.best_loss, self.HHt_best = objective, loss, HHt
        np.copyto(self.W_best, Wt)
        np.copyto(self.H_best, H)
        if self.extrapolate_W:
            np.copyto(self.W_prev, self.W_n)
        # H_y = H_n + beta (H_n - H_prev), not projected (the paper's choice for the second factor)
        H_n = H.copy()
        H -= self.H_prev
        H *= np.float32(self.beta)
        H += H_n
        self.H_prev = H_n
        self.beta_last, self.beta = self.beta, min(self.beta_bar, self.gamma * self.beta)
        self.beta_bar = min(1.0, self.gamma_bar * self.beta_bar)
        return H, H @ H.T


def _hals(X, W, H, mon: Monitor, pen, *, max_iter, inner_alpha, inner_eps, hoyer_W=None, hoyer_H=None,
          extrapolation: tuple[float, float, float, float, bool] | None = None) -> FitResult:
    """The HALS loop of :func:`nmf_hals` and, with ``extrapolation`` = (beta0, eta, gamma,
    gamma_bar, extrapolate_W), of :func:`nmf_hals_extrapolated`. Arguments already validated;
    H is the solver's own copy, W is not changed."""
    l1_W, l1_H, l2_W, l2_H = pen
    x_sq = squared_norm(X)
    n, p = X.shape
    k = H.shape[0]
    max_sweeps_W = 1 + int(inner_alpha * _sweeps_per_products(n, p, k, n))
    max_sweeps_H = 1 + int(inner_alpha * _sweeps_per_products(n, p, k, p))

    Wt = np.array(W.T, order="C")  # rows of Wt (columns of W) are the HALS coordinates
    del W
    # the W-phase's products land in buffers reused every iteration: X H^T comes fastest from
    # BLAS as n x k, the sweeps want it as contiguous rows (k x n)
    XHt, A_W = np.empty((n, k), np.float32), np.empty((k, n), np.float32)
    HHt = H @ H.T
    ext = None if extrapolation is None else _Extrapolation(Wt, H, HHt, *extrapolation)
    for it in range(max_iter):
        # W-phase: A = (X H^T)^T, B = H H^T
        np.dot(X, H.T, out=XHt)
        np.copyto(A_W, XHt.T)
        if it == 0:
            WtW = Wt @ Wt.T
            start_loss = loss_from_products(x_sq, tdot(Wt, A_W), WtW, HHt)
            start = mon.start(start_loss, Wt, H, WtW, HHt)
            if ext is not None:
                ext.best, ext.best_loss = start, start_loss
        if l1_W:
            A_W -= np.float32(l1_W)
        Wt = _phase(Wt, A_W, HHt, l2_W, max_sweeps_W, inner_eps, hoyer_W)
        if ext is not None:
            ext.push_W(Wt)

        # H-phase: A = W^T X, B = W^T W
        WtX = np.ascontiguousarray((X.T @ Wt.T).T)  # X^T W: the fast BLAS path for a tall X
        WtW = Wt @ Wt.T
        A = WtX - np.float32(l1_H) if l1_H else WtX.copy()
        H = _phase(H, A, WtW, l2_H, max_sweeps_H, inner_eps, hoyer_H)

        HHt = H @ H.T
        loss = loss_from_products(x_sq, tdot(WtX, H), WtW, HHt)
        if ext is None:
            stop = mon.step(loss, Wt, H, WtW, HHt)
        else:
            H, HHt, stop = ext.step(mon, Wt, H, WtW, HHt, loss)
        if stop:
            break
    if ext is not None:
        Wt, H = ext.W_best, ext.H_best
    del XHt, A_W
    # components that stayed dead (e.g. under a strong L1 penalty) go back to exact zeros
    for F in (Wt, H):
        F[(F == np.float32(_REVIVE_EPS)).all(axis=1)] = 0.0
    return mon.result(Wt.T, H)
