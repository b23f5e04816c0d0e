"""Clustering scores: plain functions of labels, arrays and factors."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm


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
