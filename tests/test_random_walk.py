"""NMFR and DCD (methods/random_walk.py; nmf/random_walk.py, nmf/dcd.py, nmf/multilevel.py): the sparse solve,
monotone updates, the exact coarse objective, the grouping search, seeds, and clustering quality on scikit-learn's
digits."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.metrics import normalized_mutual_info_score

from nmfstudy import config as settings
from nmfstudy.methods.random_walk import DCD, NMFR
from nmfstudy.nmf._common import RowBlocks
from nmfstudy.nmf.dcd import DCDGrouping, dcd, dcd_objective
from nmfstudy.nmf.graph import knn_graph
from nmfstudy.nmf.graph_nmf import normalize_graph
from nmfstudy.nmf.multilevel import Grouping, hard_loss, over_cluster, search_grouping, spectral_embedding
from nmfstudy.nmf.partition_search import search_partition
from nmfstudy.nmf.random_walk import RandomWalk, nmfr, nmfr_objective


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


@pytest.fixture(scope="module")
def small(digits):
    """300 digits, their 10-NN graph S and its normalization Q (float64)."""
    X, y = digits
    X, y = X[:300], y[:300]
    S = knn_graph(X, n_neighbors=10).astype(np.float64)
    return X, y, S, normalize_graph(S).astype(np.float64)


def nmfr_loss(lam):
    """NMFR's term of a cluster of association a and size n at its normalized indicator (as NMFR's start)."""
    return lambda a, n: (lam - a) / n


class _FromScratch(Grouping):
    """The sum of a per-group loss of association and size, every value computed afresh from the grouping."""

    def __init__(self, C, size, k, loss):
        self.C, self.size, self.k, self.loss = C, size, k, loss

    def value(self, g):
        G = np.eye(self.k)[g]
        a, n = np.einsum("ak,ab,bk->k", G, self.C, G), self.size @ G
        return float(self.loss(a, n).sum()) if (n > 0).all() else np.inf

    def moves(self, g, a):
        return np.array([self.value(np.where(np.arange(len(g)) == a, t, g)) for t in range(self.k)])


def dense_walk(Q, alpha):
    n = Q.shape[0]
    return (1 - alpha) * np.linalg.inv(np.eye(n) - alpha * Q.toarray())


@pytest.mark.parametrize("alpha", [0.5, 0.8, 0.95])
def test_the_random_walk_product_from_cg_matches_the_dense_inverse(small, alpha):
    _, _, _, Q = small
    B = np.random.default_rng(0).random((Q.shape[0], 4))
    walk = RandomWalk(Q, alpha, tol=1e-10)
    expected = dense_walk(Q, alpha) @ B
    np.testing.assert_allclose(walk(B), expected, rtol=1e-7, atol=1e-9)
    first = walk.n_products
    # warm-started from the last solution: a nearby right-hand side costs fewer products, same answer
    np.testing.assert_allclose(walk(B * 1.01), expected * 1.01, rtol=1e-7, atol=1e-9)
    assert walk.n_products - first < first


def test_the_random_walk_product_is_the_same_on_any_number_of_threads(small, monkeypatch):
    from nmfstudy.nmf import _common

    _, _, _, Q = small
    B = np.random.default_rng(1).random((Q.shape[0], 5))
    monkeypatch.setattr(_common, "ROWS_PER_BLOCK", 16)  # 19 blocks of CG's element-wise steps, on 3 threads
    with _common.own_threads():
        one, three = (RandomWalk(Q, 0.8, tol=1e-10, n_threads=n)(B) for n in (1, 3))
    assert np.array_equal(one, three)
    np.testing.assert_allclose(one, dense_walk(Q, 0.8) @ B, rtol=1e-7, atol=1e-9)


def test_row_blocks_multiply_on_several_threads_to_the_last_bit_of_one(small):
    _, _, S, Q = small
    rng = np.random.default_rng(2)
    uneven = sp.random(700, 300, density=0.03, format="csr", random_state=3)
    uneven = sp.vstack([uneven[:100] * 0, uneven]).tocsr()  # empty rows first: blocks cut by non-zeros, not rows
    for A in (Q, S.astype(np.float32), uneven):
        blocks = RowBlocks(A, n_threads=3, min_nnz=1)
        assert len(blocks.blocks) == 3 and [b[0] for b in blocks.blocks][0] == 0
        assert blocks.blocks[-1][1] == A.shape[0]
        for B in (rng.random((A.shape[1], 7)), rng.random(A.shape[1]), rng.random((A.shape[1], 2)).astype(np.float32)):
            product = blocks @ B
            assert product.dtype == (A @ B).dtype and np.array_equal(product, A @ B)
    # too few non-zeros for a second block: the matrix stays whole
    assert len(RowBlocks(Q, n_threads=4).blocks) == 1


def test_nmfr_objective_never_rises_and_is_what_it_says(small):
    _, _, S, Q = small
    W0 = np.random.default_rng(1).random((S.shape[0], 5))
    res = nmfr(Q, W0, alpha=0.8, lam=3.0, mu=10.0, max_iter=60, tol=0.0, cg_tol=1e-12)
    losses = np.concatenate([[res.start_loss], res.loss_history])
    assert res.n_iter == 60 and losses[-1] < 0.8 * losses[0]
    assert np.all(np.diff(losses) <= 1e-10 * abs(losses[0]))
    W, A = res.W, dense_walk(Q, 0.8)
    by_hand = (-np.trace(W.T @ A @ W) + 5.0 * np.sum((W.T @ W - np.eye(5)) ** 2)
               + 3.0 * np.sum(np.sum(W * W, axis=1) ** 2) + 5 * (1 + 0.05))
    assert nmfr_objective(W, A @ W, 3.0, 10.0) == pytest.approx(by_hand, rel=1e-10)
    assert res.loss == pytest.approx(by_hand, rel=1e-6) and res.loss >= 0


@pytest.mark.parametrize("prior", [1.0, 1.5])
def test_dcd_objective_never_rises_and_keeps_rows_stochastic(small, prior):
    _, _, S, _ = small
    W0 = np.random.default_rng(2).random((S.shape[0], 6))
    res = dcd(S, W0, prior=prior, max_iter=80, tol=0.0)
    losses = np.concatenate([[res.start_loss], res.loss_history])
    assert np.all(np.diff(losses) <= 1e-12 * losses[0]) and losses[-1] < losses[0]
    np.testing.assert_allclose(res.W.sum(axis=1), 1.0, rtol=1e-12)
    W = res.W
    A_hat = (W / W.sum(axis=0)) @ W.T
    dense = S.toarray()
    by_hand = -np.sum(dense[dense > 0] * np.log(A_hat[dense > 0])) - (prior - 1) * np.log(W).sum()
    assert res.loss == pytest.approx(by_hand, rel=1e-10) and res.loss >= 0


def test_dcd_objective_is_exact_over_several_blocks_of_pairs(digits):
    from nmfstudy.nmf.dcd import _Pairs

    X, _ = digits
    S = knn_graph(X, n_neighbors=10).astype(np.float64)
    assert S.nnz // 2 > 2 * _Pairs.BLOCK  # the pairs' products are computed a block at a time
    W = np.random.default_rng(3).random((S.shape[0], 7))
    W /= W.sum(axis=1, keepdims=True)
    A_hat = (W / W.sum(axis=0)) @ W.T
    rows, cols = S.nonzero()
    by_hand = -np.sum(S.data * np.log(A_hat[rows, cols])) - 0.5 * np.log(W).sum()
    assert dcd_objective(S, W, 1.5) == pytest.approx(by_hand, rel=1e-12)


def test_dcds_pair_products_ratios_and_products_are_the_same_on_any_number_of_threads(digits, monkeypatch):
    from nmfstudy.nmf import _common
    from nmfstudy.nmf.dcd import _dcd_loss, _Pairs

    X, _ = digits
    S = knn_graph(X, n_neighbors=10).astype(np.float64)
    S.sort_indices()
    W = np.random.default_rng(4).random((S.shape[0], 6))
    W /= W.sum(axis=1, keepdims=True)
    monkeypatch.setattr(_Pairs, "BLOCK", 128)  # enough blocks for several threads on 1,797 digits
    size = np.ones(S.shape[0])
    with _common.own_threads():  # BLAS on one thread, as in dcd(): its dot product's sum depends on its threads
        loss, ratio = _dcd_loss(S, _Pairs(S), W, 1.5, size)
        threaded_loss, threaded_ratio = _dcd_loss(S, _Pairs(S, n_threads=3), W, 1.5, size)
    assert threaded_loss == loss and np.array_equal(threaded_ratio, ratio)
    assert loss == pytest.approx(dcd_objective(S, W, 1.5), rel=1e-12)
    Z = sp.csr_matrix((ratio, S.indices, S.indptr), shape=S.shape)
    blocks = RowBlocks(S, n_threads=3, min_nnz=1)
    assert len(blocks.blocks) == 3 and np.array_equal(blocks.reweighted(ratio) @ W, Z @ W)


@pytest.mark.parametrize("prior", [1.0, 1.5])
def test_dcds_update_and_its_over_relaxed_step_are_the_same_on_any_number_of_threads(monkeypatch, prior):
    from nmfstudy.nmf import _common
    from nmfstudy.nmf import dcd as dcd_module

    rng = np.random.default_rng(5)
    W, ZW = rng.random((1797, 6)) + 0.01, rng.random((1797, 6))
    W /= W.sum(axis=1, keepdims=True)
    size = rng.integers(1, 4, 1797).astype(float)
    monkeypatch.setattr(_common, "ROWS_PER_BLOCK", 64)  # 29 blocks, shared out among 3 threads
    with _common.own_threads():
        step, threaded_step = (dcd_module._dcd_step(W, ZW, size, prior, n) for n in (1, 3))
        relaxed, threaded_relaxed = (dcd_module._relaxed(W, step, 2.5, n) for n in (1, 3))
    assert np.array_equal(threaded_step, step) and np.array_equal(threaded_relaxed, relaxed)
    # Yang & Oja's update, written over whole arrays
    s = size @ W
    grad_neg = 2 * ZW / s / size[:, None] + (prior - 1) / W
    grad_pos = (W * ZW).sum(axis=0) / s**2
    a, b = (W / grad_pos).sum(axis=1), (W * grad_neg / grad_pos).sum(axis=1)
    update = W * (grad_neg * a[:, None] + 1) / (np.outer(a, grad_pos) + b[:, None])
    np.testing.assert_allclose(step, update / update.sum(axis=1, keepdims=True), rtol=1e-12)
    over = W * (step / W) ** 2.5
    np.testing.assert_allclose(relaxed, over / over.sum(axis=1, keepdims=True), rtol=1e-12)


def test_dcds_exact_restarts_default_to_a_cost_budget_of_50_at_k_20():
    from nmfstudy.nmf.dcd import exact_restarts_for

    counts = {k: exact_restarts_for(k) for k in (2, 10, 20, 25, 30, 40, 50, 200)}
    assert counts == {2: 50, 10: 50, 20: 50, 25: 20, 30: 9, 40: 3, 50: 1, 200: 1}
    assert DCD().exact_restarts is None and DCD(exact_restarts=7).get_params()["exact_restarts"] == 7


def test_the_coarse_dcd_objective_is_exact_for_rows_constant_on_sub_clusters(small):
    _, _, S, Q = small
    sub = over_cluster(spectral_embedding(Q, 10), 25)
    P = sp.csr_matrix((np.ones(len(sub)), (np.arange(len(sub)), sub)), shape=(len(sub), 25))
    C, size = P.T @ S @ P, np.bincount(sub).astype(float)
    Wc = np.random.default_rng(3).random((25, 4))
    Wc /= Wc.sum(axis=1, keepdims=True)
    for prior in (1.0, 1.3):
        assert dcd_objective(C, Wc, prior, size) == pytest.approx(dcd_objective(S, Wc[sub], prior), rel=1e-12)
    # the coarse updates (rows tied within a sub-cluster) never raise it either, and stay exact
    res = dcd(C, Wc, prior=1.3, max_iter=40, tol=0.0, size=size)
    losses = np.concatenate([[res.start_loss], res.loss_history])
    assert np.all(np.diff(losses) <= 1e-12 * losses[0]) and losses[-1] < losses[0]
    assert res.loss == pytest.approx(dcd_objective(S, res.W[sub], 1.3), rel=1e-12)


def test_each_dcd_grouping_move_is_valued_as_the_moved_grouping(small):
    rng = np.random.default_rng(4)
    m, k = 12, 4
    C = rng.random((m, m))
    C = C + C.T
    size = rng.integers(5, 20, m).astype(float)
    W_sub = rng.random((m, m)) + np.eye(m) * 5
    W_sub /= W_sub.sum(axis=1, keepdims=True)
    g = rng.permutation(np.arange(m) % k)
    # (NMFR's and SymNMF's moves: test_moves_priced_in_o_k_take_the_search_where_prices_from_scratch_take_it)
    objective = DCDGrouping(C, size, W_sub, k, 1.2)
    # the grouping's value is the solver's coarse objective at W = W_sub G
    solver_value = dcd_objective(sp.csr_matrix(C), objective.grouped(g), 1.2, size)
    assert objective.value(g) == pytest.approx(solver_value, rel=1e-12)
    for a in range(m):
        values = objective.moves(g, a)
        for t in range(k):
            moved = g.copy()
            moved[a] = t
            assert values[t] == pytest.approx(objective.value(moved), rel=1e-12)


def _planted_blocks(m=20, k=4):
    """A coarse stochastic block model with unequal node sizes, and DCD's grouping objective on it."""
    truth = np.arange(m) % k
    size = np.arange(1, m + 1, dtype=float)
    C = np.outer(size, size) * np.where(truth[:, None] == truth[None, :], 1.0, 0.05)
    W_sub = np.full((m, m), 1e-3) + np.eye(m)
    W_sub /= W_sub.sum(axis=1, keepdims=True)
    return truth, size, C, DCDGrouping(C, size, W_sub, k, 1.0)


def test_the_grouping_search_finds_planted_groups():
    m, k = 20, 4
    truth, size, C, objective = _planted_blocks(m, k)
    g, f = search_grouping(objective, m, k, n_restarts=10, seed=0)
    assert normalized_mutual_info_score(truth, g) == 1.0 and f == pytest.approx(objective.value(g))
    g, f = search_partition(C, size, k, nmfr_loss(0.0), n_restarts=10, seed=0)
    from_scratch = _FromScratch(C, size, k, nmfr_loss(0.0)).value(g)
    assert normalized_mutual_info_score(truth, g) == 1.0 and f == pytest.approx(from_scratch)


def test_the_grouping_search_restarts_first_from_the_groupings_it_is_given():
    m, k = 20, 4
    truth, _, _, objective = _planted_blocks(m, k)
    start = (truth + 1) % k  # the planted blocks under other names: already a local minimum
    g, f = search_grouping(objective, m, k, n_restarts=1, seed=0, starts=(start,))
    np.testing.assert_array_equal(g, start)
    assert f == pytest.approx(objective.value(start)) and np.array_equal(start, (truth + 1) % k)
    # one random restart from the same seed ends elsewhere, higher
    g_random, f_random = search_grouping(objective, m, k, n_restarts=1, seed=0)
    assert f_random > f + 1e-9 * abs(f) and normalized_mutual_info_score(truth, g_random) < 1.0


def test_moves_priced_in_o_k_take_the_search_where_prices_from_scratch_take_it():
    """search_partition (each move priced from running sums) against the same search with every value recomputed."""
    rng = np.random.default_rng(7)
    m, k = 40, 6
    C = rng.random((m, m)) ** 4
    C = C + C.T
    size = rng.integers(1, 30, m).astype(float)
    for loss in (nmfr_loss(2.0), hard_loss):
        g, f = search_partition(C, size, k, loss, n_restarts=5, seed=3)
        g_ref, f_ref = search_grouping(_FromScratch(C, size, k, loss), m, k, n_restarts=5, seed=3)
        np.testing.assert_array_equal(g, g_ref)
        assert f == pytest.approx(f_ref, rel=1e-12) and len(np.unique(g)) == k


@pytest.mark.parametrize("cls", [NMFR, DCD])
def test_results_are_fixed_by_the_seed(small, cls):
    X = small[0]
    kwargs = dict(n_clusters=5, n_init=1, n_restarts=5, max_iter=30)
    a, b = cls(random_state=3, **kwargs).fit(X), cls(random_state=3, **kwargs).fit(X)
    np.testing.assert_array_equal(a.W_, b.W_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.loss_history_, b.loss_history_)
    other = cls(random_state=4, **kwargs).fit(X)
    assert not np.array_equal(other.W_, a.W_)


@pytest.mark.parametrize("name", ["nmfr", "dcd"])
def test_on_digits_both_beat_kmeans_nmi_with_their_config_defaults(digits, compose, name):
    X, y = digits
    cfg = compose(f"method={name}", "dataset=digits", "k=10")
    settings.check(cfg)
    model = settings.build_estimator(cfg, X)
    assert type(model) is {"nmfr": NMFR, "dcd": DCD}[name] and model.init == "random"
    model.fit(X)
    kmeans = KMeans(n_clusters=10, n_init=10, random_state=0).fit_predict(X)
    nmi, nmi_kmeans = normalized_mutual_info_score(y, model.labels_), normalized_mutual_info_score(y, kmeans)
    assert nmi > nmi_kmeans + 0.1, (nmi, nmi_kmeans)
    # the images are the factor-weighted means of the samples; labels from argmax of W
    W = model.W_ / model.W_.sum(axis=0)
    np.testing.assert_allclose(model.components_, W.T @ X, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(model.labels_, model.W_.argmax(axis=1))
    assert model.predict(X[:20]).shape == (20,) and model.loss_ == model.loss_history_[-1]


@pytest.mark.parametrize("key, value, message", [
    ("method.alpha", 1.0, r"^method.alpha must be in \[0.0, 1.0\), got 1.0$"),
    ("method.prior", 0.5, r"^method.prior must be in \[1.0, inf\], got 0.5$"),
])
def test_bad_settings_name_their_key(compose, key, value, message):
    name = key.split(".")[1] == "alpha" and "nmfr" or "dcd"
    with pytest.raises(settings.ConfigError, match=message):
        settings.check(compose(f"method={name}", f"{key}={value}"))
