"""Every method is a scikit-learn estimator: scikit-learn's own checks, pipelines, grid search, clone and pickle."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score, make_scorer
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from nmfstudy import DCD, GNMF, NMFR, KMeansClustering, MiniBatchKMeansClustering, NMFClustering, SymNMF
from nmfstudy.params import InvalidParameterError

# Small settings, so that the ~50 checks per class take seconds: fewer starts and iterations, and 5 graph
# neighbours because several checks fit on 10 samples (the default 10 neighbours need at least 11).
CHECKED = [
    NMFClustering(max_iter=100), KMeansClustering(n_init=2), MiniBatchKMeansClustering(),
    GNMF(max_iter=50, n_neighbors=5), SymNMF(n_init=1, n_restarts=5, max_iter=30, n_neighbors=5),
    NMFR(n_init=1, n_restarts=5, max_iter=30, n_neighbors=5),
    DCD(n_init=1, n_restarts=5, exact_restarts=2, max_iter=30, n_neighbors=5),
]


def expected_failures(estimator) -> dict[str, str]:
    """The checks each class is known to fail, and why (at most three per class)."""
    if estimator.needs_nonnegative_data:
        # check_clustering fits on standardized blobs (negative values) whatever the positive_only tag says
        return {"check_clustering": "NMF needs non-negative data; the check feeds standardized (negative) blobs"}
    return {}


@parametrize_with_checks(CHECKED, expected_failed_checks=expected_failures, xfail_strict=True)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_at_most_three_expected_failures_per_class_each_with_its_reason():
    for estimator in CHECKED:
        failures = expected_failures(estimator)
        assert len(failures) <= 3 and all(len(reason) > 20 for reason in failures.values())


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X, y


@pytest.mark.parametrize("cls", [NMFR, DCD])
def test_a_pipeline_and_a_grid_search_by_ari_over_the_graph_methods(digits, cls):
    X, y = digits
    fast = {"exact_restarts": 5} if cls is DCD else {}
    pipe = make_pipeline(MinMaxScaler(), cls(n_clusters=10, n_init=1, random_state=0, **fast))
    search = GridSearchCV(pipe, {f"{cls.__name__.lower()}__n_neighbors": [5, 10]},
                          scoring=make_scorer(adjusted_rand_score), cv=2).fit(X, y)
    assert search.best_params_ in ({f"{cls.__name__.lower()}__n_neighbors": 5},
                                   {f"{cls.__name__.lower()}__n_neighbors": 10})
    # measured on digits: ARI 0.75-0.85 for both methods and both settings (K-means: 0.67)
    assert search.best_score_ > 0.6
    labels = search.best_estimator_.predict(X)
    assert labels.shape == (len(X),) and adjusted_rand_score(y, labels) > 0.7


def test_clone_pickle_and_set_params_keep_the_estimator(digits):
    X = digits[0]
    model = NMFR(n_clusters=10, n_init=1, alpha=0.7, random_state=1)
    twin = clone(model)
    assert twin is not model and twin.get_params() == model.get_params()
    model.fit(X)
    again = pickle.loads(pickle.dumps(model))
    assert np.array_equal(again.predict(X[:50]), model.predict(X[:50]))
    assert model.n_features_in_ == 64 and model.labels_.dtype == np.int64
    assert np.array_equal(model.fit_predict(X), clone(model).fit(X).labels_)  # seeded: the same clusters


def test_parameters_are_checked_in_fit_not_only_at_construction(digits):
    model = NMFR(n_clusters=10)
    model.alpha = 1.5
    with pytest.raises(InvalidParameterError, match=r"^alpha must be in \[0.0, 1.0\), got 1.5$"):
        model.fit(digits[0])
    with pytest.raises(InvalidParameterError, match="^n_clusters must be an integer >= 1, got 0$"):
        DCD(n_clusters=0).fit(digits[0])
    with pytest.raises(InvalidParameterError, match="^init must be one of random for method=symnmf; got 'x'$"):
        SymNMF(init="x").fit(digits[0])


@pytest.mark.parametrize("cls", [NMFClustering, GNMF])
def test_an_svd_start_with_more_components_than_pixels_is_refused_in_fit(cls):
    X = np.random.default_rng(0).random((30, 4))
    with pytest.raises(InvalidParameterError, match=r"n_components must be at most the number of pixels \(4\) "
                                                   r"with init=nndsvda"):
        cls(n_components=6, init="nndsvda", n_neighbors=5).fit(X) if cls is GNMF else cls(6, init="nndsvda").fit(X)
    # None: scikit-learn's rule, a random start when the SVD has too few vectors
    fitted = cls(n_components=6, random_state=0, **({"n_neighbors": 5} if cls is GNMF else {})).fit(X)
    assert fitted.components_.shape == (6, 4)


@pytest.mark.parametrize("bad, error, message", [
    (np.full((20, 64), np.nan), ValueError, "Input X contains NaN"),
    (-np.ones((20, 64)), ValueError, "Negative values in data passed to NMFR.fit"),
    (np.empty((0, 64)), ValueError, "0 sample"),
    (sp.random(20, 64, density=0.5, format="csr"), TypeError, "Sparse data was passed"),
    (np.ones((20, 64)) * (1 + 1j), ValueError, "Complex data not supported"),
])
def test_bad_training_data_is_one_clear_error(bad, error, message):
    with pytest.raises(error, match=message):
        NMFR(n_clusters=2).fit(bad)


def test_predict_before_fit_and_on_other_shapes(digits):
    X = digits[0]
    with pytest.raises(NotFittedError):
        DCD().predict(X)
    model = DCD(n_clusters=10, n_init=1, random_state=0).fit(X)
    assert model.predict(X[:1]).shape == (1,)  # one new image
    with pytest.raises(ValueError, match="X has 10 features, but DCD is expecting 64 features as input"):
        model.predict(X[:5, :10])
    with pytest.raises(ValueError, match="Negative values in data passed to DCD.predict"):
        model.predict(-X[:5])
