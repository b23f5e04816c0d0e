"""k-nearest-neighbour graphs of the samples, for graph-aware NMF.

Cai, He, Han, Huang, "Graph Regularized Nonnegative Matrix Factorization for Data
Representation", IEEE TPAMI 33(8), 2011, build a p-nearest-neighbour graph with 0-1
or heat-kernel weights; Kuang, Ding, Park, "Symmetric Nonnegative Matrix
Factorization for Graph Clustering", SDM 2012, factor such a graph directly.

Distances are screened in float32 with BLAS, chunk by chunk of rows
(|x|^2 - 2 x.y + |y|^2, a partition for the k + 8 nearest), then those candidates of
each row are re-ranked by their exact float64 distance, so that float32 rounding
never decides who is a neighbour (the support then equals scikit-learn's
kneighbors_graph). No n x n dense matrix is ever formed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from numbers import Integral
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA

from ..params import Interval, Options, check

WEIGHTS = ("binary", "heat")
SEED = [Interval(Integral, 0, 2**32 - 1)]  # numpy's and scikit-learn's seeds
# The graph's settings, as a graph-aware method takes them (their data-dependent bounds are
# checked by the functions below, which know the data).
PARAMETERS = {
    "n_neighbors": [Interval(Integral, 1)],
    "weight": [Options(WEIGHTS)],
    "pca": [Interval(Integral, 1), None],
}
# Each float32 distance chunk stays near this size (its argpartition doubles it).
_CHUNK_BYTES = 64 * 2**20
# float32 screening keeps this many spare candidates for the exact float64 re-ranking.
_SPARE = 8
_CACHE_VERSION = 1  # bump when the graph construction changes

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


def _project(X_fit: np.ndarray, others: list[np.ndarray], pca: int | None, seed: int):
    """X_fit and `others` in the PCA space fitted on X_fit (randomized SVD, seeded), float32."""
    if pca is None:
        return X_fit, others
    model = PCA(n_components=pca, svd_solver="randomized", random_state=seed).fit(X_fit)
    proj = [np.ascontiguousarray(model.transform(Z), dtype=np.float32) for Z in [X_fit, *others]]
    return proj[0], proj[1:]


def _smallest(d: np.ndarray, m: int) -> np.ndarray:
    """Column indices of the m smallest entries of each row of d, ascending by index."""
    n_rows, n_cols = d.shape
    if m >= n_cols:
        return np.broadcast_to(np.arange(n_cols), (n_rows, n_cols))
    # a value partition and a mask run about twice as fast as argpartition
    thr = np.partition(d, m - 1, axis=1)[:, m - 1:m]
    rows, cols = np.nonzero(d <= thr)
    if len(cols) == n_rows * m:
        return cols.reshape(n_rows, m)
    # ties at the threshold give some rows extra entries: argpartition those rows
    counts = np.bincount(rows, minlength=n_rows)
    ok = counts[rows] == m
    out = np.empty((n_rows, m), dtype=np.int64)
    out[counts == m] = cols[ok].reshape(-1, m)
    tied = np.flatnonzero(counts != m)
    out[tied] = np.sort(np.argpartition(d[tied], m - 1, axis=1)[:, :m], axis=1)
    return out


def _knn(Q: np.ndarray, R: np.ndarray, k: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """Indices into R (n_q x k, nearest first) and squared distances (float64) of each row of Q.

    exclude_self: Q is R, and row i may not pick itself (a duplicate of it may).
    Exact ties in distance go to the lower index.
    """
    n_q, n_r = Q.shape[0], R.shape[0]
    r_sq = np.einsum("ij,ij->i", R, R)
    n_cand = min(k + _SPARE, n_r - exclude_self)
    rows = max(1, _CHUNK_BYTES // (4 * n_r))
    R64 = R.astype(np.float64)  # n x d float64 copy: gathers for the exact re-ranking
    idx = np.empty((n_q, k), dtype=np.int64)
    dist = np.empty((n_q, k), dtype=np.float64)
    for start in range(0, n_q, rows):
        stop = min(start + rows, n_q)
        # |q|^2 is constant along a row, so the ranking needs only |r|^2 - 2 q.r
        d = Q[start:stop] @ R.T
        d *= -2.0
        d += r_sq
        if exclude_self:
            d[np.arange(stop - start), np.arange(start, stop)] = np.inf
        cand = _smallest(d, n_cand)  # self, at +inf, is never among them
        diff = R64[cand] - Q[start:stop, None, :].astype(np.float64)
        exact = np.einsum("ijk,ijk->ij", diff, diff)
        order = np.argsort(exact, axis=1, kind="stable")[:, :k]
        idx[start:stop] = np.take_along_axis(cand, order, axis=1)
        dist[start:stop] = np.take_along_axis(exact, order, axis=1)
    return idx, dist


def knn_graph(X, n_neighbors: int = 10, weight: str = "binary", pca: int | None = None,
              seed: int = 0) -> sp.csr_matrix:
    """Symmetric k-nearest-neighbour graph of the rows of X, as a float32 CSR matrix.

    Each sample is joined to its `n_neighbors` nearest others (Euclidean, on a PCA
    projection to `pca` dimensions when given, randomized and seeded by `seed`); the
    directed graph A is made symmetric by S = max(A, A^T); the diagonal is zero, and
    nnz(S) <= 2 n k. This is the p-nearest-neighbour graph of Cai, He, Han, Huang (2011)
    for GNMF, and the graph SymNMF factors (Kuang, Ding, Park 2012).

    Parameters
    ----------
    X : array_like of shape (n_samples, n_features)
        The samples, n_samples >= 2, finite; used as float32.
    n_neighbors : int, default 10
        Neighbours per sample, in [1, n_samples - 1].
    weight : {"binary", "heat"}, default "binary"
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
    X = _check_X(X)
    n = X.shape[0]
    check("n_neighbors", n_neighbors, [Interval(Integral, 1, n - 1)])
    check("weight", weight, PARAMETERS["weight"])
    _check_pca(pca, X)
    check("seed", seed, SEED)

    Z, _ = _project(X, [], pca, seed)
    idx, d2 = _knn(Z, Z, n_neighbors, exclude_self=True)
    if weight == "binary":
        w = np.ones(d2.shape, dtype=np.float32)
    else:
        t = float(d2.mean()) or 1.0
        w = np.exp(-d2 / t).astype(np.float32)
    A = sp.csr_matrix((w.ravel(), idx.ravel(), np.arange(0, n * n_neighbors + 1, n_neighbors)),
                      shape=(n, n))
    S = A.maximum(A.T).tocsr()
    S.sort_indices()
    return S.astype(np.float32)


def nearest_train(X_train, X_test, n_neighbors: int = 10, pca: int | None = None,
                  seed: int = 0) -> np.ndarray:
    """Indices (n_test x n_neighbors, nearest first) of each test sample's nearest training samples.

    Same chunked search as `knn_graph`; with `pca`, the projection is fitted on
    X_train only (as the graph's is), then applied to both.

    Parameters
    ----------
    X_train : array_like of shape (n_train, n_features)
        The training samples, n_train >= 2, finite.
    X_test : array_like of shape (n_test, n_features)
        The samples to place, n_test >= 2, finite, with the features of X_train.
    n_neighbors : int, default 10
        Neighbours per test sample, in [1, n_train].
    pca : int or None, default None
        Search on a PCA projection (fitted on X_train) to this many dimensions; None for
        the raw features.
    seed : int, default 0
        The seed of the randomized PCA, in [0, 2**32 - 1].

    Returns
    -------
    ndarray of shape (n_test, n_neighbors), int64
        Row indices into X_train, nearest first; exact ties in distance go to the lower index.

    Raises
    ------
    ValueError
        If either array is not a finite 2-D array with at least 2 rows, their numbers of
        features differ, or another argument is out of its range.
    """
    X_train, X_test = _check_X(X_train, "X_train"), _check_X(X_test, "X_test")
    if X_test.shape[1] != X_train.shape[1]:
        raise ValueError(f"X_test must have {X_train.shape[1]} features like X_train, "
                         f"got {X_test.shape[1]}")
    check("n_neighbors", n_neighbors, [Interval(Integral, 1, X_train.shape[0])])
    _check_pca(pca, X_train)
    check("seed", seed, SEED)
    Z_train, (Z_test,) = _project(X_train, [X_test], pca, seed)
    return _knn(Z_test, Z_train, n_neighbors, exclude_self=False)[0]


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


def cached_knn_graph(X, fingerprint: str, cache_dir, **settings) -> sp.csr_matrix:
    """`knn_graph(X, **settings)`, saved to / loaded from `cache_dir` as a .npz file.

    The file name is keyed by the dataset `fingerprint` and the full settings
    (defaults filled in; the seed counts only with `pca`), so another setting never
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
        Arguments of :func:`knn_graph`: n_neighbors, weight, pca, seed.

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
    if not isinstance(fingerprint, str) or not fingerprint:
        raise ValueError(f"fingerprint must be a non-empty string, got {fingerprint!r}")
    allowed = {"n_neighbors": 10, "weight": "binary", "pca": None, "seed": 0}
    unknown = set(settings) - set(allowed)
    if unknown:
        raise ValueError(f"settings must be among {', '.join(allowed)}, got {', '.join(sorted(unknown))}")
    full = {**allowed, **settings}
    key = {**full, "seed": full["seed"] if full["pca"] is not None else None,
           "fingerprint": fingerprint, "version": _CACHE_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=int).encode()).hexdigest()[:16]
    safe_fp = re.sub(r"[^A-Za-z0-9_.-]", "_", fingerprint)[:40]
    cache_dir = Path(cache_dir)
    path = cache_dir / (f"knn-{safe_fp}-k{full['n_neighbors']}-{full['weight']}"
                        f"-pca{full['pca']}-{digest}.npz")
    n = np.shape(X)[0]
    if path.exists():
        try:
            S = _load_graph(path)
        except Exception as err:  # noqa: BLE001 - whatever a damaged file raises (zip, zlib, numpy, OS errors)
            kind = type(err).__name__ if type(err).__module__ == "builtins" else \
                f"{type(err).__module__}.{type(err).__name__}"
            log.warning("graph cache %s is damaged (%s: %.200s); rebuilding it", path, kind,
                        (str(err).splitlines() or [""])[0])
        else:
            if S.shape != (n, n):
                raise ValueError(f"fingerprint {fingerprint!r} names a cached graph of {S.shape[0]} "
                                 f"samples, but X has {n}: {path}")
            return S
    S = knn_graph(X, **full)
    try:
        _save_graph(S, path)
    except OSError as err:
        log.warning("graph cache %s cannot be written (%s); going on without caching it", path, err)
    return S


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            sp.save_npz(f, S)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
