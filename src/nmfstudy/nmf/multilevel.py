"""The multilevel starts of NMFR, DCD and SymNMF: over-cluster the samples, group the sub-clusters, lift.

The objectives of NMFR, DCD and SymNMF prefer the right partition of MNIST, but their
multiplicative updates only descend into the basin they start in, and the usual starts
(spectral clustering, random) lie in wrong basins: they split the 1s and merge 4 with 9. So
they start from a multilevel search (in the spirit of multilevel graph partitioning, e.g.
Dhillon, Guan, Kulis, "Weighted Graph Cuts without Eigenvectors: A Multilevel Approach",
IEEE TPAMI 29(11), 2007): over-cluster the samples into m = oversplit * k small, pure
sub-clusters; group the sub-clusters into k clusters by the method's own objective, evaluated
exactly on the coarse graph P^T S P (or P^T A P), with many random restarts of a local search
(each sub-cluster moved to the group that lowers the objective most, until none does); lift
the best grouping to the samples and refine it with the method's updates. No labels are used
anywhere.

There are two of them, measured apart and kept apart (changing either changes the results):

- NMFR and DCD (:func:`multilevel_fit`): k-means (3 starts, all rows) of the normalized
  spectral embedding of the graph (Ng, Jordan, Weiss, NIPS 2001; :func:`spectral_embedding`,
  ARPACK), the grouping by NMFR's objective (:func:`nmfstudy.nmf.random_walk.nmfr_start`) or
  DCD's (:func:`nmfstudy.nmf.dcd.dcd_start`, :func:`search_grouping`); with `n_init` > 1 this is
  repeated from other over-clusterings, each refined, and the lowest refined objective wins.
- SymNMF (:func:`multilevel_starts`): k-means (one start, fitted on a sample of rows) of a
  smooth embedding (:func:`smooth_embedding`, subspace iteration, cheaper than ARPACK on
  MNIST), the grouping by SymNMF's loss at best-scaled hard indicators (:func:`hard_loss`),
  the partition refined by :func:`~nmfstudy.nmf.graph_nmf.partition_start`; the starts are
  screened by :func:`~nmfstudy.nmf.graph_nmf.symnmf`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla

from ._common import Callback, FitResult, RowBlocks, own_threads
from .graph_nmf import normalize_graph, numbered_on, partition_start
from .partition_search import membership, search_partition

__all__ = ["Grouping", "hard_loss", "lift", "multilevel_fit", "multilevel_start", "multilevel_starts", "over_cluster",
           "ratio_association_loss", "search_grouping", "smooth_embedding", "spectral_embedding"]

_MIN_SUBCLUSTER = 10  # samples per sub-cluster, on average, below which the start skips the grouping
_KMEANS_SAMPLE = 300  # rows per sub-cluster that fit the over-clustering's k-means,
_KMEANS_ROWS = 20_000  # and at most this many (k = 50 would otherwise fit on all 60,000)

# A method's start (S, Q, sub-clusters, their number, seed) -> W0, and its refinement (S, Q, W0, callback) -> result.
Start = Callable[[sp.csr_matrix, sp.csr_matrix, np.ndarray, int, int], np.ndarray]
Refine = Callable[[sp.csr_matrix, sp.csr_matrix, np.ndarray, "Callback | None"], FitResult]


# --------------------------------------------------------------------------- NMFR and DCD


def spectral_embedding(Q, n_vectors: int, seed: int = 0) -> np.ndarray:
    """The leading eigenvectors of Q (n x n_vectors), rows scaled to unit length (Ng, Jordan, Weiss 2001).

    Parameters
    ----------
    Q : sparse matrix (n x n)
        The normalized graph.
    n_vectors : int
        How many eigenvectors (at most n - 1).
    seed : int
        Seeds ARPACK's start vector (the eigenvectors are then fixed by it).

    Returns
    -------
    ndarray of shape (n, n_vectors)
    """
    n = Q.shape[0]
    n_vectors = min(n_vectors, n - 1)
    Q = sp.csr_matrix(Q, dtype=np.float64)
    if n < 500:
        vectors = np.linalg.eigh(Q.toarray())[1][:, ::-1][:, :n_vectors]
    else:
        v0 = np.random.default_rng(seed).random(n)
        # Q + I is positive semi-definite: its largest eigenvalues are Q's, and ARPACK finds them fast
        _, vectors = sla.eigsh(Q + sp.identity(n, format="csr"), k=n_vectors, which="LA", v0=v0, tol=1e-6)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def over_cluster(U: np.ndarray, n_sub: int, seed: int = 0, n_init: int = 3, rows: int | None = None) -> np.ndarray:
    """K-means (seeded) of the embedding's rows into `n_sub` sub-clusters, numbered 0..n_sub-1.

    Parameters
    ----------
    U : ndarray of shape (n, d)
        The spectral embedding.
    n_sub : int
        The number of sub-clusters.
    seed : int
    n_init : int, default 3
        K-means starts.
    rows : int or None, default None
        Fit k-means on this many seeded rows (then every row takes its nearest centre); None: all.

    Returns
    -------
    ndarray of shape (n,)
    """
    from sklearn.cluster import KMeans

    U = U.astype(np.float32)
    km = KMeans(n_clusters=n_sub, n_init=n_init, random_state=seed)
    if rows is None or rows >= len(U):
        labels = km.fit_predict(U)
    else:
        sample = np.sort(np.random.default_rng(seed).choice(len(U), max(rows, n_sub), replace=False))
        labels = km.fit(U[sample]).predict(U)
    return np.unique(labels, return_inverse=True)[1]  # an empty sub-cluster leaves no gap


class Grouping:
    """The objective of a grouping g (coarse node -> one of k groups), with every single move's value."""

    def value(self, g: np.ndarray) -> float:
        raise NotImplementedError

    def moves(self, g: np.ndarray, a: int) -> np.ndarray:
        """The objective after moving node a to each group (its own group: the current value)."""
        raise NotImplementedError


def search_grouping(objective: Grouping, n_nodes: int, k: int, n_restarts: int, seed: int = 0,
                    max_sweeps: int = 100, starts: tuple[np.ndarray, ...] = ()) -> tuple[np.ndarray, float]:
    """The lowest-objective grouping of `n_nodes` coarse nodes into k non-empty groups found by local search.

    Each restart starts from one of `starts`, then from random groupings (every group non-empty),
    and sweeps over the nodes in random order, moving each to the group that lowers the objective
    most (a node that is alone in its group stays), until a sweep moves none.

    Parameters
    ----------
    objective : Grouping
        The coarse objective.
    n_nodes, k : int
        Coarse nodes and groups (k <= n_nodes).
    n_restarts : int
        Restarts in all (the given starts first, then random ones); the lowest final objective wins.
    seed : int
    max_sweeps : int
        Sweeps per restart at most.
    starts : tuple of ndarray of shape (n_nodes,), default ()
        Groupings to start from before the random ones (each group non-empty; not changed).

    Returns
    -------
    (ndarray of shape (n_nodes,), float)
        The grouping and its objective.
    """
    rng = np.random.default_rng(seed)
    best_g, best_f = None, np.inf
    for restart in range(n_restarts):
        if restart < len(starts):
            g = np.array(starts[restart], dtype=np.int64)
        else:
            g = rng.permutation(np.concatenate([np.arange(k), rng.integers(0, k, n_nodes - k)]))
        f = objective.value(g)
        for _ in range(max_sweeps):
            moved = False
            for a in rng.permutation(n_nodes):
                if np.count_nonzero(g == g[a]) == 1:
                    continue
                values = objective.moves(g, a)
                t = int(np.argmin(values))
                if values[t] < f - 1e-12 * abs(f):
                    g[a], f, moved = t, float(values[t]), True
            if not moved:
                break
        if f < best_f:
            best_g, best_f = g.copy(), f
    return best_g, best_f


def ratio_association_loss(a: np.ndarray, n: np.ndarray) -> np.ndarray:
    """-a / n: a cluster's term of the ratio association, for :func:`search_partition`."""
    return -a / n


def lift(g: np.ndarray, sub: np.ndarray, k: int, floor: float = 0.05) -> np.ndarray:
    """Samples' start rows from a grouping of their sub-clusters: 1 on the group, `floor` elsewhere."""
    W = np.full((len(sub), k), floor)
    W[np.arange(len(sub)), g[sub]] = 1.0
    return W


def multilevel_fit(S, k: int, start: Start, refine: Refine, *, n_init: int, oversplit: int, n_vectors: int,
                   seed: int, embedding: str = "arpack", kmeans_n_init: int = 3, kmeans_rows: int | None = None,
                   callback: Callback | None = None) -> FitResult:
    """The multilevel search of NMFR and DCD: over-cluster, start from the best grouping, refine; `n_init` times.

    Parameters
    ----------
    S : sparse matrix (n x n), float64
        The symmetric non-negative graph of the samples.
    k : int
        The number of clusters.
    start : callable
        ``start(S, Q, sub, n_sub, seed)``: the method's start (n x k) from the sub-clusters `sub`
        (numbered 0..n_sub-1, n_sub > k), Q the normalized graph, float64
        (:func:`~nmfstudy.nmf.random_walk.nmfr_start`, :func:`~nmfstudy.nmf.dcd.dcd_start`).
        With k or fewer sub-clusters each is a cluster (:func:`lift`).
    refine : callable
        ``refine(S, Q, W0, callback)``: the method's solver from W0 calling `callback` after each
        iteration, a :class:`~nmfstudy.nmf.FitResult`.
    n_init : int
        Over-clusterings tried (seeds seed, seed + 1, ...), each grouped and refined; the lowest
        final objective wins. A run that the callback stopped ends the search.
    oversplit : int
        Sub-clusters per cluster: oversplit * k (at most n).
    n_vectors : int
        Eigenvectors in the spectral embedding that is over-clustered (at least k are used).
    seed : int
        Seeds the embedding, the over-clusterings and the starts.
    embedding : {"arpack", "smooth"}, default "arpack"
        The embedding: the leading eigenvectors by ARPACK (:func:`spectral_embedding`), or the
        subspace iteration of SymNMF's start (:func:`smooth_embedding`, a few times cheaper).
    kmeans_n_init, kmeans_rows : int, int or None
        The over-clustering's k-means starts and the rows it is fitted on (:func:`over_cluster`).
    callback : callable, optional
        ``callback(iteration, loss, elapsed_s)`` after every iteration of every refinement, the
        iterations numbered on across them (:func:`~nmfstudy.nmf.graph_nmf.numbered_on`), so that a
        reporter never sees a step twice; True stops.

    Returns
    -------
    FitResult
        The refinement of lowest final objective; ``stopped_by_callback`` set when the callback stopped a run.
    """
    callback = numbered_on(callback)
    Q = normalize_graph(S).astype(np.float64)
    if embedding == "smooth":
        U = smooth_embedding(Q, max(n_vectors, k), seed=seed)
    else:
        U = spectral_embedding(Q, max(n_vectors, k), seed)
    best = None
    for run in range(n_init):
        sub = over_cluster(U, min(oversplit * k, S.shape[0]), seed + run, kmeans_n_init, kmeans_rows)
        n_sub = int(sub.max()) + 1
        W0 = start(S, Q, sub, n_sub, seed + run) if n_sub > k else lift(np.arange(n_sub), sub, k)
        result = refine(S, Q, W0, callback)
        if best is None or result.loss < best.loss:
            best = result
        if result.stopped_by_callback:
            best.stopped_by_callback = True
            break
    return best


# --------------------------------------------------------------------------- SymNMF


def smooth_embedding(A, n_vectors: int, n_steps: int = 40, seed: int = 0) -> np.ndarray:
    """Rows of a smooth basis of the graph: `n_steps` of subspace iteration with (I + A) / 2, row-normalized.

    Each step multiplies a block of `n_vectors` seeded Gaussian columns by (I + A) / 2 (its
    eigenvalues (1 + lambda) / 2 lie in [0, 1] for a normalized graph A); every fifth step
    re-orthonormalizes the block. After 40 steps the components along eigenvalues of A below
    0.5 have shrunk by 0.75^40 ~ 1e-5, while those near 1 (the clusters) remain: the block
    spans about the leading eigenvectors, as the spectral embedding of Ng, Jordan, Weiss (NIPS
    2001), without the many Lanczos steps that the close eigenvalues near 1 take to be resolved
    one by one (on full MNIST ~1.5 s instead of ~13 s).

    Parameters
    ----------
    A : scipy.sparse matrix of shape (n, n)
        The normalized graph D^-1/2 S D^-1/2.
    n_vectors : int
        Columns of the embedding (at most n).
    n_steps : int, default 40
        Multiplications by (I + A) / 2.
    seed : int, default 0
        Seeds the starting block.

    Returns
    -------
    ndarray of shape (n, n_vectors), float64
        Rows of unit length (a zero row stays zero).
    """
    n = A.shape[0]
    V = np.random.default_rng(seed).standard_normal((n, min(n_vectors, n))).astype(np.float32)
    with own_threads() as n_threads:
        A = RowBlocks(sp.csr_matrix(A, dtype=np.float32), n_threads)
        for step in range(n_steps):
            V += A @ V
            V *= np.float32(0.5)
            if step % 5 == 4 or step == n_steps - 1:
                # Cholesky QR: five steps leave the block well conditioned, and a tall-skinny LAPACK QR
                # costs ~1 s here on two busy cores (its threads wait on each other), this ~10 ms
                gram = V.T.astype(np.float64) @ V.astype(np.float64)
                L = np.linalg.cholesky(gram + 1e-12 * np.trace(gram) * np.eye(len(gram)))
                V = (V @ np.linalg.inv(L).T.astype(np.float32)).astype(np.float32)
    norms = np.linalg.norm(V, axis=1, keepdims=True)
    return (V / np.where(norms > 0, norms, 1.0)).astype(np.float64)


def hard_loss(a: np.ndarray, n: np.ndarray) -> np.ndarray:
    """SymNMF's loss of clusters of association a and size n at their best-scaled indicators, less ||A||^2.

    For a partition the loss is -sum_c (a_c / n_c)^2 (:func:`nmfstudy.nmf.graph_nmf.partition_start`);
    this gives each cluster's term, for :func:`nmfstudy.nmf.partition_search.search_partition`.

    Parameters
    ----------
    a, n : ndarray
        The clusters' associations (sums of A over their pairs) and sizes.

    Returns
    -------
    ndarray
        -(a / n)^2, elementwise.
    """
    return -((a / n) ** 2)


def multilevel_start(A, U: np.ndarray, k: int, oversplit: int, n_restarts: int, seed: int) -> np.ndarray:
    """A SymNMF start from a partition found on a coarse graph (see :func:`multilevel_starts`).

    Parameters
    ----------
    A : scipy.sparse matrix of shape (n, n)
        The normalized graph.
    U : ndarray of shape (n, d)
        The embedding that is over-clustered (:func:`smooth_embedding`).
    k : int
        The number of clusters.
    oversplit : int
        Sub-clusters per cluster (oversplit * k, at most n / 10; with k or fewer, the start is the
        k-means partition of U).
    n_restarts : int
        Random restarts of the grouping search.
    seed : int
        Seeds the over-clustering (k-means, one start, fitted on a sample of 300 rows per
        sub-cluster, 20,000 at most) and the search.

    Returns
    -------
    ndarray of shape (n, k), float32
        The start (:func:`nmfstudy.nmf.graph_nmf.partition_start` of the best grouping).
    """
    from sklearn.cluster import KMeans

    n = A.shape[0]
    # sub-clusters of fewer than ~10 samples would make the coarse problem as hard as the fine one:
    # on so few samples the start is the k-means partition of the embedding itself
    n_sub = min(oversplit * k, n // _MIN_SUBCLUSTER)
    U = U.astype(np.float32)
    if n_sub <= k:
        labels = KMeans(n_clusters=min(k, n), n_init=1, random_state=seed).fit_predict(U)
        return partition_start(A, labels, k)
    # k-means fitted on a seeded sample of rows: as good an over-clustering on MNIST at k=10 as
    # on all rows, at a third of the cost; then every row takes its nearest centre
    rows = np.random.default_rng(seed).choice(n, min(n, _KMEANS_SAMPLE * n_sub, _KMEANS_ROWS), replace=False)
    km = KMeans(n_clusters=n_sub, n_init=1, random_state=seed).fit(U[np.sort(rows)]).predict(U)
    sub = np.unique(km, return_inverse=True)[1]  # an empty sub-cluster leaves no gap
    n_sub = int(sub.max()) + 1
    P = membership(sub, n_sub)
    CA = (P.T @ (sp.csr_matrix(A, dtype=np.float64) @ P)).toarray()
    size = np.bincount(sub, minlength=n_sub).astype(np.float64)
    g, _ = search_partition((CA + CA.T) / 2, size, k, hard_loss, n_restarts, seed)
    return partition_start(A, g[sub], k)


def multilevel_starts(S, k: int, *, n_starts: int, oversplit: int, n_vectors: int, n_restarts: int,
                      seed: int) -> list[np.ndarray]:
    """SymNMF's multilevel starts (see :class:`nmfstudy.methods.SymNMF`), seeds seed, seed + 1, ...

    Parameters
    ----------
    S : scipy.sparse matrix of shape (n, n)
        The symmetric non-negative graph of the samples.
    k : int
        The number of clusters.
    n_starts : int
        How many starts.
    oversplit, n_restarts
        As :func:`multilevel_start`.
    n_vectors : int
        Columns of the smooth embedding (at least k are used; one embedding, seeded by `seed`, for all starts).
    seed : int
        Seeds the embedding; start i is :func:`multilevel_start`'s with seed + i.

    Returns
    -------
    list of ndarray of shape (n, k), float32
    """
    A = normalize_graph(S)
    U = smooth_embedding(A, max(n_vectors, k), seed=seed)
    return [multilevel_start(A, U, k, oversplit, n_restarts, seed + run) for run in range(n_starts)]
