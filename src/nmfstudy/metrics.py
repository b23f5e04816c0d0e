"""Clustering scores: plain functions of labels, arrays and factors."""
from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm

log = logging.getLogger(__name__)

# Every metric a run logs (what `evaluate` returns), by name: the names `objective` may use.
LABEL_METRICS = ("accuracy", "hungarian_accuracy", "nmi", "ari", "test_accuracy")  # need the true labels
# Metrics where smaller is better (the others: larger is better).
SMALLER_IS_BETTER = frozenset({"loss", "j_clust", "fit_time_s", "n_iter"})
RUN_METRICS = ("loss", "j_clust", "fit_time_s", "n_iter", "n_clusters_used", "n_live_components", "silhouette")
BASIS_METRICS = ("sparsity_W", "sparsity_H")  # only factorizations with basis images (W and H)
GRAPH_METRICS = ("modularity",)  # only the methods on a kNN graph: the clusters' modularity on it
# A component whose contribution ||w_j|| ||h_j|| is below this share of ||X||_F counts as dead:
# multiplicative updates shrink a dying component towards zero without ever reaching it.
DEAD_RTOL = 1e-6


def metric_names(has_basis: bool, has_labels: bool = True, has_graph: bool = False) -> tuple[str, ...]:
    """The names of the metrics `evaluate` returns for a method with (or without) basis images.

    Parameters
    ----------
    has_basis : bool
        Whether the method has basis images (W and H), which adds ``BASIS_METRICS``.
    has_labels : bool, default True
        Whether true labels are known, which adds ``LABEL_METRICS``.
    has_graph : bool, default False
        Whether the method is fitted on a kNN graph, which adds ``GRAPH_METRICS``.

    Returns
    -------
    tuple of str
        The metric names, label metrics first, then ``RUN_METRICS``, then the basis and graph metrics.
    """
    return ((LABEL_METRICS if has_labels else ()) + RUN_METRICS + (BASIS_METRICS if has_basis else ())
            + (GRAPH_METRICS if has_graph else ()))


def live_components(model, X: np.ndarray | None = None, rtol: float = DEAD_RTOL) -> np.ndarray:
    """Which of the k components are alive (a boolean mask).

    A factorization's component j is alive when it contributes to X ~ W H, ||w_j|| ||h_j|| above
    `rtol` ||X||_F (above 0 without X); a method without a basis has one component per cluster,
    alive when some sample is in it and its image's norm is above 0. An empty cluster counts as
    dead whatever its image: DCD's and NMFR's images are W-weighted means over every sample, so
    they stay non-zero when every sample sits in one cluster.

    Parameters
    ----------
    model : ClusteringEstimator
        A fitted method (see :class:`nmfstudy.methods.ClusteringEstimator`): its `components_`,
        and `W_` when `has_basis`, else `labels_`.
    X : ndarray of shape (n_samples, n_features), optional
        The training data, the scale of the threshold; without it any non-zero contribution counts.
    rtol : float, default DEAD_RTOL
        The threshold relative to ||X||_F: multiplicative updates shrink a dying component
        towards zero without ever reaching it, so an exact zero test would miss it.

    Returns
    -------
    ndarray of shape (k,), bool
        True for the live components.
    """
    def norms(M, axis):  # accumulated in float64 without a float64 copy of M
        M = np.asarray(M)
        return np.sqrt(np.einsum("ij,ij->j" if axis == 0 else "ij,ij->i", M, M, dtype=np.float64))

    if not model.has_basis:
        used = np.bincount(np.asarray(model.labels_), minlength=len(model.components_)) > 0
        return (norms(model.components_, 1) > 0) & used
    size = norms(model.W_, 0) * norms(model.components_, 1)
    floor = 0.0 if X is None else rtol * float(np.sqrt(sum(
        np.einsum("ij,ij->", block, block, dtype=np.float64) for block in np.array_split(X, max(1, len(X) // 8192)))))
    return size > floor


def contingency(y_true: np.ndarray, clusters: np.ndarray, n_clusters: int) -> np.ndarray:
    """Counts of (cluster, true label): shape n_clusters x n_labels (labels 0..max).

    Parameters
    ----------
    y_true : ndarray of shape (n_samples,), int
        The true labels, >= 0.
    clusters : ndarray of shape (n_samples,), int
        The clusters, in [0, n_clusters).
    n_clusters : int
        The number of clusters (rows of the table; empty clusters get zero rows).

    Returns
    -------
    ndarray of shape (n_clusters, max(y_true) + 1), int64
        ``table[c, y]`` is the number of samples of label y in cluster c.
    """
    n_labels = int(y_true.max()) + 1
    table = np.zeros((n_clusters, n_labels), dtype=np.int64)
    np.add.at(table, (clusters, y_true), 1)
    return table


def majority_mapping(y_true: np.ndarray, clusters: np.ndarray, n_clusters: int) -> np.ndarray:
    """The most frequent true label of each cluster (label 0 for an empty cluster).

    Parameters
    ----------
    y_true : ndarray of shape (n_samples,), int
        The true labels, as in :func:`contingency`.
    clusters : ndarray of shape (n_samples,), int
        The clusters, as in :func:`contingency`.
    n_clusters : int
        The number of clusters.

    Returns
    -------
    ndarray of shape (n_clusters,), int
        The label each cluster predicts; a tie goes to the lower label.
    """
    return contingency(y_true, clusters, n_clusters).argmax(axis=1)


def majority_accuracy(y_true: np.ndarray, clusters: np.ndarray, n_clusters: int) -> float:
    """Accuracy when every cluster predicts its most frequent label; works for any k.

    Several clusters may predict the same label (unlike :func:`hungarian_accuracy`), so the
    score tends to grow with the number of clusters.

    Parameters
    ----------
    y_true : ndarray of shape (n_samples,), int
        The true labels, as in :func:`contingency`.
    clusters : ndarray of shape (n_samples,), int
        The clusters, as in :func:`contingency`.
    n_clusters : int
        The number of clusters.

    Returns
    -------
    float
        The share of samples whose cluster's majority label is their own, in [0, 1].
    """
    mapping = majority_mapping(y_true, clusters, n_clusters)
    return float(np.mean(mapping[clusters] == y_true))


def hungarian_accuracy(y_true: np.ndarray, clusters: np.ndarray, n_clusters: int) -> float:
    """Accuracy under the best one-to-one matching of clusters to labels (Kuhn-Munkres).

    The matching maximises the matched counts of the contingency table, by the Hungarian
    algorithm (Kuhn 1955; Munkres 1957) of :func:`scipy.optimize.linear_sum_assignment`.
    With more clusters than labels, the unmatched clusters count as wrong.

    Parameters
    ----------
    y_true : ndarray of shape (n_samples,), int
        The true labels, as in :func:`contingency`.
    clusters : ndarray of shape (n_samples,), int
        The clusters, as in :func:`contingency`.
    n_clusters : int
        The number of clusters.

    Returns
    -------
    float
        The share of samples in a cluster matched to their label, in [0, 1].
    """
    table = contingency(y_true, clusters, n_clusters)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(y_true))


def hoyer_sparseness(M: np.ndarray, axis: int) -> np.ndarray:
    """Hoyer's (2004) sparseness of each vector along `axis`: 0 for flat, 1 for one non-zero.

    (sqrt(n) - |x|_1 / |x|_2) / (sqrt(n) - 1); an all-zero vector counts as 0.

    Parameters
    ----------
    M : array_like, 2-D
        The vectors; used as float64. Their length n along `axis` should be >= 2 (the
        measure divides by sqrt(n) - 1).
    axis : int
        The axis the vectors run along: 0 for the columns of W, 1 for the rows of H.

    Returns
    -------
    ndarray
        The sparseness of each vector, in [0, 1].
    """
    M = np.asarray(M, dtype=np.float64)
    n = M.shape[axis]
    l1 = np.abs(M).sum(axis=axis)
    l2 = np.sqrt((M * M).sum(axis=axis))
    ratio = np.divide(l1, l2, out=np.full_like(l1, np.sqrt(n)), where=l2 > 0)
    return (np.sqrt(n) - ratio) / (np.sqrt(n) - 1)


def mean_residual_norm(X: np.ndarray, approximation, chunk: int = 8192) -> float:
    """Mean over samples of ||x_i - approximation(x_i)||, in chunks to bound memory.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        The samples.
    approximation : callable
        Called as ``approximation(start, block)`` with a block of rows of X starting at row
        `start`; returns their approximations, an array of the block's shape.
    chunk : int, default 8192
        Rows per block.

    Returns
    -------
    float
        The mean Euclidean norm of the residual rows.
    """
    total = 0.0
    for start in range(0, len(X), chunk):
        block = X[start : start + chunk]
        total += float(np.linalg.norm(block - approximation(start, block), axis=1).sum())
    return total / len(X)


def silhouette(X: np.ndarray, clusters: np.ndarray, sample_size: int = 2000, seed: int = 0) -> float:
    """Silhouette score on a seeded sample of `sample_size` samples.

    The sample is the one scikit-learn's ``silhouette_score(sample_size=..., random_state=seed)``
    draws.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        The samples.
    clusters : ndarray of shape (n_samples,)
        The cluster of each sample.
    sample_size : int, default 2000
        The number of samples scored (all of them when there are fewer).
    seed : int, default 0
        The seed of the sample.

    Returns
    -------
    float
        The mean silhouette, in [-1, 1]; NaN when the sample holds a single cluster or every
        sample is its own cluster, where it is not defined.
    """
    picks = np.random.RandomState(seed).permutation(len(X))[:sample_size]
    n_found = len(np.unique(clusters[picks]))
    if not 1 < n_found < len(picks):
        return float("nan")
    return float(skm.silhouette_score(X[picks], clusters[picks]))


def label_scores(model, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray | None) -> dict[str, float]:
    """The scores of a fitted method that need the true labels: ``LABEL_METRICS``.

    Parameters
    ----------
    model : ClusteringEstimator
        A fitted method: its `k`, `labels_` and `predict`.
    y_train : ndarray of shape (n_train,), int
        The true labels of the training samples, >= 0.
    X_test : ndarray of shape (n_test, n_features)
        The held-out samples.
    y_test : ndarray of shape (n_test,), int, or None
        Their true labels; None leaves out "test_accuracy".

    Returns
    -------
    dict of str to float
        "accuracy", "hungarian_accuracy", "nmi", "ari" and "test_accuracy", as :func:`evaluate` describes.
    """
    k, clusters = model.k, model.labels_
    scores = {
        "accuracy": majority_accuracy(y_train, clusters, k),
        "hungarian_accuracy": hungarian_accuracy(y_train, clusters, k),
        "nmi": float(skm.normalized_mutual_info_score(y_train, clusters)),
        "ari": float(skm.adjusted_rand_score(y_train, clusters)),
    }
    if y_test is not None:
        mapping = majority_mapping(y_train, clusters, k)
        scores["test_accuracy"] = float(np.mean(mapping[model.predict(X_test)] == y_test))
    return scores


def degenerate_fit(k: int, n_live: int, n_clusters_used: int, n_same: int = 0) -> str | None:
    """What makes a fit degenerate, in the words every method shares, or None for a healthy one.

    Parameters
    ----------
    k : int
        The number of components (clusters) asked for.
    n_live : int
        The live ones (:func:`live_components`).
    n_clusters_used : int
        The clusters holding at least one training sample.
    n_same : int, default 0
        The number of training samples when they are all the same image (0 otherwise): a graph
        method still splits them, by the order of its neighbour ties, into clusters that mean nothing.

    Returns
    -------
    str or None
        One line naming the metrics ``n_live_components`` and ``n_clusters_used``; None when every
        component lives, for k > 1 more than one cluster is used and the samples differ.
    """
    one_cluster = k > 1 and n_clusters_used <= 1
    if n_live == k and not one_cluster and not n_same:
        return None
    said = []
    if n_live < k:
        said.append(f"{k - n_live} of {k} components died (all-zero factors or an empty cluster; "
                    f"n_live_components={n_live})")
    if one_cluster:
        said.append(f"every sample is in one cluster (n_clusters_used={n_clusters_used})")
    if n_same:
        said.append(f"the {n_same} training samples are all the same image" + ("" if one_cluster else
                    f", so their split into n_clusters_used={n_clusters_used} clusters is arbitrary"))
    verdict = ("a degenerate fit" if one_cluster or n_live <= 1 or n_same
               else f"the {n_live} live one{'s' * (n_live > 1)}")
    return f"{'; '.join(said)}: the scores are those of {verdict}"


def warn_degenerate(k: int, n_live: int, n_clusters_used: int, n_same: int = 0) -> None:
    """Log :func:`degenerate_fit`'s line as a warning when the fit is degenerate."""
    line = degenerate_fit(k, n_live, n_clusters_used, n_same)
    if line is not None:
        log.warning("%s", line)


def evaluate(
    model,
    X_train: np.ndarray,
    y_train: np.ndarray | None,
    X_test: np.ndarray,
    y_test: np.ndarray | None,
    *,
    silhouette_size: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Every score of a fitted method (see `methods`): the metrics a run logs, by name.

    Logs one warning, in the same words for every method (:func:`degenerate_fit`), when
    components died (see :func:`live_components`), every sample is in one cluster or the
    training samples are all the same image: the scores are then those of a degenerate fit.

    Parameters
    ----------
    model : ClusteringEstimator
        A method fitted on X_train (see :class:`nmfstudy.methods.ClusteringEstimator`).
    X_train : ndarray of shape (n_train, n_features)
        The training samples.
    y_train : ndarray of shape (n_train,), int, or None
        Their true labels, >= 0; None when unknown, which leaves out ``LABEL_METRICS``.
    X_test : ndarray of shape (n_test, n_features)
        The held-out samples.
    y_test : ndarray of shape (n_test,), int, or None
        Their true labels; None leaves out "test_accuracy".
    silhouette_size : int, default 2000
        The sample size of :func:`silhouette`.
    seed : int, default 0
        The seed of that sample.

    Returns
    -------
    dict of str to float
        The names of :func:`metric_names` and their scores: with labels, "accuracy"
        (:func:`majority_accuracy`), "hungarian_accuracy" (Kuhn-Munkres matching), "nmi"
        (normalized mutual information, Strehl & Ghosh 2002, scikit-learn's arithmetic-mean
        normalisation), "ari" (adjusted Rand index), "test_accuracy" (the test samples'
        clusters mapped by the training majority labels), the run's "loss", "fit_time_s",
        "n_iter", "n_clusters_used", "n_live_components", "silhouette", "j_clust" (the mean
        residual norm against W H or the cluster centres) and, with basis images, the mean
        Hoyer sparseness of the columns of W ("sparsity_W") and rows of H ("sparsity_H"); with a
        kNN graph, the clusters' modularity on it ("modularity", the model's `modularity_`).
    """
    k = model.k
    clusters = model.labels_
    scores = label_scores(model, y_train, X_test, y_test) if y_train is not None else {}
    scores.update({
        "loss": model.loss_,
        "fit_time_s": model.fit_time_s_,
        "n_iter": float(model.n_iter_),
        "n_clusters_used": float(len(np.unique(clusters))),
    })
    scores["silhouette"] = silhouette(X_train, clusters, silhouette_size, seed)
    if model.has_graph:
        scores["modularity"] = float(model.modularity_)
    live = live_components(model, X_train)
    scores["n_live_components"] = float(live.sum())
    # ptp: one pass over X without a copy of it
    same = k > 1 and len(X_train) > 1 and float(np.ptp(X_train, axis=0).max()) == 0.0
    warn_degenerate(k, int(live.sum()), int(scores["n_clusters_used"]), len(X_train) if same else 0)
    if model.has_basis:
        W, H = model.W_, model.components_
        scores["j_clust"] = mean_residual_norm(X_train, lambda start, block: W[start : start + len(block)] @ H)
        scores["sparsity_W"] = float(hoyer_sparseness(W, axis=0).mean())
        scores["sparsity_H"] = float(hoyer_sparseness(H, axis=1).mean())
    else:
        centers = model.components_
        scores["j_clust"] = mean_residual_norm(X_train,
                                               lambda start, block: centers[clusters[start : start + len(block)]])
    return scores
