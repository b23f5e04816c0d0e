"""k-nearest-neighbour graphs of the samples, for graph-aware NMF.

Cai, He, Han, Huang, "Graph Regularized Nonnegative Matrix Factorization for Data
Representation", IEEE TPAMI 33(8), 2011, build a p-nearest-neighbour graph with 0-1
or heat-kernel weights; Kuang, Ding, Park, "Symmetric Nonnegative Matrix
Factorization for Graph Clustering", SDM 2012, factor such a graph directly.

The search is exact, and costs about one float32 product per unordered pair of samples:

1. a bound per sample on its k-th nearest distance, from the samples near it (a coarse
   grouping around a few centres);
2. the float32 distances |x|^2 - 2 x.y + |y|^2 as one BLAS product per 1024 x 1024 tile,
   only the tiles on and above the diagonal (the distance is symmetric), each compared with
   the bounds while it is in cache; the pairs under a bound are the candidates;
3. the candidates re-ranked by their exact float64 distance.

The bounds carry a proven margin for float32 rounding, so that rounding never decides who is
a neighbour: the result is the exact k nearest in float64, ties to the lower index (the
support then equals scikit-learn's kneighbors_graph). No n x n dense matrix is ever formed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import sklearn
from sklearn.decomposition import PCA

from ..cache_files import write_atomically
from ..params import Boolean, Interval, Options, check
from ._common import blas_threads, threadpools
from .partition_search import membership

WEIGHTS = ("binary", "heat", "fuzzy")
SEED = [Interval(Integral, 0, 2**32 - 1)]  # numpy's and scikit-learn's seeds
# The graph's settings, as a graph-aware method takes them (their data-dependent bounds are
# checked by the functions below, which know the data).
PARAMETERS = {
    "n_neighbors": [Interval(Integral, 1)],
    "weight": [Options(WEIGHTS)],
    "normalize": [Boolean()],
    "pca": [Interval(Integral, 1), None],
}
# Square tiles of the distance matrix: 1024 x 1024 float32 (4 MiB) stays in cache between its
# product and its screening.
_TILE = 1024
_CACHE_VERSION = 3  # bump when the graph construction changes (2: the normalize setting; 3: PCA on one BLAS thread)

log = logging.getLogger(__name__)


def _check_X(X, name: str = "X") -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
        raise ValueError(f"{name} must be a 2-D array with at least 2 rows, got shape {X.shape}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return X


def _check_pca(pca, X: np.ndarray) -> int | None:
    return check("pca", pca, [Interval(Integral, 1, min(X.shape)), None])


def _unit_rows(X: np.ndarray) -> np.ndarray:
    """Each row scaled to unit L2 norm (an all-zero row stays zero), float32."""
    norms = np.maximum(np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64)), np.finfo(np.float32).tiny)
    out = np.empty(X.shape, dtype=np.float32)
    # divided in float64 and rounded, a block of rows at a time: the same values as one float64 quotient of
    # the whole array, without its 8-byte copy (0.11 s against 1.36 s on all 63,000 MNIST images)
    for start in range(0, len(X), 1024):
        np.divide(X[start:start + 1024], norms[start:start + 1024, None], out=out[start:start + 1024], casting="unsafe")
    return out


def _project(X_fit: np.ndarray, others: list[np.ndarray], pca: int | None, seed: int):
    """X_fit and `others` in the PCA space fitted on X_fit (randomized SVD, seeded), float32."""
    return _fit_projection(X_fit, others, pca, seed)[1:]


def _fit_projection(X_fit: np.ndarray, others: list[np.ndarray], pca: int | None, seed: int):
    """The PCA fitted on X_fit (None without `pca`), then X_fit and `others` projected on it, float32."""
    if pca is None:
        return None, X_fit, others
    # on one BLAS thread: OpenBLAS's products sum in another order on two threads than on one, so a projection
    # fitted on two differed in its last bits, and with it 93% of the fuzzy weights of full MNIST's graph (up to
    # 0.006); on one thread the graph is the same on any machine's thread count, at the same speed here (8.2 s)
    with threadpools.limit(limits=1, user_api="blas"):
        model = PCA(n_components=pca, svd_solver="randomized", random_state=seed).fit(X_fit)
    proj = [_transformed(model, Z) for Z in [X_fit, *others]]
    return model, proj[0], proj[1:]


def _transformed(projection, X: np.ndarray) -> np.ndarray:
    """X in the PCA space, float32, on one BLAS thread like the fit (see `_fit_projection`)."""
    with threadpools.limit(limits=1, user_api="blas"):
        return np.ascontiguousarray(projection.transform(X), dtype=np.float32)


class _Reference:
    """The side of a screened kNN search that only the searched samples R decide: computed once, queried often.

    `Rt`: the [-2 r, 1, |r|^2] columns of `_augmented`'s GEMM; `r_sq`; and the grouping of R
    around a few centres that `_thresholds` bounds each query with (a fixed-seed sample, two
    Lloyd steps: it affects the speed only, never the result). A graph's search makes one per
    call; a `NeighborIndex` keeps one, so that placing a few new samples costs their own products.
    """

    def __init__(self, R: np.ndarray, r_sq: np.ndarray | None = None) -> None:
        self.R = R
        self.r_sq = np.einsum("ij,ij->i", R, R) if r_sq is None else r_sq
        self.Rt = np.empty((R.shape[1] + 2, R.shape[0]), dtype=np.float32)
        self.Rt[:-2], self.Rt[-2], self.Rt[-1] = -2.0 * R.T, 1.0, self.r_sq
        n_r = R.shape[0]
        n_groups = int(np.clip(round(np.sqrt(n_r) / 4), 1, 256))  # ~60 groups of ~1,000 on 63,000 samples
        centres = R[np.random.default_rng(0).choice(n_r, n_groups, replace=False)]
        for _ in range(2):
            labels = _nearest_centre(R, centres)
            members = sp.csr_matrix((np.ones(n_r), (labels, np.arange(n_r))), shape=(n_groups, n_r))
            counts = np.bincount(labels, minlength=n_groups)
            used = counts > 0
            centres[used] = (members @ R.astype(np.float64))[used] / counts[used, None]
        self.centres, self.labels = centres, _nearest_centre(R, centres)
        self.order = np.argsort(self.labels, kind="stable")
        self.counts = np.bincount(self.labels, minlength=n_groups)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])


def _augmented(Q: np.ndarray, ref: _Reference, q_sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[q, |q|^2, 1] rows: one GEMM of them with `ref.Rt` is |q - r|^2, float32.

    Also returns each screening's error bound per query: the GEMM sums dim + 2 products whose
    magnitudes add up to at most 2 (|q|^2 + |r|^2), and the norms carry their own rounding, so
    |float32 - exact| <= 3 (dim + 2) u (|q|^2 + max |r|^2) with u = 2^-24; we allow 4 (dim + 2) u.
    """
    Qa = np.empty((Q.shape[0], Q.shape[1] + 2), dtype=np.float32)
    Qa[:, :-2], Qa[:, -2], Qa[:, -1] = Q, q_sq, 1.0
    err = 4.0 * (Q.shape[1] + 2) * 2.0 ** -24 * (q_sq.astype(np.float64) + float(ref.r_sq.max()))
    return Qa, err


def _thresholds(Q: np.ndarray, ref: _Reference, Qa: np.ndarray, err: np.ndarray, k: int,
                self_rows: bool, pool: ThreadPoolExecutor) -> np.ndarray:
    """A float32 bound per query that every one of its k exact nearest passes in the screening.

    The k-th smallest distance to any k samples bounds the k-th nearest's from above, and
    samples near the query make it tight. So each query takes the k-th smallest float32
    distance within its group of R (`_Reference`, padded to k samples), plus twice the
    screening error (once for that distance, once for a candidate's).
    """
    n_r, n_groups = ref.R.shape[0], len(ref.counts)
    q_labels = ref.labels if self_rows else _nearest_centre(Q, ref.centres)
    order, counts, starts = ref.order, ref.counts, ref.starts
    need = k + self_rows
    thr = np.empty(Q.shape[0], dtype=np.float64)

    def group(g):
        queries = np.flatnonzero(q_labels == g)
        lo = min(starts[g], n_r - need)
        cols = order[lo:max(starts[g] + counts[g], lo + need)]
        Rg = np.ascontiguousarray(ref.Rt[:, cols])
        for s in range(0, len(queries), _TILE):
            rows = queries[s:s + _TILE]
            d = Qa[rows] @ Rg
            if self_rows:  # a sample is never its own neighbour
                d[rows[:, None] == cols[None, :]] = np.inf
            thr[rows] = np.partition(d, k - 1, axis=1)[:, k - 1]

    list(pool.map(group, np.flatnonzero(np.bincount(q_labels, minlength=n_groups))))
    return (thr + 2.0 * err).astype(np.float32)


def _nearest_centre(X: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre of each row of X."""
    c_sq = np.einsum("ij,ij->i", centres, centres)
    return np.argmin(c_sq - 2.0 * (X @ centres.T), axis=1)


def _screen(Qa: np.ndarray, Rt: np.ndarray, thr_q: np.ndarray, thr_r: np.ndarray | None,
            pool: ThreadPoolExecutor) -> tuple[np.ndarray, np.ndarray]:
    """Every (query, sample) pair whose float32 distance is at most the query's threshold.

    thr_r given: Q is R, and only the tiles on and above the diagonal are computed, each
    screened for its rows and, transposed, for its columns (the distance is symmetric).
    Each thread reuses its own tile buffers: fresh 4 MiB arrays would cost a page fault per
    page, about as much as the product itself.
    """
    n_q, n_r = Qa.shape[0], Rt.shape[1]
    tiles = [(i, j) for i in range(0, n_q, _TILE) for j in range(i if thr_r is not None else 0, n_r, _TILE)]
    local = threading.local()

    def screen(tile):
        i, j = tile
        if not hasattr(local, "d"):
            local.d = np.empty((_TILE, _TILE), dtype=np.float32)
            local.hit = np.empty((_TILE, _TILE), dtype=bool)
        Qi, Rj = Qa[i:i + _TILE], Rt[:, j:j + _TILE]
        d, hit = local.d[:len(Qi), :Rj.shape[1]], local.hit[:len(Qi), :Rj.shape[1]]
        np.matmul(Qi, Rj, out=d)
        width = d.shape[1]
        # flatnonzero of the 1-D view: a 2-D nonzero costs as much as the product
        r, c = np.divmod(np.flatnonzero(np.less_equal(d, thr_q[i:i + _TILE, None], out=hit).reshape(-1)), width)
        found = [(r.astype(np.int32) + i, c.astype(np.int32) + j)]
        if thr_r is not None and j != i:
            r, c = np.divmod(np.flatnonzero(np.less_equal(d, thr_r[None, j:j + _TILE], out=hit).reshape(-1)), width)
            found.append((c.astype(np.int32) + j, r.astype(np.int32) + i))
        return found

    found = [pair for part in pool.map(screen, tiles) for pair in part]
    return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])


def _knn(Q: np.ndarray, R: np.ndarray | _Reference, k: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """Indices into R (n_q x k, nearest first) and squared distances (float64) of each row of Q.

    R: the searched samples, or their `_Reference` made beforehand (what a `NeighborIndex` keeps).
    exclude_self: Q is R, and row i may not pick itself (a duplicate of it may).
    Exact ties in distance go to the lower index. The result is the exact k nearest in
    float64: float32 only screens the candidates, with a proven margin (`_augmented`).

    The work runs on as many threads as BLAS may use, each with one BLAS thread: numpy
    releases the GIL in the products and comparisons, and products this thin (dim + 2
    columns) lose more to BLAS's thread hand-offs than they gain.
    """
    n_q = Q.shape[0]
    with threadpools.limit(limits=1, user_api="blas"), ThreadPoolExecutor(blas_threads()) as pool:
        q_sq = np.einsum("ij,ij->i", Q, Q)
        ref = R if isinstance(R, _Reference) else _Reference(R, q_sq if R is Q else None)
        Qa, err = _augmented(Q, ref, q_sq)
        thr = _thresholds(Q, ref, Qa, err, k, exclude_self, pool)
        qi, ri = _screen(Qa, ref.Rt, thr, thr if exclude_self else None, pool)
        del Qa
        if exclude_self:
            keep = qi != ri
            qi, ri = qi[keep], ri[keep]
        # the candidates' exact float64 distances, in slices that stay in cache
        Q64 = Q.astype(np.float64)
        exact = np.empty(len(qi), dtype=np.float64)
        step = 8192

        def rerank(s):
            rows = ri[s:s + step]
            near = Q64[rows] if exclude_self else ref.R[rows].astype(np.float64)  # exact: float32 widens exactly
            diff = near - Q64[qi[s:s + step]]
            exact[s:s + step] = np.einsum("ij,ij->i", diff, diff)

        list(pool.map(rerank, range(0, len(qi), step)))
    order = np.lexsort((ri, exact, qi))  # by query, then distance, then the lower index
    first = np.searchsorted(qi[order], np.arange(n_q + 1))
    if np.diff(first).min() < k:  # the bounds' margin makes this impossible; never return a wrong graph
        raise RuntimeError("kNN screening kept fewer than k candidates for a sample")
    first = first[:-1]
    take = order[first[:, None] + np.arange(k)]
    return ri[take].astype(np.int64), exact[take]


def knn_graph(X, n_neighbors: int = 10, weight: str = "binary", pca: int | None = None,
              seed: int = 0, normalize: bool = False) -> sp.csr_matrix:
    """Symmetric k-nearest-neighbour graph of the rows of X, as a float32 CSR matrix.

    Each sample is joined to its `n_neighbors` nearest others (Euclidean, on the rows scaled
    to unit norm when `normalize`, then on a PCA projection to `pca` dimensions when given,
    randomized and seeded by `seed`); the
    directed graph A is made symmetric by S = max(A, A^T); the diagonal is zero, and
    nnz(S) <= 2 n k. This is the p-nearest-neighbour graph of Cai, He, Han, Huang (2011)
    for GNMF, and the graph SymNMF factors (Kuang, Ding, Park 2012).

    Parameters
    ----------
    X : array_like of shape (n_samples, n_features)
        The samples, n_samples >= 2, finite; used as float32.
    n_neighbors : int, default 10
        Neighbours per sample, in [1, n_samples - 1].
    weight : {"binary", "heat", "fuzzy"}, default "binary"
        The edge weights:

        - "binary": 1 on every edge (the 0-1 weighting of Cai et al. 2011).
        - "heat": exp(-d^2 / t), the heat kernel of Cai et al. 2011, with the bandwidth
          t set to the mean squared distance over all directed kNN edges (data-driven,
          so the weights need no tuning; t = 1 if all those distances are 0).
    pca : int or None, default None
        Search on a PCA projection to this many dimensions, in [1, min(X.shape)]; None for
        the raw features.
    seed : int, default 0
        The seed of the randomized PCA, in [0, 2**32 - 1].
    normalize : bool, default False
        Scale each sample to unit L2 norm first, so that distances compare shapes, not ink:
        a bold and a thin stroke of one digit come closer (on MNIST's 60,000 training images,
        10-NN on PCA 50, the share of edges within a digit rose from 0.947 to 0.955, and from
        0.969 to 0.971 on the deskewed images: bench/graph_choice_results.md).

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n_samples, n_samples), float32
        The symmetric graph S, with sorted indices.

    Raises
    ------
    ValueError
        If X is not a finite 2-D array with at least 2 rows, or another argument is out of
        its range.
    """
    return _build_graph(X, n_neighbors, weight, pca, seed, normalize)[0]


def graph_and_index(X, n_neighbors: int = 10, weight: str = "binary", pca: int | None = None,
                    seed: int = 0, normalize: bool = False) -> tuple[sp.csr_matrix, NeighborIndex]:
    """`knn_graph(X, ...)` and `NeighborIndex.fit(X, pca, seed, normalize)`, on one projection.

    The index is the one :meth:`NeighborIndex.fit` makes (the same PCA, fitted once, and the same
    projected samples), so a graph method that keeps both pays for one PCA, not two (2.5 s of
    a 13 s DCD fit on all 63,000 MNIST images).

    Parameters and Raises
    ---------------------
    As :func:`knn_graph`.

    Returns
    -------
    (scipy.sparse.csr_matrix, NeighborIndex)
    """
    S, projection, Z = _build_graph(X, n_neighbors, weight, pca, seed, normalize)
    if projection is None:
        return S, NeighborIndex.fit(X, seed=seed, normalize=normalize)
    return S, NeighborIndex(projection, Z, None, normalize)


def _build_graph(X, n_neighbors: int, weight: str, pca: int | None, seed: int, normalize: bool):
    """`knn_graph`'s graph, with the PCA it searched on (or None) and the samples in its space."""
    X = _check_X(X)
    n = X.shape[0]
    check("n_neighbors", n_neighbors, [Interval(Integral, 1, n - 1)])
    check("weight", weight, PARAMETERS["weight"])
    _check_pca(pca, X)
    check("seed", seed, SEED)
    check("normalize", normalize, PARAMETERS["normalize"])

    projection, Z, _ = _fit_projection(_unit_rows(X) if normalize else X, [], pca, seed)
    idx, d2 = _knn(Z, Z, n_neighbors, exclude_self=True)
    if weight == "binary":
        w = np.ones(d2.shape, dtype=np.float32)
    elif weight == "heat":
        t = float(d2.mean()) or 1.0
        w = np.exp(-d2 / t).astype(np.float32)
    else:
        w = fuzzy_memberships(np.sqrt(d2)).astype(np.float32)
    A = sp.csr_matrix((w.ravel(), idx.ravel(), np.arange(0, n * n_neighbors + 1, n_neighbors)),
                      shape=(n, n))
    # fuzzy: the probabilistic union A + A^T - A * A^T of UMAP; else the larger of the two directions
    S = (A + A.T - A.multiply(A.T) if weight == "fuzzy" else A.maximum(A.T)).tocsr()
    S.sort_indices()
    return S.astype(np.float32), projection, Z


def fuzzy_memberships(dist: np.ndarray, n_iter: int = 64) -> np.ndarray:
    """UMAP's membership of each sample's k nearest: exp(-(d - rho) / sigma), per sample.

    McInnes, Healy, Melville, "UMAP: Uniform Manifold Approximation and Projection for Dimension
    Reduction", 2018, section 3 (umap-learn's ``smooth_knn_dist``, local connectivity 1): rho is
    the distance to the nearest neighbour not at distance 0 (which so gets 1), and sigma solves
    sum_j exp(-max(0, d_j - rho) / sigma) = log2(k + 1) (umap-learn counts the sample itself among
    its k + 1 neighbours), by bisection, all samples at once. As umap-learn's, sigma is at least
    1e-3 times the mean of the k + 1 distances (the sample's own 0 included; where rho is 0, the
    mean over all samples).

    Parameters
    ----------
    dist : ndarray of shape (n_samples, k)
        Each sample's distances to its k nearest others, nearest first.
    n_iter : int, default 64
        Bisection steps (umap-learn's; the bracket is then far below float32's resolution).

    Returns
    -------
    ndarray of shape (n_samples, k), float64
        The memberships, in (0, 1].
    """
    dist = np.asarray(dist, dtype=np.float64)
    n, k = dist.shape
    target = np.log2(k + 1)
    positive = dist > 0
    rho = np.where(positive.any(axis=1), dist[np.arange(n), positive.argmax(axis=1)], 0.0)[:, None]
    excess = np.maximum(dist - rho, 0.0)
    lo, hi, sigma = np.zeros(n), np.full(n, np.inf), np.ones(n)
    for _ in range(n_iter):
        total = np.exp(-excess / sigma[:, None]).sum(axis=1)
        above = total > target  # too wide a kernel: shrink sigma
        hi = np.where(above, sigma, hi)
        lo = np.where(above, lo, sigma)
        sigma = np.where(np.isinf(hi), sigma * 2, (lo + hi) / 2)
    mean = dist.sum(axis=1) / (k + 1)
    floor = np.where(rho[:, 0] > 0, mean, mean.mean())
    sigma = np.maximum(sigma, 1e-3 * floor)
    sigma[sigma == 0] = 1.0  # every distance 0: all memberships 1 whatever sigma
    return np.exp(-excess / sigma[:, None])


class NeighborIndex:
    """The training samples kept to find each new sample's nearest ones, as compactly as exactness allows.

    With `normalize`, every sample (training and new) is first scaled to unit norm, as the graph's
    are. With `pca`, the projection fitted on the training samples (as the graph's is) and the training
    samples in it (``n_train x pca`` float32); else the pixels themselves, stored as uint8 when
    every value is a multiple of 1/255 and comes back bit for bit (MNIST, the image folders),
    else as float32. Full MNIST (63,000 x 784): 49 MB as uint8, 12.6 MB on PCA 50.

    Attributes
    ----------
    projection : sklearn.decomposition.PCA or None
    train : ndarray
        The training samples in the search space (or their uint8 codes).
    scale : float or None
        The uint8 codes' step (1/255), None when `train` holds the values themselves.
    normalize : bool
        Whether samples are scaled to unit norm before the projection.
    """

    def __init__(self, projection, train: np.ndarray, scale: float | None, normalize: bool = False) -> None:
        self.projection, self.train, self.scale, self.normalize = projection, train, scale, normalize
        self._reference: _Reference | None = None

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"normalize": False, **state})  # an index pickled before normalize existed

    def __getstate__(self) -> dict:
        # the search's reference side is rebuilt on first use: a pickle (a logged model) stays compact
        return {**self.__dict__, "_reference": None}

    @classmethod
    def fit(cls, X_train, pca: int | None = None, seed: int = 0, normalize: bool = False) -> NeighborIndex:
        """The index of `X_train` (checked as for :func:`knn_graph`).

        Parameters
        ----------
        X_train : array_like of shape (n_train, n_features)
            The training samples, n_train >= 2, finite.
        pca : int or None, default None
            Search on a PCA projection (fitted on X_train) to this many dimensions; None for
            the raw features.
        seed : int, default 0
            The seed of the randomized PCA, in [0, 2**32 - 1].
        normalize : bool, default False
            Scale every sample to unit L2 norm before the projection (as :func:`knn_graph`).

        Returns
        -------
        NeighborIndex
        """
        X_train = _check_X(X_train, "X_train")
        _check_pca(pca, X_train)
        check("seed", seed, SEED)
        check("normalize", normalize, PARAMETERS["normalize"])
        if normalize:
            X_train = _unit_rows(X_train)
        if pca is not None:
            projection, Z, _ = _fit_projection(X_train, [], pca, seed)
            return cls(projection, Z, None, normalize)
        if normalize:
            return cls(None, X_train, None, True)
        codes = np.rint(X_train * np.float32(255.0))
        if codes.min() >= 0 and codes.max() <= 255:
            codes = codes.astype(np.uint8)
            if np.array_equal(codes.astype(np.float32) / np.float32(255.0), X_train):
                return cls(None, codes, 1.0 / 255.0)
        return cls(None, X_train, None)

    def _train(self) -> np.ndarray:
        if self.scale is None:
            return self.train
        return self.train.astype(np.float32) / np.float32(1.0 / self.scale)

    def nearest(self, X_test, n_neighbors: int = 10) -> np.ndarray:
        """Indices (n_test x n_neighbors, nearest first) of each new sample's nearest training samples.

        Parameters
        ----------
        X_test : array_like of shape (n_test, n_features)
            The samples to place, finite, with the features of the training samples.
        n_neighbors : int, default 10
            Neighbours per test sample, in [1, n_train].

        Returns
        -------
        ndarray of shape (n_test, n_neighbors), int64
            Row indices of the training samples, nearest first; exact ties in distance go to the lower index.
        """
        X_test = np.ascontiguousarray(np.atleast_2d(np.asarray(X_test, dtype=np.float32)))
        n_features = self.projection.n_features_in_ if self.projection is not None else self.train.shape[1]
        if X_test.shape[1] != n_features:
            raise ValueError(f"X_test must have {n_features} features like X_train, got {X_test.shape[1]}")
        check("n_neighbors", n_neighbors, [Interval(Integral, 1, self.train.shape[0])])
        if self.normalize:
            X_test = _unit_rows(X_test)
        Z_test = X_test if self.projection is None else _transformed(self.projection, X_test)
        if self._reference is None:
            self._reference = _Reference(np.ascontiguousarray(self._train(), dtype=np.float32))
        return _knn(Z_test, self._reference, n_neighbors, exclude_self=False)[0]


def nearest_train(X_train, X_test, n_neighbors: int = 10, pca: int | None = None, seed: int = 0,
                  normalize: bool = False) -> np.ndarray:
    """Indices (n_test x n_neighbors, nearest first) of each test sample's nearest training samples.

    `NeighborIndex.fit(X_train, pca, seed, normalize).nearest(X_test, n_neighbors)`: with `pca`, the
    projection is fitted on X_train only (as the graph's is), then applied to both.
    """
    return NeighborIndex.fit(X_train, pca=pca, seed=seed, normalize=normalize).nearest(X_test, n_neighbors)


def neighbor_vote(train_clusters, neighbors: np.ndarray, n_clusters: int) -> np.ndarray:
    """Each test sample takes the majority cluster of its neighbours (from `nearest_train`).

    A tie goes to the cluster of the nearer neighbour.

    Parameters
    ----------
    train_clusters : array_like of shape (n_train,), int
        The cluster of each training sample, in [0, n_clusters).
    neighbors : ndarray of shape (n_test, n_neighbors), int
        Each test sample's nearest training samples, nearest first, as :func:`nearest_train`
        returns them.
    n_clusters : int
        The number of clusters.

    Returns
    -------
    ndarray of shape (n_test,)
        The cluster of each test sample.
    """
    labels = np.asarray(train_clusters)[neighbors]
    rows = np.arange(len(labels))[:, None]
    counts = np.zeros((len(labels), n_clusters), dtype=np.int64)
    np.add.at(counts, (rows, labels), 1)
    # the first neighbour, in order of distance, whose cluster has the most votes
    first = np.argmax(counts[rows, labels] == counts.max(axis=1, keepdims=True), axis=1)
    return labels[rows[:, 0], first]


def modularity(S, clusters) -> float:
    """Newman's modularity of a partition of the graph S: the share of S's weight within clusters, less the
    share a random graph of the same degrees would put there (Newman, PNAS 103(23), 2006).

    Q = sum_c [ e_c / m - (d_c / m)^2 ], m the total weight of S (each edge counted from both ends), e_c the
    weight of the entries within cluster c, d_c its nodes' total degree. Uses no labels: across the graph
    settings of a study on mnist_5k, digits and scikit-image's faces, the partition of highest modularity
    on its own graph was never less accurate than the `knn` graph's, and the best in 3 of 6
    (bench/label_free_results.md).

    Parameters
    ----------
    S : sparse matrix of shape (n, n)
        The symmetric non-negative graph.
    clusters : array_like of shape (n,), int
        The cluster of each node, >= 0.

    Returns
    -------
    float
        Q, in [-1/2, 1); 0 for one cluster, NaN for a graph without edges.
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    P = membership(clusters, int(clusters.max()) + 1)
    C = (P.T @ sp.csr_matrix(S, dtype=np.float64) @ P).toarray()  # the clusters' coarse graph
    total = float(C.sum())
    if total <= 0:
        return float("nan")
    return float(np.trace(C)) / total - float(((C.sum(axis=1) / total) ** 2).sum())


def data_key(X: np.ndarray) -> str:
    """A short tag of the samples' values and shape: what keys a graph in `cached_knn_graph` when no name is given.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)

    Returns
    -------
    str
        ``"<n_samples>x<n_features>-<16 hex digits of BLAKE2b>"`` of the float32 values.
    """
    X = np.ascontiguousarray(X, dtype=np.float32)
    return f"{X.shape[0]}x{X.shape[1]}-{hashlib.blake2b(X.data, digest_size=8).hexdigest()}"


def cached_knn_graph(X, fingerprint: str, cache_dir, **settings) -> sp.csr_matrix:
    """`knn_graph(X, **settings)`, saved to / loaded from `cache_dir` as a .npz file.

    The file name is keyed by the dataset `fingerprint`, the full settings (defaults filled
    in; the seed counts only with `pca`) and the construction's version, so another setting never
    reads a stale graph. Writes go to a temporary file then `os.replace`, so parallel
    jobs never read half a file (two may build the same graph; the last write wins).
    A cached file that cannot be read or is no valid graph (damaged on disk) is rebuilt
    and replaced, with a warning; a cache that cannot be written is a warning, not an error.

    Parameters
    ----------
    X : array_like of shape (n_samples, n_features)
        The samples, as for :func:`knn_graph`.
    fingerprint : str
        A non-empty tag of the dataset (e.g. ``Dataset.fingerprint``): the same tag must mean
        the same X.
    cache_dir : str or path-like
        The folder of the cached graphs; created when missing.
    **settings
        Arguments of :func:`knn_graph`: n_neighbors, weight, pca, seed, normalize.

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n_samples, n_samples), float32
        The graph, as :func:`knn_graph` builds it.

    Raises
    ------
    ValueError
        If `fingerprint` is empty or not a string, `settings` holds an unknown name, a cached
        graph under this key has another number of samples than X, or :func:`knn_graph`
        rejects its arguments.
    """
    path, full = _cache_path(fingerprint, cache_dir, settings)
    S = _read_cached(path, _load_graph, "graph")
    if S is None:
        S = knn_graph(X, **full)
        _write_cached(path, S, _save_graph, "graph")
    return _checked_size(S, X, fingerprint, path)


def cached_graph_and_index(X, fingerprint: str, cache_dir, **settings) -> tuple[sp.csr_matrix, NeighborIndex]:
    """`graph_and_index(X, **settings)`, cached as :func:`cached_knn_graph` caches the graph.

    With `pca`, the index (its PCA and the samples projected on it, 12.6 MB on all 63,000 MNIST
    images) is cached next to the graph, under the same key and scikit-learn's version, as a pickle
    (``.index-sklearn<version>.pkl``): a
    fit on a cached graph then skips its PCA (2.5 s of a 13 s DCD fit there). Without `pca` the
    index is the samples themselves and is made anew (no projection to save). A damaged index
    file is rebuilt with a warning, as a damaged graph is.

    Parameters, Raises
    ------------------
    As :func:`cached_knn_graph`.

    Returns
    -------
    (scipy.sparse.csr_matrix, NeighborIndex)
    """
    path, full = _cache_path(fingerprint, cache_dir, settings)
    # the pickled PCA is scikit-learn's: another version's would unpickle with a warning, or not at all
    index_path = path.with_name(f"{path.stem}.index-sklearn{sklearn.__version__}.pkl") if full["pca"] else None
    S = _read_cached(path, _load_graph, "graph")
    index = _read_cached(index_path, _load_index, "neighbour index") if index_path else None
    made = None  # an index made here (with `pca`, it is cached)
    if S is None:
        S, made = graph_and_index(X, **full)
        _write_cached(path, S, _save_graph, "graph")
    else:
        S = _checked_size(S, X, fingerprint, path)
        if index is None:
            made = NeighborIndex.fit(X, pca=full["pca"], seed=full["seed"], normalize=full["normalize"])
    if made is not None:
        index = made
        if index_path:
            _write_cached(index_path, index, _save_index, "neighbour index")
    if index.train.shape[0] != S.shape[0]:
        raise ValueError(f"fingerprint {fingerprint!r} names a cached neighbour index of {index.train.shape[0]} "
                         f"samples, but X has {S.shape[0]}: {index_path}")
    return S, index


def _cache_path(fingerprint, cache_dir, settings: dict) -> tuple[Path, dict]:
    """The cached graph's file for these settings, and the settings with their defaults filled in."""
    if not isinstance(fingerprint, str) or not fingerprint:
        raise ValueError(f"fingerprint must be a non-empty string, got {fingerprint!r}")
    allowed = {"n_neighbors": 10, "weight": "binary", "pca": None, "seed": 0, "normalize": False}
    unknown = set(settings) - set(allowed)
    if unknown:
        raise ValueError(f"settings must be among {', '.join(allowed)}, got {', '.join(sorted(unknown))}")
    full = {**allowed, **settings}
    key = {**full, "seed": full["seed"] if full["pca"] is not None else None,
           "fingerprint": fingerprint, "version": _CACHE_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=int).encode()).hexdigest()[:16]
    safe_fp = re.sub(r"[^A-Za-z0-9_.-]", "_", fingerprint)[:40]
    path = Path(cache_dir) / (f"knn-{safe_fp}-k{full['n_neighbors']}-{full['weight']}"
                              f"{'-unit' if full['normalize'] else ''}-pca{full['pca']}-{digest}.npz")
    return path, full


def _read_cached(path: Path, load, what: str):
    """What `load(path)` reads, or None when the file is missing or damaged (then with a warning)."""
    if not path.exists():
        return None
    try:
        return load(path)
    except Exception as err:  # noqa: BLE001 - whatever a damaged file raises (zip, zlib, numpy, pickle, OS errors)
        kind = type(err).__name__ if type(err).__module__ == "builtins" else \
            f"{type(err).__module__}.{type(err).__name__}"
        log.warning("%s cache %s is damaged (%s: %.200s); rebuilding it", what, path, kind,
                    (str(err).splitlines() or [""])[0])
        return None


def _write_cached(path: Path, value, save, what: str) -> None:
    try:
        save(value, path)
    except OSError as err:
        log.warning("%s cache %s cannot be written (%s); going on without caching it", what, path, err)


def _checked_size(S: sp.csr_matrix, X, fingerprint: str, path: Path) -> sp.csr_matrix:
    n = np.shape(X)[0]
    if S.shape != (n, n):
        raise ValueError(f"fingerprint {fingerprint!r} names a cached graph of {S.shape[0]} "
                         f"samples, but X has {n}: {path}")
    return S


def _load_index(path: Path) -> NeighborIndex:
    """A cached neighbour index, checked to be one; ValueError if not."""
    with open(path, "rb") as f:
        index = pickle.load(f)  # the project's own cache folder, written by `_save_index`
    if not isinstance(index, NeighborIndex) or index.projection is None or index.train.ndim != 2:
        raise ValueError(f"not a neighbour index on a projection but {type(index).__name__}")
    return index


def _save_index(index: NeighborIndex, path: Path) -> None:
    write_atomically(path, lambda f: pickle.dump(index, f, protocol=pickle.HIGHEST_PROTOCOL))


def _load_graph(path: Path) -> sp.csr_matrix:
    """A cached graph, checked to be one: square, finite, non-negative and symmetric; ValueError if not."""
    S = sp.load_npz(path).tocsr().astype(np.float32, copy=False)
    S.check_format(full_check=True)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"not a square matrix but {S.shape}")
    if S.nnz and (not np.isfinite(S.data).all() or S.data.min() < 0):
        raise ValueError("weights not finite and non-negative")
    if S.nnz and abs(S - S.T).max() > 1e-6 * abs(S).max():
        raise ValueError("not symmetric")
    return S


def _save_graph(S: sp.csr_matrix, path: Path) -> None:
    write_atomically(path, lambda f: sp.save_npz(f, S))
