import numpy as np
import pytest

from nmfstudy.metrics import contingency, hoyer_sparseness, hungarian_accuracy, majority_accuracy


def test_majority_vote_allows_many_clusters_per_label_hungarian_does_not():
    y = np.array([0, 0, 1, 1, 2, 2])
    clusters = np.array([0, 1, 2, 3, 4, 5])  # every sample its own cluster
    assert majority_accuracy(y, clusters, 6) == 1.0
    assert hungarian_accuracy(y, clusters, 6) == pytest.approx(3 / 6)


def test_hungarian_finds_the_best_one_to_one_matching():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    clusters = np.array([2, 2, 1, 0, 0, 1, 1, 2])  # 2->0 (2), 0->1 (2), 1->2 (2): 6 of 8
    assert hungarian_accuracy(y, clusters, 3) == pytest.approx(6 / 8)
    assert majority_accuracy(y, clusters, 3) == pytest.approx(6 / 8)
    assert contingency(y, clusters, 3).sum() == 8


def test_hoyer_sparseness_is_zero_when_flat_and_one_with_one_nonzero():
    M = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(hoyer_sparseness(M, axis=1), [0.0, 1.0, 0.0])
    x = np.array([[1.0, 2.0, 0.0, 0.0]])
    expected = (2 - 3 / np.sqrt(5)) / (2 - 1)
    np.testing.assert_allclose(hoyer_sparseness(x, axis=1), [expected])


# --- dead components and single clusters: a degenerate fit scores, it does not crash --------------

import logging  # noqa: E402

from nmfstudy.data import load_dataset  # noqa: E402
from nmfstudy.methods.gnmf import GNMF  # noqa: E402
from nmfstudy.methods.kmeans import KMeansClustering  # noqa: E402
from nmfstudy.methods.nmf import NMFClustering  # noqa: E402
from nmfstudy.methods.symnmf import SymNMF  # noqa: E402
from nmfstudy.metrics import degenerate_fit, evaluate, live_components, metric_names, silhouette  # noqa: E402


@pytest.fixture(scope="module")
def mnist300():
    return load_dataset("mnist_5k", n_samples=300)


STRONG_L1 = dict(alpha_W=0.1, alpha_H=0.01, l1_ratio=1.0)  # inside the nmf_sparse preset's search space


@pytest.mark.parametrize("solver, assign", [("hals", "argmax"), ("hals", "kmeans"), ("mu", "argmax"),
                                            ("sklearn-cd", "argmax"), ("sklearn-mu", "kmeans")])
def test_a_fit_whose_components_all_die_scores_poorly_and_says_so(mnist300, caplog, solver, assign):
    data = mnist300
    model = NMFClustering(10, solver=solver, assign=assign, max_iter=30, **STRONG_L1).fit(data.X_train)
    with caplog.at_level(logging.WARNING, logger="nmfstudy"):
        scores = evaluate(model, data.X_train, data.y_train, data.X_test, data.y_test)
    assert sorted(scores) == sorted(metric_names(has_basis=True))
    assert scores["n_live_components"] <= 1 and scores["n_clusters_used"] == 1
    assert scores["accuracy"] == pytest.approx(0.1) and 0 <= scores["test_accuracy"] <= 0.15
    assert np.isnan(scores["silhouette"]) and scores["nmi"] == pytest.approx(0.0, abs=1e-9)
    (record,) = [r for r in caplog.records if "components died" in r.getMessage()]
    assert record.levelname == "WARNING" and record.getMessage().startswith(
        f"{10 - int(scores['n_live_components'])} of 10")
    # the galleries' inputs: reconstructions of held-out samples, basis images
    assert model.reconstruct(data.X_test[:5]).shape == (5, 784)


def test_coefficients_skip_dead_components_and_are_zero_when_all_died(mnist300):
    X = mnist300.X_train
    model = NMFClustering(4, max_iter=20).fit(X)
    model.components_[1] = 0.0
    W = model.coefficients(X[:20])
    assert W.shape == (20, 4) and (W[:, 1] == 0).all() and W[:, [0, 2, 3]].any()
    model.components_[:] = 0.0
    assert (model.coefficients(X[:20]) == 0).all() and (model.predict(X[:20]) == 0).all()


def test_live_components_counts_what_still_contributes():
    class Fake:
        has_basis = True
        W_ = np.array([[1.0, 0.0, 1e-20], [2.0, 0.0, 1e-20]])
        components_ = np.array([[1.0, 1.0], [3.0, 0.0], [1.0, 1.0]])

    X = np.ones((2, 2))
    np.testing.assert_array_equal(live_components(Fake(), X), [True, False, False])  # the third underflows
    np.testing.assert_array_equal(live_components(Fake()), [True, False, True])  # without X: non-zero only

    class Centroids:
        has_basis = False
        components_ = np.array([[0.0, 0.0], [0.5, 0.0], [0.2, 0.1]])  # an empty SymNMF cluster has a zero image
        labels_ = np.array([0, 1, 1])

    np.testing.assert_array_equal(live_components(Centroids()), [False, True, False])  # DCD's empty ones do not

    class Means(Centroids):
        labels_ = np.array([2, 2, 2])  # every sample in one cluster: the other images are weighted means, non-zero

    np.testing.assert_array_equal(live_components(Means()), [False, False, True])


@pytest.mark.parametrize("counts, line", [
    ((10, 10, 4), None),
    ((1, 1, 1), None),  # k=1: one cluster is what was asked
    ((10, 7, 7), "3 of 10 components died (all-zero factors or an empty cluster; n_live_components=7): "
                 "the scores are those of the 7 live ones"),
    ((10, 1, 1), "9 of 10 components died (all-zero factors or an empty cluster; n_live_components=1); "
                 "every sample is in one cluster (n_clusters_used=1): the scores are those of a degenerate fit"),
    ((10, 10, 1), "every sample is in one cluster (n_clusters_used=1): the scores are those of a degenerate fit"),
    ((3, 3, 3, 16), "the 16 training samples are all the same image, so their split into n_clusters_used=3 "
                    "clusters is arbitrary: the scores are those of a degenerate fit"),
])
def test_a_degenerate_fit_is_told_in_one_line_naming_its_metrics(counts, line):
    assert degenerate_fit(*counts) == line


def test_silhouette_is_nan_when_its_sample_holds_one_cluster():
    X = np.random.default_rng(0).random((4000, 3))
    clusters = np.zeros(4000, dtype=np.int64)
    clusters[7] = 1  # two clusters, but a 2000-sample draw may miss the lone member
    picks = np.random.RandomState(0).permutation(4000)[:2000]
    assert 7 not in picks  # this seed's draw misses it: scikit-learn would raise
    assert np.isnan(silhouette(X, clusters, 2000, seed=0))
    assert np.isnan(silhouette(X[:5], np.arange(5)))  # every sample its own cluster
    from sklearn.metrics import silhouette_score

    two = (X[:, 0] > 0.5).astype(np.int64)
    assert silhouette(X, two, 2000, seed=3) == pytest.approx(silhouette_score(X, two, sample_size=2000, random_state=3))


@pytest.mark.parametrize("model", [
    KMeansClustering(1, n_init=1, max_iter=5), NMFClustering(1, max_iter=5),
    SymNMF(1, max_iter=5, n_neighbors=5), GNMF(1, max_iter=5, n_neighbors=5),
    SymNMF(150, max_iter=5, n_neighbors=5),  # many empty clusters
], ids=["kmeans k=1", "nmf k=1", "symnmf k=1", "gnmf k=1", "symnmf k=150"])
def test_every_method_scores_a_single_cluster_or_empty_ones(mnist300, model):
    data = mnist300
    model.fit(data.X_train)
    scores = evaluate(model, data.X_train, data.y_train, data.X_test, data.y_test)
    assert 0 < scores["accuracy"] <= 1 and 1 <= scores["n_live_components"] <= model.k
    assert model.reconstruct(data.X_test[:3]).shape == (3, 784)
