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
