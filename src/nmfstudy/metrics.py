"""Clustering scores: plain functions of labels, arrays and factors."""
from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm

log = logging.getLogger(__name__)

# Every metric a run logs (what `evaluate` returns), by name: the names `objective` may use.
LABEL_METRICS = ("accuracy", "hungarian_accuracy", "nmi", "ari", "test_accuracy")  # need the true labels
RUN_METRICS = ("loss", "j_clust", "fit_time_s", "n_iter", "n_clusters_used", "n_live_components", "silhouette")
BASIS_METRICS = ("sparsity_W", "sparsity_H")  # only factorizations with basis images (W and H)
# A component whose contribution ||w_j|| ||h_j|| is below this share of ||X||_F counts as dead:
# multiplicative updates shrink a dying component towards zero without ever reaching it.
DEAD_RTOL = 1e-6


def metric_names(has_basis: bool, has_labels: bool = True) -> tuple[str, ...]:
    """The names of the metrics `evaluate` returns for a method with (or without) basis images."""
    return ((LABEL_METRICS if has_labels else ()) + RUN_METRICS + (BASIS_METRICS if has_basis else ()))


def live_components(model, X: np.ndarray | None = None, rtol: float = DEAD_RTOL) -> np.ndarray:
    """Which of the k components are alive (a boolean mask).

    A factorization's component j is alive when it contributes to X ~ W H, ||w_j|| ||h_j|| above
    `rtol` ||X||_F (above 0 without X); a centroid or cluster image when its norm is above 0 (an
    empty SymNMF cluster has none).
    """
    def norms(M, axis):  # accumulated in float64 without a float64 copy of M
        M = np.asarray(M)
        return np.sqrt(np.einsum("ij,ij->j" if axis == 0 else "ij,ij->i", M, M, dtype=np.float64))

    if not model.has_basis:
        return norms(model.components_, 1) > 0
    size = norms(model.W_, 0) * norms(model.components_, 1)
    floor = 0.0 if X is None else rtol * float(np.sqrt(sum(
        np.einsum("ij,ij->", block, block, dtype=np.float64) for block in np.array_split(X, max(1, len(X) // 8192)))))
    return size > floor


def contingency(y_true: np.ndarray, clusters: np.ndarray, n_clusters: int) -> np.ndarray:
    """Counts of (cluster, true label): shape n_clusters x n_labels (labels 0..max)."""
    n_labels = int(y_true.max()) + 1
    table = np.zeros((n_clusters, n_labels), dtype=np.int64)
    np.add.at(table, (clusters, y_true), 1)
    return table


def majority_mapping(y_true: np.ndarray, clusters: np.ndarray, n_clusters: int) -> np.ndarray:
    """The most frequent true label of each cluster (label 0 for an empty cluster)."""
    return contingency(y_true, clusters, n_clusters).argmax(axis=1)


def majority_accuracy(y_true: np.ndarray, clusters: np.ndarray, n_clusters: int) -> float:
    """Accuracy when every cluster predicts its most frequent label; works for any k."""
    mapping = majority_mapping(y_true, clusters, n_clusters)
    return float(np.mean(mapping[clusters] == y_true))


def hungarian_accuracy(y_true: np.ndarray, clusters: np.ndarray, n_clusters: int) -> float:
    """Accuracy under the best one-to-one matching of clusters to labels (Kuhn-Munkres).

    With more clusters than labels, the unmatched clusters count as wrong.
    """
    table = contingency(y_true, clusters, n_clusters)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(y_true))


def hoyer_sparseness(M: np.ndarray, axis: int) -> np.ndarray:
    """Hoyer's (2004) sparseness of each vector along `axis`: 0 for flat, 1 for one non-zero.

    (sqrt(n) - |x|_1 / |x|_2) / (sqrt(n) - 1); an all-zero vector counts as 0.
    """
    M = np.asarray(M, dtype=np.float64)
    n = M.shape[axis]
    l1 = np.abs(M).sum(axis=axis)
    l2 = np.sqrt((M * M).sum(axis=axis))
    ratio = np.divide(l1, l2, out=np.full_like(l1, np.sqrt(n)), where=l2 > 0)
    return (np.sqrt(n) - ratio) / (np.sqrt(n) - 1)


def mean_residual_norm(X: np.ndarray, approximation, chunk: int = 8192) -> float:
    """Mean over samples of ||x_i - approximation(x_i)||, in chunks to bound memory."""
    total = 0.0
    for start in range(0, len(X), chunk):
        block = X[start : start + chunk]
        total += float(np.linalg.norm(block - approximation(start, block), axis=1).sum())
    return total / len(X)


def silhouette(X: np.ndarray, clusters: np.ndarray, sample_size: int = 2000, seed: int = 0) -> float:
    """Silhouette on a seeded sample of `sample_size` samples (the sample scikit-learn's
    `silhouette_score(sample_size=..., random_state=seed)` draws); NaN when the sample holds a
    single cluster or every sample is its own cluster, where it is not defined."""
    picks = np.random.RandomState(seed).permutation(len(X))[:sample_size]
    n_found = len(np.unique(clusters[picks]))
    if not 1 < n_found < len(picks):
        return float("nan")
    return float(skm.silhouette_score(X[picks], clusters[picks]))


def evaluate(
    model,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    silhouette_size: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Every score of a fitted method (see `methods`): the metrics a run logs, by name."""
    k = model.k
    clusters = model.labels_
    mapping = majority_mapping(y_train, clusters, k)
    test_clusters = model.predict(X_test)
    scores = {
        "accuracy": majority_accuracy(y_train, clusters, k),
        "hungarian_accuracy": hungarian_accuracy(y_train, clusters, k),
        "nmi": float(skm.normalized_mutual_info_score(y_train, clusters)),
        "ari": float(skm.adjusted_rand_score(y_train, clusters)),
        "test_accuracy": float(np.mean(mapping[test_clusters] == y_test)),
        "loss": model.loss_,
        "fit_time_s": model.fit_time_s_,
        "n_iter": float(model.n_iter_),
        "n_clusters_used": float(len(np.unique(clusters))),
    }
    scores["silhouette"] = silhouette(X_train, clusters, silhouette_size, seed)
    live = live_components(model, X_train)
    scores["n_live_components"] = float(live.sum())
    if not live.all():
        n_live = int(live.sum())
        log.warning("%d of %d components died (all-zero factors or an empty cluster; n_live_components=%d): %s",
                    k - n_live, k, n_live, "the scores are those of a degenerate fit" if n_live == 0
                    else f"the scores are those of the {n_live} live one{'s' * (n_live > 1)}")
    if model.has_basis:
        W, H = model.W_, model.components_
        scores["j_clust"] = mean_residual_norm(X_train, lambda start, block: W[start : start + len(block)] @ H)
        scores["sparsity_W"] = float(hoyer_sparseness(W, axis=0).mean())
        scores["sparsity_H"] = float(hoyer_sparseness(H, axis=1).mean())
    else:
        centers = model.components_
        scores["j_clust"] = mean_residual_norm(X_train, lambda start, block: centers[clusters[start : start + len(block)]])
    return scores
