"""Local search for the partition of a coarse graph's nodes into k groups with the lowest loss.

The multilevel starts of SymNMF, NMFR and DCD over-cluster the samples into m small sub-clusters
and then group those into k clusters by the method's own objective. For SymNMF and NMFR that
objective, at hard cluster indicators, is a sum over the groups of a function of two numbers per
group: its association a_c (the sum of the coarse graph over the pairs of its nodes) and its size
n_c. Moving one node changes only two groups, and the graph's links from that node to every group
(one row of C G, kept up to date) give the new associations of all k possible moves at once: a move
is priced in O(k) and applied in O(m), so that a search at k = 50 on 250 sub-clusters costs no more
than its sweeps.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

GroupLoss = Callable[[np.ndarray, np.ndarray], np.ndarray]


def membership(labels: np.ndarray, n_groups: int) -> sp.csr_matrix:
    """The indicator matrix P of a partition (n x n_groups, P[i, labels[i]] = 1): P^T A P is its coarse graph.

    Parameters
    ----------
    labels : ndarray of shape (n,), int
        The group of each sample, in [0, n_groups).
    n_groups : int

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n, n_groups), float64
    """
    n = len(labels)
    return sp.csr_matrix((np.ones(n), (np.arange(n), labels)), shape=(n, n_groups))


def search_partition(C: np.ndarray, size: np.ndarray, k: int, group_loss: GroupLoss, n_restarts: int,
                     seed: int = 0, max_sweeps: int = 100) -> tuple[np.ndarray, float]:
    """The grouping of the nodes of C into k non-empty groups with the lowest loss found by local search.

    The loss of a grouping is sum_c group_loss(a_c, n_c), with a_c the sum of C over the pairs of
    nodes in group c (each pair in both orders, and each node with itself) and n_c the sum of
    their sizes. Each restart starts from a random grouping (every group non-empty) and sweeps
    over the nodes in random order, moving each to the group that lowers the loss most (a node
    alone in its group stays), until a sweep moves none; the lowest final loss wins.

    Parameters
    ----------
    C : ndarray of shape (m, m)
        The symmetric coarse graph.
    size : ndarray of shape (m,)
        The nodes' sizes, positive.
    k : int
        Groups, at most m.
    group_loss : callable
        group_loss(a, n) -> the loss of groups of association a and size n, elementwise over
        arrays of the same shape (n > 0).
    n_restarts : int
        Random starts.
    seed : int, default 0
    max_sweeps : int, default 100
        Sweeps per restart at most.

    Returns
    -------
    (ndarray of shape (m,), float)
        The group of each node and the grouping's loss.
    """
    m = len(size)
    rng = np.random.default_rng(seed)
    diag = np.diag(C)
    best_g, best_f = None, np.inf
    for _ in range(n_restarts):
        g = rng.permutation(np.concatenate([np.arange(k), rng.integers(0, k, m - k)]))
        B = C @ np.eye(k)[g]  # C G: each node's links to each group
        a = np.bincount(g, weights=B[np.arange(m), g], minlength=k)
        n = np.bincount(g, weights=size, minlength=k)
        losses = group_loss(a, n)
        f = losses.sum()
        for _ in range(max_sweeps):
            moved = False
            for i in rng.permutation(m):
                p = g[i]
                if n[p] == size[i]:
                    continue  # alone in its group
                a_p, n_p = a[p] - 2.0 * B[i, p] + diag[i], n[p] - size[i]
                a_t, n_t = a + 2.0 * B[i] + diag[i], n + size[i]
                loss_p = group_loss(a_p, n_p)
                loss_t = group_loss(a_t, n_t)
                gain = losses - loss_t + losses[p] - loss_p
                gain[p] = 0.0
                t = int(np.argmax(gain))
                if gain[t] > 1e-12 * abs(f):
                    B[:, p] -= C[:, i]
                    B[:, t] += C[:, i]
                    a[p], n[p], a[t], n[t] = a_p, n_p, a_t[t], n_t[t]
                    losses[p], losses[t] = loss_p, loss_t[t]
                    g[i], f, moved = t, f - gain[t], True
            if not moved:
                break
        f = group_loss(a, n).sum()  # afresh: no drift from the updates
        if f < best_f:
            best_g, best_f = g.copy(), f
    return best_g, float(best_f)
