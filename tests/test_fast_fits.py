"""Issue 26's fast fits of NMFR and DCD (nmf/_common.py, nmf/random_walk.py, nmf/dcd.py): the stopping rule on the
clusters, the over-relaxed monotone steps, the cheaper multilevel start."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits

from nmfstudy.methods.random_walk import DCD, NMFR
from nmfstudy.nmf._common import LabelStability, Relaxation
from nmfstudy.nmf.dcd import dcd
from nmfstudy.nmf.graph import knn_graph
from nmfstudy.nmf.graph_nmf import normalize_graph
from nmfstudy.nmf.multilevel import lift, over_cluster
from nmfstudy.nmf.random_walk import nmfr


@pytest.fixture(scope="module")
def small():
    """300 digits, their labels, their 10-NN graph S and its normalization Q (float64)."""
    X, y = load_digits(return_X_y=True)
    X, y = (X[:300] / 16.0).astype(np.float32), y[:300]
    S = knn_graph(X, n_neighbors=10).astype(np.float64)
    return X, y, S, normalize_graph(S).astype(np.float64)


def labels_as_factor(labels, k=3):
    W = np.full((len(labels), k), 0.1)
    W[np.arange(len(labels)), labels] = 1.0
    return W


def test_the_label_rule_stops_window_iterations_after_the_last_change():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 1000)
    rule = LabelStability(tol=1e-3, window=4, guard=np.inf)
    assert not rule.settled(labels_as_factor(labels), 1.0)
    stops = []
    for it in range(1, 21):
        if it <= 7:  # two samples change cluster in each of the first 7 iterations
            labels = labels.copy()
            labels[rng.choice(1000, 2, replace=False)] += 1
            labels %= 3
        stops.append(rule.settled(labels_as_factor(labels), 1.0))
    assert stops.index(True) + 1 == 11  # iterations 8-11 changed nothing: 0 < 1e-3 * 1000


def test_the_label_rule_counts_every_change_so_an_oscillation_never_settles():
    labels = np.zeros(1000, dtype=int)
    rule = LabelStability(tol=1e-2, window=5, guard=np.inf)
    settled = []
    for it in range(30):
        labels[:3] = it % 2  # three samples flip back and forth: 15 changes per window >= 10
        settled.append(rule.settled(labels_as_factor(labels), 1.0))
    assert not any(settled)


def test_the_label_rule_waits_while_the_objective_still_falls():
    labels = np.zeros(100, dtype=int)
    rule = LabelStability(tol=0.01, window=3, guard=1e-3)
    falling = [rule.settled(labels_as_factor(labels), 10.0 * 0.9 ** it) for it in range(10)]
    assert not any(falling)  # the clusters stand still while the objective falls by 10% an iteration
    assert [rule.settled(labels_as_factor(labels), 1.0) for _ in range(4)] == [False, False, False, True]


@pytest.mark.parametrize("solver", ["nmfr", "dcd"])
def test_the_label_rule_stops_a_refinement_once_its_clusters_stand(small, solver):
    X, _, S, Q = small
    # a start as the multilevel search gives one: a partition lifted to soft rows (k-means of the pixels here)
    W0 = lift(np.arange(5), KMeans(5, n_init=1, random_state=0).fit_predict(X), 5)
    fit = (lambda **kw: nmfr(Q, W0, alpha=0.8, lam=12.0, mu=10.0, tol=0.0, **kw)) if solver == "nmfr" else \
          (lambda **kw: dcd(S, W0, tol=0.0, **kw))
    early = fit(max_iter=400, label_tol=0.01, label_window=5)
    assert 5 < early.n_iter < 400  # NMFR 155, DCD 13 iterations
    # it stopped where the clusters had stood still: 5 more iterations move fewer than 0.01 n
    assert np.count_nonzero(fit(max_iter=early.n_iter + 5).labels != early.labels) < 0.01 * len(W0)
    # and the cap's 400 iterations end within a few per cent of it (NMFR: 15 of 300 samples, DCD: none)
    assert np.count_nonzero(fit(max_iter=400).labels != early.labels) <= 0.06 * len(W0)


@pytest.mark.parametrize("solver", ["nmfr", "dcd"])
def test_over_relaxed_steps_never_raise_the_objective_and_descend_faster(small, solver):
    _, _, S, Q = small
    W0 = np.random.default_rng(2).random((S.shape[0], 5)) + 0.01
    fit = (lambda **kw: nmfr(Q, W0, alpha=0.8, lam=3.0, mu=10.0, tol=0.0, cg_tol=1e-12, max_iter=60, **kw)) \
        if solver == "nmfr" else (lambda **kw: dcd(S, W0, tol=0.0, max_iter=60, **kw))
    plain, relaxed = fit(), fit(max_exponent=16.0)
    losses = np.concatenate([[relaxed.start_loss], relaxed.loss_history])
    assert np.all(np.diff(losses) <= 1e-10 * abs(losses[0]))
    assert relaxed.loss < plain.loss
    assert fit(max_exponent=1.0).loss == plain.loss  # 1: the plain update, bit for bit


def test_a_rejected_step_resets_the_exponent():
    relax = Relaxation(8.0)
    assert relax.accept(True) and relax.exponent == 2.0
    assert relax.accept(True) and relax.accept(True) and relax.exponent == 8.0
    assert not relax.accept(False) and relax.exponent == 1.0 and relax.rejected == 1
    assert relax.accept(False)  # the plain step always stands


def test_descend_keeps_a_relaxed_step_that_lowers_the_objective_else_takes_the_plain_one():
    relax, seen = Relaxation(8.0), []

    def evaluate(x):
        seen.append(x)
        return (x - 3.0) ** 2, "extra"

    def step(e):  # the candidate 1 * 2^e: 2 (loss 1), 4 (loss 1), 16 (loss 169) for e = 1, 2, 4
        return 2.0 ** e

    assert relax.descend(step, evaluate, 9.0) == (2.0, (1.0, "extra")) and seen == [2.0]
    assert relax.descend(step, evaluate, 9.0) == (4.0, (1.0, "extra")) and relax.exponent == 4.0
    seen.clear()
    assert relax.descend(step, evaluate, 1.0) == (2.0, (1.0, "extra")) and seen == [16.0, 2.0]
    assert relax.exponent == 1.0 and relax.rejected == 1


def test_the_over_clustering_on_a_sample_of_rows_gives_every_row_a_sub_cluster():
    U = np.random.default_rng(3).random((2000, 4))
    sub = over_cluster(U, 20, seed=0, n_init=1, rows=500)
    assert sub.shape == (2000,) and set(np.unique(sub)) == set(range(sub.max() + 1)) and sub.max() >= 15
    np.testing.assert_array_equal(sub, over_cluster(U, 20, seed=0, n_init=1, rows=500))


@pytest.mark.parametrize("cls", [NMFR, DCD])
def test_the_old_and_new_starts_both_cluster_the_digits(small, cls):
    X, y = small[0], small[1]
    from sklearn.metrics import normalized_mutual_info_score
    for kw in (dict(embedding="arpack", kmeans_n_init=3, kmeans_rows=None, max_exponent=1.0, label_tol=0.0),
               dict(embedding="smooth", kmeans_n_init=1, kmeans_rows=100, max_exponent=64.0, label_tol=1e-3)):
        fast = {"exact_restarts": 2} if cls is DCD else {}  # DCD's exact search is what costs on 300 samples
        model = cls(n_clusters=10, random_state=0, n_init=1, n_restarts=10, **fast, **kw).fit(X)
        assert normalized_mutual_info_score(y, model.labels_) > 0.7, kw
