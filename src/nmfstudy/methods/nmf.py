"""Plain and sparse NMF, X ~ W H, clustered by the coefficients W (``method=nmf``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from numbers import Real
from typing import ClassVar

import numpy as np

from ..nmf import MAX_ITER, PENALTIES, SPARSENESS, TOL, initialization
from ..nmf.graph_nmf import ASSIGN_RULES
from ..params import Boolean, Interval, InvalidParameterError, Options
from ._base import BasisEstimator

SOLVERS = ("hals", "mu", "sklearn-cd", "sklearn-mu")


@dataclass(repr=False, eq=False)
class NMFClustering(BasisEstimator):
    """NMF X ~ W H; clusters from the coefficients W (argmax, or k-means on L2-normalized rows).

    The solvers are ours (:mod:`nmfstudy.nmf.solvers`: ``hals``, ``mu``) or scikit-learn's
    ``NMF`` (``sklearn-cd``, ``sklearn-mu``), all from scikit-learn's start for `init` and with
    scikit-learn's penalty scaling. Lee & Seung (2001), Gillis & Glineur (2012), Hoyer (2004).

    Parameters
    ----------
    n_components : int
        Basis images (= clusters), >= 1.
    init : str or None
        One of scikit-learn's NMF starts (:data:`nmfstudy.nmf.initialization.NMF_INITS`); None: scikit-learn's
        NMF rule, ``nndsvda`` when n_components <= min(n_samples, n_features), else ``random``.
    random_state : int or None
        Seed of the start, the solver and the k-means assignment (None: drawn).
    solver : {"hals", "mu", "sklearn-cd", "sklearn-mu"}
    max_iter : int
        Iteration cap.
    tol : float
        Stop when the loss decrease still to come (``hals`` extrapolated: estimated from the last
        iterations), else the last iteration's, relative to the loss, falls below it (0: run `max_iter`).
    assign : {"argmax", "kmeans"}
        Clusters from the largest coefficient of each sample, or from k-means on the
        L2-normalized rows of W.
    extrapolate : bool
        ``hals``: Ang & Gillis's (2019) extrapolation with restarts
        (:func:`~nmfstudy.nmf.solvers.nmf_hals_extrapolated`): fewer iterations to a stationary
        point (on the full MNIST, to within 0.1% of scikit-learn's converged loss, 2x fewer than
        plain HALS at k=10 and 2.5x at k=100; at k=50 plain HALS settles above it), stopped when
        the estimated decrease still to come falls below `tol`; not under Hoyer's constraints
        (s_W, s_H), where ``hals`` runs without it.
    inner_alpha : float
        ``hals``: Gillis & Glineur's extra inner sweeps per phase (0: one sweep).
    alpha_W, alpha_H, l1_ratio : float, float or "same", float
        scikit-learn's L1/L2 penalties (``sparsity=l1``).
    s_W, s_H : float or None
        Hoyer sparseness targets in [0, 1) of W's columns and H's rows (``sparsity=hoyer``;
        ``hals`` and ``mu`` only).
    """

    name: ClassVar[str] = "nmf"
    parameters: ClassVar = {
        "solver": [Options(SOLVERS)],
        "max_iter": MAX_ITER,
        "tol": TOL,
        "assign": [Options(ASSIGN_RULES)],
        "extrapolate": [Boolean()],
        "inner_alpha": [Interval(Real, 0.0)],
    }
    sparsity_parameters: ClassVar = {
        "none": {},
        "l1": {key: PENALTIES[key] for key in ("alpha_W", "alpha_H", "l1_ratio")},
        "hoyer": {"s_W": SPARSENESS, "s_H": SPARSENESS},
    }

    n_components: int = 10
    init: str | None = None
    random_state: int | None = None
    solver: str = "hals"
    max_iter: int = 500
    tol: float = 1e-4
    assign: str = "argmax"
    extrapolate: bool = True
    inner_alpha: float = 0.0
    alpha_W: float = 0.0
    alpha_H: float | str = "same"
    l1_ratio: float = 0.0
    s_W: float | None = None
    s_H: float | None = None

    @classmethod
    def check_combination(cls, params) -> None:
        """Hoyer's constraints need one of our solvers."""
        if params["solver"].startswith("sklearn") and (params["s_W"] is not None or params["s_H"] is not None):
            raise InvalidParameterError("solver", f"must be hals or mu with a Hoyer sparseness target (s_W, s_H); "
                                        f"scikit-learn's NMF has no such constraint; got {params['solver']!r}")

    def _fit(self, X: np.ndarray, seed: int, callback) -> float:
        """Factorize X (n_samples x n_features, non-negative) and cluster its samples."""
        W, H = initialization.nmf_init(X, self.k, self._start(X), seed)
        start = time.perf_counter()  # fit_time_s_ is the solver's time, without the start
        if self.solver.startswith("sklearn"):
            W, H = self._fit_sklearn(X, W, H, start, seed)
        else:
            from ..nmf import solvers

            common = dict(max_iter=self.max_iter, tol=self.tol, alpha_W=self.alpha_W, alpha_H=self.alpha_H,
                          l1_ratio=self.l1_ratio, callback=callback)
            hoyer = dict(hoyer_W=self.s_W, hoyer_H=self.s_H)
            if self.solver == "mu":
                result = solvers.nmf_mu(X, W, H, **hoyer, **common)
            elif self.extrapolate and self.s_W is None and self.s_H is None:
                result = solvers.nmf_hals_extrapolated(X, W, H, inner_alpha=self.inner_alpha, **common)
            else:  # an extrapolated factor would leave Hoyer's constraints: plain HALS there
                result = solvers.nmf_hals(X, W, H, inner_alpha=self.inner_alpha, **hoyer, **common)
            W, H = result.W, result.H
            self._keep_history(result)
        self.W_ = W.astype(np.float32, copy=False)
        self.components_ = H.astype(np.float32, copy=False)
        if self.assign == "kmeans":
            from sklearn.cluster import KMeans
            from sklearn.preprocessing import normalize

            self.assigner_ = KMeans(self.k, n_init=10, random_state=seed).fit(normalize(self.W_))
            self.labels_ = self.assigner_.labels_
        else:
            self.labels_ = self.W_.argmax(axis=1)
        return start

    def _fit_sklearn(self, X, W, H, start, seed):
        from sklearn.decomposition import NMF

        model = NMF(
            self.k, init="custom", solver=self.solver.removeprefix("sklearn-"), max_iter=self.max_iter,
            tol=self.tol, alpha_W=self.alpha_W, alpha_H=self.alpha_H, l1_ratio=self.l1_ratio,
            random_state=seed,
        )
        W = model.fit_transform(X, W=W, H=H)
        self.n_iter_ = int(model.n_iter_)
        self.loss_history_ = np.array([model.reconstruction_err_])
        self.time_history_ = np.array([time.perf_counter() - start])
        self.loss_ = float(model.reconstruction_err_)
        return W, model.components_

    def _predict(self, X: np.ndarray) -> np.ndarray:
        """Clusters of new samples: their coefficients against the fitted basis, then the fitted rule."""
        W = self.coefficients(X)
        if self.assign == "kmeans":
            from sklearn.preprocessing import normalize

            return self.assigner_.predict(normalize(W))
        return W.argmax(axis=1)
