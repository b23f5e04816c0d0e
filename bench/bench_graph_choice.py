"""Which graph for NMFR and DCD: each candidate construction's edge purity, and the accuracy it gives.

Not a test. The constructions use no labels; the labels only score them:

- edge purity: the share of the graph's edges (each unordered pair once) that join two images of
  the same label; weighted purity: the same share of the edges' total weight;
- Hungarian accuracy of NMFR and DCD (the estimators' own start search and solver, their
  defaults) fitted on that graph at k clusters.

A candidate is ``FEATURES/NEIGHBOURS``: FEATURES a chain of steps joined by ``+``, applied left
to right: ``raw`` (the pixels), ``deskew`` (the data set's moment deskew, nmfstudy.preprocess),
``unit`` (each row scaled to unit L2 norm), ``pcaN`` (PCA to N dimensions, randomized, seed 0),
``wpcaN`` (the same, whitened), ``hog`` (scikit-image's HOG of each image); NEIGHBOURS one of
``knnK`` (the symmetric k-NN graph max(A, A^T), binary), ``mutualK`` (mutual k-NN: min(A, A^T)),
``mknnK`` (mutual k-NN, plus each sample's nearest neighbour so that none is left alone),
``snnK`` (the k-NN graph's edges weighted by the neighbours the two share, (shared + 1) / (k + 1)),
``umapK`` (UMAP's fuzzy simplicial set on the exact K nearest, umap-learn's code), ``fuzzyK`` (the
same set as nmfstudy computes it, ``graph.weight=fuzzy``: what the runs use, no umap-learn needed). The k-NN
searches are nmfstudy.nmf.graph's exact search.

    python bench/bench_graph_choice.py purity --out bench/graph_choice_purity.jsonl
    python bench/bench_graph_choice.py fit --candidates raw+pca50/knn10 deskew+unit+pca50/knn10 ...
    python bench/bench_graph_choice.py report --out bench/graph_choice_purity.jsonl   # markdown tables of the rows
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DATA = Path("/work/shared/data/mnist")
PURITY_CANDIDATES = [
    f"{feat}/{nb}"
    for feat in ["raw", "unit", "deskew", "deskew+unit",
                 "raw+pca50", "unit+pca50", "deskew+pca50", "deskew+unit+pca50",
                 "raw+pca100", "deskew+unit+pca100", "raw+wpca50", "deskew+unit+wpca50",
                 "deskew+unit+pca50+unit", "hog", "deskew+hog"]
    for nb in ["knn10", "knn15", "mutual10", "umap15"]
]


def load(dataset: str, seed: int = 0):
    """Training images (float32 in [0, 1], as load_dataset gives them, no deskew), labels, image shape."""
    if dataset == "mnist":
        from nmfstudy.data import load_mnist_idx

        X, y, _, _ = load_mnist_idx(DATA)
        return X.astype(np.float32) / np.float32(255), y.astype(np.int64), (28, 28)
    if dataset == "lfw":
        # scikit-image's bundled 200 faces (100 faces, 100 non-faces) in 25 x 25 grayscale: labels face / not
        from skimage.data import lfw_subset

        images = lfw_subset().astype(np.float32)
        images /= images.max()
        return images.reshape(len(images), -1), np.repeat([1, 0], 100), images.shape[1:]
    if dataset == "olivetti":
        raise SystemExit("olivetti downloads at run time; not available offline")
    from nmfstudy.data import load_dataset

    data = load_dataset(dataset, seed=seed)
    return data.X_train, data.y_train, data.image_shape


# ------------------------------------------------------------------------------------------ features


def features(X: np.ndarray, shape, chain: str, seed: int = 0) -> np.ndarray:
    """The features of a FEATURES chain (see the module's docstring)."""
    from sklearn.decomposition import PCA

    from nmfstudy.preprocess import deskew

    Z = X
    for step in chain.split("+"):
        if step == "raw":
            continue
        if step == "deskew":
            Z = deskew(Z, shape)
        elif step == "unit":
            norms = np.linalg.norm(Z, axis=1, keepdims=True)
            Z = Z / np.maximum(norms, np.finfo(np.float32).tiny)
        elif (m := re.fullmatch(r"(w?)pca(\d+)", step)):
            # fit, then transform, as nmfstudy.nmf.graph does: fit_transform differs in the last bits, which
            # moves 0.6% of the 10-NN edges of MNIST's 60,000 images (the rows of 2026-12-07 used fit_transform)
            Z = PCA(int(m.group(2)), whiten=bool(m.group(1)), svd_solver="randomized",
                    random_state=seed).fit(Z).transform(Z)
        elif step == "hog":
            from skimage.feature import hog

            cell = max(2, shape[0] // 4)  # 7 x 7 cells on 28 x 28 images
            imgs = Z.reshape(len(Z), *shape)
            Z = np.stack([hog(im, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2))
                          for im in imgs])
        else:
            raise SystemExit(f"unknown feature step {step!r}")
        Z = np.ascontiguousarray(Z, dtype=np.float32)
    return np.ascontiguousarray(Z, dtype=np.float32)


# ------------------------------------------------------------------------------------------ graphs


def neighbours(Z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact k nearest of each row (indices, squared distances), nmfstudy's search."""
    from nmfstudy.nmf.graph import _knn

    return _knn(Z, Z, k, exclude_self=True)


def graph(idx: np.ndarray, d2: np.ndarray, rule: str) -> sp.csr_matrix:
    """The graph of a NEIGHBOURS rule from the exact (at least) K nearest."""
    m = re.fullmatch(r"(knn|mutual|mknn|snn|umap|fuzzy)(\d+)", rule)
    kind, k = m.group(1), int(m.group(2))
    n = len(idx)
    idx, d2 = idx[:, :k], d2[:, :k]
    A = sp.csr_matrix((np.ones(n * k, np.float32), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    if kind in ("knn", "mutual"):
        S = A.maximum(A.T) if kind == "knn" else A.minimum(A.T)
        return S.tocsr().astype(np.float32)
    if kind == "mknn":
        first = sp.csr_matrix((np.ones(n, np.float32), idx[:, 0], np.arange(n + 1)), shape=(n, n))
        return A.minimum(A.T).maximum(first).maximum(first.T).tocsr().astype(np.float32)
    if kind == "snn":
        S = A.maximum(A.T).tocsr()
        shared = (A @ A.T).multiply(S)  # |N(i) & N(j)| on the graph's edges
        S = S + shared
        S.data = S.data / (k + 1)
        return S.tocsr().astype(np.float32)
    if kind == "fuzzy":
        from nmfstudy.nmf.graph import fuzzy_memberships

        F = sp.csr_matrix((fuzzy_memberships(np.sqrt(d2)).astype(np.float32).ravel(), idx.ravel(),
                           np.arange(0, n * k + 1, k)), shape=(n, n))
        return (F + F.T - F.multiply(F.T)).tocsr().astype(np.float32)  # probabilistic union, as knn_graph
    if kind == "umap":
        from umap.umap_ import fuzzy_simplicial_set

        # UMAP's convention: each point's own index first, at distance 0
        ind = np.hstack([np.arange(n)[:, None], idx]).astype(np.int64)
        dist = np.hstack([np.zeros((n, 1)), np.sqrt(d2)]).astype(np.float32)
        G = fuzzy_simplicial_set(np.zeros((n, 1), np.float32), k + 1, 0, "euclidean",
                                 knn_indices=ind, knn_dists=dist)[0]
        return G.tocsr().astype(np.float32)
    raise SystemExit(f"unknown neighbour rule {rule!r}")


def purity(S: sp.csr_matrix, y: np.ndarray) -> dict:
    U = sp.triu(S, k=1).tocoo()
    same = y[U.row] == y[U.col]
    isolated = int(np.sum(np.diff(S.tocsr().indptr) == 0))
    return {"edges": int(U.nnz), "purity": float(same.mean()),
            "weighted_purity": float(U.data[same].sum() / U.data.sum()), "isolated": isolated}


# ------------------------------------------------------------------------------------------ fits


def fit(S: sp.csr_matrix, method: str, k: int, seed: int):
    """The estimator's multilevel search and solver (its defaults) on the given graph: labels, fit seconds."""
    from nmfstudy import DCD, NMFR
    from nmfstudy.nmf.multilevel import multilevel_fit

    est = (NMFR if method == "nmfr" else DCD)(n_clusters=k, random_state=seed)
    t = time.perf_counter()
    res = multilevel_fit(S.astype(np.float64), k, est._start, est._refine, n_init=est.n_init,
                         oversplit=est.oversplit, n_vectors=est.n_vectors, seed=seed)
    return res.W.argmax(axis=1), time.perf_counter() - t, res.n_iter


def main(argv=None) -> None:
    from machine import machine_summary

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=("purity", "fit", "report"))
    p.add_argument("--dataset", default="mnist", help="mnist (the 60,000 training images), mnist_5k, digits, lfw")
    p.add_argument("--candidates", nargs="*", default=None)
    p.add_argument("--methods", nargs="*", default=["nmfr", "dcd"])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="a .jsonl file the rows are appended to")
    args = p.parse_args(argv)
    if args.phase == "report":
        print(report([json.loads(line) for line in open(args.out)]))
        return

    from nmfstudy.metrics import hungarian_accuracy

    X, y, shape = load(args.dataset, args.seed)
    k = args.k if args.dataset != "lfw" else 2
    candidates = args.candidates or PURITY_CANDIDATES
    print(machine_summary(), flush=True)
    cache: dict[str, tuple] = {}
    for cand in candidates:
        chain, rule = cand.split("/")
        # one search per feature chain, for the most neighbours any of the chain's candidates asks for
        kmax = max(15, *(int(re.sub(r"\D", "", c.split("/")[1])) for c in candidates if c.split("/")[0] == chain))
        if chain not in cache:
            t = time.perf_counter()
            Z = features(X, shape, chain, args.seed)
            t_feat = time.perf_counter() - t
            idx, d2 = neighbours(Z, kmax)
            cache = {chain: (idx, d2, t_feat, time.perf_counter() - t - t_feat)}  # one chain held at a time
        idx, d2, t_feat, t_knn = cache[chain]
        t = time.perf_counter()
        S = graph(idx, d2, rule)
        row = {"dataset": args.dataset, "n": len(y), "candidate": cand, **purity(S, y),
               "features_s": round(t_feat, 2), "knn_s": round(t_knn, 2), "graph_s": round(time.perf_counter() - t, 2),
               "load": open("/proc/loadavg").read().split()[0]}
        if args.phase == "fit":
            for method in args.methods:
                labels, secs, n_iter = fit(S, method, k, args.seed)
                row[f"{method}_hungarian"] = hungarian_accuracy(y, labels, k)
                row[f"{method}_fit_s"] = round(secs, 1)
                row[f"{method}_iters"] = int(n_iter)
                row["load"] += " " + open("/proc/loadavg").read().split()[0]
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps({**row, "k": k, "seed": args.seed, "threads": os.environ.get("OMP_NUM_THREADS")}) + "\n")


def report(rows: list[dict]) -> str:
    """One markdown table per data set: each candidate's purity, and its accuracies where it was fitted."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        fitted = any("nmfr_hungarian" in r for r in mine)
        out.append(f"\n#### {dataset} ({mine[0]['n']:,} training samples, k={mine[0]['k']})\n")
        head = "| candidate | seed | edges | purity | weighted purity | isolated |"
        fits = " NMFR Hungarian | NMFR fit s | DCD Hungarian | DCD fit s | load (1 min: start, after NMFR, after DCD) |"
        head += fits if fitted else " load |"
        out += [head, "|" + "---|" * (head.count("|") - 1)]
        for r in mine:
            line = (f"| {r['candidate']} | {r['seed']} | {r['edges']:,} | {r['purity']:.4f} "
                    f"| {r['weighted_purity']:.4f} | {r['isolated']} |")
            if fitted:
                line += " | ".join(f" {r[key]:.4f}" if isinstance(r.get(key), float) and "hungarian" in key
                                   else f" {r.get(key, '')}" for key in
                                   ("nmfr_hungarian", "nmfr_fit_s", "dcd_hungarian", "dcd_fit_s")) + " |"
            out.append(line + f" {r['load']} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
