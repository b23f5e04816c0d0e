"""The default graph's construction: unit-norm samples (graph.normalize), PCA 50, its cache key, and the clusters'
modularity on it (a score without labels)."""
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import load_digits

from nmfstudy import DCD, GNMF, NMFR, SymNMF
from nmfstudy.nmf import graph as knn
from nmfstudy.nmf.graph import NeighborIndex, cached_knn_graph, knn_graph, modularity

# Two directions, each drawn once faint and once bold: by distance the faint ones are nearest
# each other, by direction (unit norm) each pairs with its own bold copy.
X = np.array([[1.0, 0.0], [3.0, 0.1], [0.0, 1.0], [0.1, 2.0]], dtype=np.float32)


def edges(S) -> set[tuple[int, int]]:
    r, c = S.nonzero()
    return {(int(a), int(b)) for a, b in zip(r, c, strict=True) if a < b}


def test_normalize_joins_samples_by_direction_not_by_ink():
    assert edges(knn_graph(X, 1)) == {(0, 1), (0, 2), (2, 3)}  # by distance 0 pairs with the other faint one, 2
    S = knn_graph(X, 1, normalize=True)
    assert edges(S) == {(0, 1), (2, 3)} and S.dtype == np.float32
    # a sample scaled by any factor has the same graph; an all-zero sample stays where it was
    np.testing.assert_array_equal(knn_graph(X * [[2], [0.5], [7], [1]], 1, normalize=True).toarray(), S.toarray())
    with pytest.raises(ValueError, match="normalize must be true or false; got 1"):
        knn_graph(X, 1, normalize=1)


def test_unit_rows_are_the_float64_quotient_rounded_once_over_several_blocks():
    rng = np.random.default_rng(0)
    Z = rng.random((2500, 33)).astype(np.float32)  # more rows than one block of the division
    Z[7] = 0.0
    norms = np.sqrt(np.einsum("ij,ij->i", Z, Z, dtype=np.float64))
    expected = (Z / np.maximum(norms, np.finfo(np.float32).tiny)[:, None]).astype(np.float32)
    unit = knn._unit_rows(Z)
    assert unit.dtype == np.float32 and unit.flags.c_contiguous and np.array_equal(unit, expected)
    assert not unit[7].any()


def test_the_neighbor_index_places_new_samples_as_the_graph_was_built():
    new = np.array([[0.2, 0.01], [0.0, 5.0]], dtype=np.float32)  # faint along the first axis, bold along the second
    assert NeighborIndex.fit(X).nearest(new, 1).ravel().tolist() == [0, 3]
    assert NeighborIndex.fit(X, normalize=True).nearest(new, 1).ravel().tolist() == [1, 2]


def test_the_cache_keys_each_construction_apart(tmp_path, monkeypatch):
    plain = cached_knn_graph(X, "four", tmp_path, n_neighbors=1)
    unit = cached_knn_graph(X, "four", tmp_path, n_neighbors=1, normalize=True)
    assert edges(plain) != edges(unit) and edges(unit) == {(0, 1), (2, 3)}
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and sum("-unit-" in name for name in files) == 1
    # another version of the construction never reads an older file
    monkeypatch.setattr(knn, "_CACHE_VERSION", knn._CACHE_VERSION + 1)
    cached_knn_graph(X, "four", tmp_path, n_neighbors=1, normalize=True)
    assert len(list(tmp_path.iterdir())) == 3


@pytest.mark.parametrize("cls", [GNMF, SymNMF, NMFR, DCD])
def test_every_graph_method_defaults_to_the_configs_one_graph(cls, compose):
    """The estimator's own defaults are conf/graph/fuzzy.yaml's: the same graph from Python as from train.py."""
    params, graph = cls().get_params(), compose("dataset=digits")["graph"]
    keys = ("n_neighbors", "weight", "normalize", "pca")
    assert tuple(params[key] for key in keys) == tuple(graph[key] for key in keys) == (15, "fuzzy", False, 50)


def test_the_estimators_graph_is_the_default_construction_and_pca_stops_at_the_datas_dimensions():
    from sklearn.datasets import load_digits

    X = load_digits().data[:300].astype(np.float32) / 16  # 300 x 64
    model = NMFR(n_clusters=3, n_neighbors=5, n_init=1, n_restarts=2, max_iter=5, random_state=0)
    S = model._graph(X, 0)
    np.testing.assert_array_equal(S.toarray(), knn_graph(X, 5, weight="fuzzy", pca=50, seed=0).toarray())
    # pca 100 > 64 pixels: the search runs on the (unit-norm) pixels themselves
    S = model.set_params(pca=100, normalize=True)._graph(X, 0)
    np.testing.assert_array_equal(S.toarray(), knn_graph(X, 5, weight="fuzzy", normalize=True).toarray())
    assert model.neighbor_index_.projection is None and model.neighbor_index_.normalize


def test_fuzzy_weights_are_umaps_memberships_joined_by_probabilistic_union():
    # three samples on a line at 0, 1 and 3, two neighbours each: the nearest gets 1, the second
    # log2(3) - 1 (sigma solves 1 + exp(-(d2 - d1) / sigma) = log2(3)); then A + A^T - A * A^T
    S = knn_graph(np.array([[0.0], [1.0], [3.0]], dtype=np.float32), 2, weight="fuzzy").toarray()
    second = np.log2(3) - 1
    expected = np.array([[0, 1, 2 * second - second**2], [1, 0, 1], [2 * second - second**2, 1, 0]])
    np.testing.assert_allclose(S, expected, rtol=1e-6)


@pytest.mark.slow  # umap-learn (not a dependency; skipped without it) compiles its numba code first: 20-80 s
def test_fuzzy_weights_match_umap_learns_fuzzy_simplicial_set():
    umap = pytest.importorskip("umap.umap_")
    from sklearn.datasets import load_digits

    Z = load_digits().data[:400].astype(np.float32)
    S = knn_graph(Z, 15, weight="fuzzy")
    idx, d2 = knn._knn(Z, Z, 15, exclude_self=True)
    own = np.arange(len(Z))[:, None]  # umap-learn counts each sample as its own nearest, at distance 0
    G = umap.fuzzy_simplicial_set(np.zeros((len(Z), 1), np.float32), 16, 0, "euclidean",
                                  knn_indices=np.hstack([own, idx]),
                                  knn_dists=np.hstack([0 * own, np.sqrt(d2)]).astype(np.float32))[0]
    assert ((S != 0) != (G != 0)).nnz == 0
    assert abs(S - G).max() < 1e-4  # umap-learn stops its bisection at a tolerance of 1e-5


@pytest.mark.parametrize("dataset", ["mnist", "mnist_5k", "digits", "images"])
def test_every_set_has_one_graph_and_full_mnist_declares_its_unit_norm(compose, dataset):
    """One graph construction (conf/graph/fuzzy.yaml) for every set; full MNIST's own file turns on unit norm,
    its preprocessing; the method reads the graph the run composes."""
    settings = dict(n_neighbors=15, weight="fuzzy", normalize=dataset == "mnist", pca=50)
    cfg = compose(f"dataset={dataset}", "method=nmfr")
    assert {key: cfg["graph"][key] for key in settings} == settings
    assert {key: cfg["method"][key] for key in settings} == settings
    assert cfg["dataset"]["name"] == dataset


def test_the_former_graph_and_single_keys_still_override_the_default(compose):
    cfg = compose("dataset=mnist", "method=dcd", "graph=knn", "graph.normalize=false")
    assert (cfg["method"]["n_neighbors"], cfg["method"]["weight"], cfg["method"]["normalize"]) == (10, "binary", False)
    cfg = compose("dataset=mnist", "method=dcd", "graph.n_neighbors=7", "dataset.deskew=false")
    assert (cfg["method"]["n_neighbors"], cfg["method"]["weight"], cfg["dataset"]["deskew"]) == (7, "fuzzy", False)


def test_modularity_is_newmans_q_and_needs_no_labels():
    # two triangles joined by one edge: 7 edges, m = 14 ends; each triangle holds 6 of them and degree 7
    A = np.zeros((6, 6))
    for a, b in [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5), (2, 3)]:
        A[a, b] = A[b, a] = 1.0
    S = sp.csr_matrix(A)
    assert modularity(S, [0, 0, 0, 1, 1, 1]) == pytest.approx(12 / 14 - 2 * (7 / 14) ** 2)
    assert modularity(S, [0, 0, 0, 0, 0, 0]) == pytest.approx(0.0)
    assert modularity(S, [0, 1, 0, 1, 0, 1]) < 0  # a partition against the graph scores below chance
    assert np.isnan(modularity(sp.csr_matrix((3, 3)), [0, 1, 2]))


@pytest.mark.parametrize("cls", [NMFR, DCD, SymNMF, GNMF])
def test_every_graph_method_scores_its_clusters_on_its_own_graph(cls, tmp_path):
    X = (load_digits().data[:300] / 16).astype(np.float32)
    model = cls(4, random_state=0, n_neighbors=7, cache_dir=str(tmp_path)).fit(X)
    S = cached_knn_graph(X, knn.data_key(X), tmp_path, n_neighbors=7, weight="fuzzy", normalize=False, pca=50)
    assert model.modularity_ == pytest.approx(modularity(S, model.labels_)) and 0.3 < model.modularity_ < 1
    assert not hasattr(model, "_graph_of_fit") and b"_graph_of_fit" not in pickle.dumps(model)
