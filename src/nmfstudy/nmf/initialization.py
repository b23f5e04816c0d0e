"""Starting points for NMF factors and K-means centroids.

NMF starts come from scikit-learn's own initializer so that our solvers and the
scikit-learn anchor start from the very same W and H: a comparison of solvers is
only fair from equal starts. It is a private function, so it is wrapped here once.
"""
from __future__ import annotations

import numpy as np
from sklearn.decomposition._nmf import _initialize_nmf

from ..params import Options, check

NMF_INITS = ("random", "nndsvd", "nndsvda", "nndsvdar")
# SVD-based starts: they need k <= min(n_samples, n_features)
SVD_INITS = ("nndsvd", "nndsvda", "nndsvdar")
KMEANS_INITS = ("kmeans++", "random", "data", "gaussian")


def nmf_init(X: np.ndarray, k: int, init: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """W (n_samples x k) and H (k x n_features), float32, as scikit-learn's NMF would start.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        The data, non-negative.
    k : int
        The number of components; the SVD-based starts need k <= min(n_samples, n_features).
    init : {"random", "nndsvd", "nndsvda", "nndsvdar"}
        scikit-learn's initialisation: scaled random draws, or NNDSVD (Boutsidis & Gallopoulos
        2008) with zeros kept, filled with the mean of X, or filled with small random values.
        Multiplicative updates cannot leave the zeros of "nndsvd".
    seed : int
        scikit-learn's random_state: it seeds the random draws and the randomized SVD of the
        NNDSVD starts.

    Returns
    -------
    W : ndarray of shape (n_samples, k), float32
        The starting coefficients.
    H : ndarray of shape (k, n_features), float32
        The starting basis.

    Raises
    ------
    ValueError
        If init is not one of ``NMF_INITS`` (an `InvalidParameterError`), or scikit-learn
        rejects the data or k (e.g. a negative X, or k too large for an SVD-based start).
    """
    check("init", init, [Options(NMF_INITS)])
    W, H = _initialize_nmf(X, k, init=init, random_state=seed)
    return W.astype(np.float32, copy=False), H.astype(np.float32, copy=False)


def kmeans_init(X: np.ndarray, k: int, init: str, seed: int) -> str | np.ndarray:
    """What scikit-learn's KMeans takes as `init`: its own name, or a k x n_features array.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        The data.
    k : int
        The number of centroids.
    init : {"kmeans++", "random", "data", "gaussian"}
        The kind of start:

        - kmeans++: scikit-learn's k-means++ seeding.
        - data: k distinct samples drawn at random (scikit-learn calls this 'random').
        - random: uniform draws inside each pixel's observed [min, max] range.
        - gaussian: normal draws with each pixel's mean and standard deviation, clipped at 0.
    seed : int
        The seed of the "random" and "gaussian" draws (the other two are seeded by KMeans'
        own ``random_state``).

    Returns
    -------
    str or ndarray of shape (k, n_features)
        "k-means++" or "random" for scikit-learn to draw; otherwise the centroids, in X's dtype.

    Raises
    ------
    InvalidParameterError
        If init is not one of ``KMEANS_INITS`` (a ValueError).
    """
    check("init", init, [Options(KMEANS_INITS)])
    if init == "kmeans++":
        return "k-means++"
    if init == "data":
        return "random"
    rng = np.random.default_rng(seed)
    if init == "random":
        lo, hi = X.min(axis=0), X.max(axis=0)
        centers = lo + rng.random((k, X.shape[1]), dtype=np.float32) * (hi - lo)
    else:
        mean, std = X.mean(axis=0), X.std(axis=0)
        centers = np.maximum(mean + std * rng.standard_normal((k, X.shape[1]), dtype=np.float32), 0)
    return centers.astype(X.dtype, copy=False)
