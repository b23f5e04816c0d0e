"""Config composition and the checks that stop a user mistake before any work."""
import numpy as np
import pytest

from nmfstudy import DCD, GNMF, KMeansClustering, MiniBatchKMeansClustering, NMFClustering
from nmfstudy import config as settings

X20 = np.ones((20, 16), dtype=np.float32)


def build(cfg, X=X20):
    """The run's estimator, as train.py makes it (once, from its _target_), after the config check."""
    settings.check(cfg)
    return settings.build_estimator(cfg, X)


def test_default_run_is_nmf_k10_on_mnist_5k(compose):
    cfg = compose()
    assert (cfg["k"], cfg["dataset"]["name"], cfg["method"]["name"], cfg["init"]["name"]) == (
        10, "mnist_5k", "nmf", "nndsvda")
    assert cfg["method"]["solver"] == "hals" and cfg["sparsity"]["name"] == "none"
    assert cfg["method"]["extrapolate"] is True and build(cfg).extrapolate is True
    assert cfg["method"]["_target_"] == "nmfstudy.methods.NMFClustering"


@pytest.mark.parametrize(
    "overrides, init",
    [(["method=kmeans"], "kmeans++"), (["method=minibatch_kmeans"], "kmeans++"),
     (["method=kmeans", "init=data"], "data"), (["init=random", "method=nmf"], "random")],
)
def test_each_method_brings_its_usual_init_and_the_command_line_wins(compose, overrides, init):
    assert compose(*overrides)["init"]["name"] == init


def test_the_users_keys_are_interpolated_into_the_estimators_names(compose):
    nmf = build(compose("k=7", "seed=3", "sparsity=l1", "sparsity.alpha_W=0.01", "method.solver=mu"))
    assert isinstance(nmf, NMFClustering)
    assert (nmf.n_components, nmf.random_state, nmf.init) == (7, 3, "nndsvda")
    assert (nmf.solver, nmf.alpha_W, nmf.alpha_H, nmf.l1_ratio) == ("mu", 0.01, "same", 1.0)
    plain = build(compose())
    assert (plain.alpha_W, plain.alpha_H, plain.l1_ratio, plain.s_W, plain.s_H) == (0.0, "same", 0.0, None, None)
    hoyer = build(compose("sparsity=hoyer", "sparsity.s_H=0.8"))
    assert (hoyer.s_H, hoyer.s_W) == (0.8, None)
    assert build(compose("method.extrapolate=false")).extrapolate is False
    mbk = build(compose("method=minibatch_kmeans", "k=50", "init=gaussian"), np.ones((60, 4), np.float32))
    assert isinstance(mbk, MiniBatchKMeansClustering)
    assert (mbk.n_clusters, mbk.init, mbk.batch_size) == (50, "gaussian", 1024)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["k=0"], "k must be an integer >= 1, got 0"),
        (["k=-1"], "k must be an integer >= 1, got -1"),
        (["k=abc"], "k must be an integer >= 1, got 'abc'"),
        (["k=2.5"], "k must be an integer >= 1, got 2.5"),
        (["method=kmeans", "init=nndsvd"],
         "init must be one of kmeans++, random, data, gaussian for method=kmeans; got 'nndsvd'"),
        (["init=kmeans++"], "init must be one of random, nndsvd, nndsvda, nndsvdar for method=nmf; got 'kmeans++'"),
        (["method.solver=lbfgs"], "method.solver must be one of hals, mu, sklearn-cd, sklearn-mu; got 'lbfgs'"),
        (["method.assign=nearest"], "method.assign must be one of argmax, kmeans; got 'nearest'"),
        (["method.extrapolate=sometimes"], "method.extrapolate must be true or false; got 'sometimes'"),
        (["method.extrapolate=1"], "method.extrapolate must be true or false; got 1"),
        (["method.tol=-1"], "method.tol must be in [0.0, inf], got -1"),
        (["sparsity=hoyer", "sparsity.s_H=1.0"], "sparsity.s_H must be in [0.0, 1.0), got 1.0"),
        (["sparsity=hoyer", "method.solver=sklearn-cd"],
         "method.solver must be hals or mu with a Hoyer sparseness target"),
        (["method=kmeans", "sparsity=l1"], "sparsity must be none for method=kmeans; got 'l1'"),
        (["dataset.n_samples=1"], "dataset.n_samples must be an integer >= 2, got 1"),
        (["+method.depth=2"], "method.depth is not a setting of method=nmf"),
        (["+sparsity.beta=2"], "sparsity.beta is not a setting of method=nmf"),
        (["method=gnmf", "+graph.metric=cosine"], "graph.metric is not a setting of method=gnmf"),
        (["method._target_=nmfstudy.methods.Nope"], "method._target_ must name an estimator class of nmfstudy.methods"),
        (["method._target_=sklearn.cluster.KMeans"], "method._target_ must name an estimator class"),
        (["~method.max_iter"], "method.max_iter is missing: the method file of method=nmf must give every parameter"),
        (["tracking.model=foo"], "tracking.model must be one of all, final, none; got 'foo'"),
        (["sparsity=l1", "sparsity.l1_ratio=2"], "sparsity.l1_ratio must be in [0.0, 1.0], got 2"),
    ],
)
def test_check_names_the_key_and_what_is_allowed(compose, overrides, message):
    with pytest.raises(settings.ConfigError) as err:
        settings.check(compose(*overrides))
    assert message in str(err.value)


def test_check_data_rejects_k_above_samples_and_negative_pixels(compose):
    cfg = compose("k=50")
    with pytest.raises(settings.ConfigError, match=r"k must be at most the number of training samples \(20\); got 50"):
        build(cfg)
    with pytest.raises(settings.ConfigError, match="NMF needs non-negative pixels; found -0.5"):
        build(compose(), np.full((20, 16), -0.5, dtype=np.float32))
    build(compose("method=kmeans"), np.full((20, 16), -0.5, dtype=np.float32))


def test_tracking_figures_and_model_take_all_final_or_none(compose):
    assert compose()["tracking"]["figures"] == compose()["tracking"]["model"] == "final"
    for value in ("all", "final", "none"):
        settings.check(compose(f"tracking.figures={value}", f"tracking.model={value}"))
    with pytest.raises(settings.ConfigError, match="^tracking.figures must be one of all, final, none; got 'some'$"):
        settings.check(compose("tracking.figures=some"))


def test_graph_methods_compose_and_check(compose):
    gnmf = build(compose("method=gnmf", "method.lam=5", "graph.n_neighbors=7", "graph.cache_dir=/tmp/x", "k=3"))
    assert isinstance(gnmf, GNMF)
    assert (gnmf.k, gnmf.lam, gnmf.n_neighbors, gnmf.init, gnmf.assign, gnmf.cache_dir) == (
        3, 5.0, 7, "nndsvda", "kmeans", "/tmp/x")
    symnmf_cfg = compose("method=symnmf")
    assert symnmf_cfg["init"]["name"] == "random"
    settings.check(symnmf_cfg)
    with pytest.raises(settings.ConfigError, match="graph.weight must be one of binary, heat, fuzzy; got 'cosine'"):
        settings.check(compose("method=gnmf", "graph.weight=cosine"))
    with pytest.raises(settings.ConfigError, match="method.lam must be in"):
        settings.check(compose("method=gnmf", "method.lam=-1"))
    with pytest.raises(settings.ConfigError,
                       match=r"graph.n_neighbors must be below the number of training samples \(20\)"):
        build(compose("method=symnmf", "graph.n_neighbors=20", "k=3"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["objective=foo"], "objective must be one of accuracy, hungarian_accuracy, nmi, ari, test_accuracy, loss, "
                            "j_clust, fit_time_s, n_iter, n_clusters_used, n_live_components, silhouette, sparsity_W, "
                            "sparsity_H (the metrics a run of method=nmf logs), or a list of them; got 'foo'"),
        (["objective=[accuracy,foo]"], "got 'foo' (in ['accuracy', 'foo'])"),
        (["objective=[]"], "or a list of them; got []"),
        (["method=kmeans", "objective=sparsity_H"], "silhouette (the metrics a run of method=kmeans logs)"),
        (["method=symnmf", "objective=sparsity_W"], "silhouette, modularity (the metrics a run of method=symnmf logs), "
                                                    "or a list of them; got 'sparsity_W'"),
        (["objective=modularity"], "sparsity_H (the metrics a run of method=nmf logs), or a list of them; "
                                   "got 'modularity'"),  # only a method on a kNN graph scores its clusters on it
        (["seed=4294967296"], "seed must be an integer in [0, 4294967295], got 4294967296"),
        (["progress_every_s=abc"], "progress_every_s must be a number, got 'abc'"),
    ],
)
def test_settings_a_run_would_trip_on_after_its_fit_are_refused_at_the_door(compose, overrides, message):
    with pytest.raises(settings.ConfigError) as err:
        settings.check(compose(*overrides))
    assert message in str(err.value)


@pytest.mark.parametrize("overrides", [
    ["objective=n_live_components"], ["objective=[accuracy,fit_time_s]"], ["method=gnmf", "objective=sparsity_H"],
    ["method=kmeans", "objective=j_clust"], ["seed=4294967295"], ["method=dcd", "objective=modularity"],
])
def test_every_metric_a_run_logs_can_be_the_objective(compose, overrides):
    settings.check(compose(*overrides))


def test_objective_names_are_the_metrics_evaluate_returns():
    from nmfstudy.data import load_dataset
    from nmfstudy.metrics import evaluate, metric_names

    data = load_dataset("digits", n_samples=200)
    for method, has_basis, has_graph in ((NMFClustering(4, max_iter=5), True, False),
                                         (KMeansClustering(4, n_init=1, max_iter=5), False, False),
                                         (GNMF(4, max_iter=5), True, True), (DCD(4, random_state=0), False, True)):
        method.fit(data.X_train)
        scores = evaluate(method, data.X_train, data.y_train, data.X_test, data.y_test)
        assert sorted(scores) == sorted(metric_names(has_basis=has_basis, has_graph=has_graph))
        assert ("modularity" in scores) == has_graph


DIGITS = np.ones((1437, 64), dtype=np.float32)  # the shape of digits' training part


@pytest.mark.parametrize(
    "overrides, X, message",
    [
        (["k=65"], DIGITS, "k must be at most the number of pixels (64) with init=nndsvda, an SVD-based start; "
                           "got 65 (init=random allows any k)"),
        (["k=65", "init=nndsvd", "method.solver=sklearn-cd"], DIGITS, "with init=nndsvd, an SVD-based start; got 65"),
        (["method=gnmf", "k=65"], DIGITS, "k must be at most the number of pixels (64) with init=nndsvda"),
        (["k=40"], np.ones((30, 784), np.float32), "k must be at most the number of training samples (30); got 40"),
        (["method=symnmf", "k=5", "graph.n_neighbors=1437"], DIGITS,
         "graph.n_neighbors must be below the number of training samples (1437); got 1437"),
        (["method=symnmf", "k=2000"], DIGITS, "k must be at most the number of training samples (1437); got 2000"),
    ],
)
def test_check_data_refuses_settings_the_data_cannot_take(compose, overrides, X, message):
    with pytest.raises(settings.ConfigError) as err:
        build(compose(*overrides), X)
    assert message in str(err.value)


@pytest.mark.parametrize("overrides", [
    ["k=64"], ["k=65", "init=random"], ["method=kmeans", "k=65"], ["method=gnmf", "graph.pca=64"],
    # a projection onto more dimensions than the data have is the data themselves: searched as they are
    ["method=gnmf", "graph.pca=5000"], ["method=symnmf", "graph.pca=100", "k=3"],
    ["method=minibatch_kmeans", "method.batch_size=100000"],
])
def test_check_data_takes_the_limits_themselves(compose, overrides):
    build(compose(*overrides), DIGITS)
