"""Can a study without labels pick NMFR's and DCD's graph? Label-free scores against Hungarian accuracy.

Not a test. For each graph setting of a grid (the settings the `nmfr` and `dcd` presets search:
n_neighbors, weight, normalize; PCA 50 as the defaults), fit the estimator at its defaults and
record its Hungarian accuracy (labels: only to score) beside four scores without labels:

- ``silhouette``: what a run logs (nmfstudy.metrics.silhouette: the pixels, a seeded sample of 2,000);
- ``silhouette_pca``: the same on the 50 principal components of the pixels;
- ``modularity_knn``: Newman's modularity of the partition on one fixed reference graph whatever
  the trial's graph (the `knn` default: 10-NN, binary, on PCA 50 of the pixels);
- ``modularity``: the same on the trial's own graph, what a run logs (the estimator's
  `modularity_`, nmfstudy.nmf.graph.modularity) and `objective=modularity` maximizes.

A label-free study picks the setting with the largest score; the table says what accuracy that
pick has, against the best setting and the default.

    OMP_NUM_THREADS=1 python bench/bench_label_free.py --dataset {digits,lfw,mnist_5k} --out bench/label_free_fits.jsonl
    python bench/bench_label_free.py --report bench/label_free_fits.jsonl   # the table of bench/label_free_results.md

lfw is scikit-image's bundled 200 faces (pip install scikit-image; not a dependency of nmfstudy). On all
63,000 MNIST images (deskewed, as conf/dataset/mnist.yaml), five settings, the graph cached as bench_clustering's:

    python bench/bench_label_free.py --dataset mnist --out bench/label_free_fits.jsonl \
        --settings 10,binary,raw 10,binary,unit 15,fuzzy,raw 15,fuzzy,unit 5,fuzzy,unit
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

GRID = {"n_neighbors": (5, 10, 15, 20), "weight": ("binary", "fuzzy"), "normalize": (False, True)}
DESKEW = {"mnist": True, "mnist_5k": True, "digits": False, "lfw": False}  # each set's own config (conf/dataset/)
K = {"lfw": 2}
CACHE = HERE.parent / ".cache" / "graphs"  # bench_clustering.py's and the runs' graph cache
SCORES = ("silhouette", "silhouette_pca", "modularity_knn", "modularity")


def load(dataset: str):
    if dataset == "mnist":  # all 63,000 images, as bench_clustering.py fits them
        from bench_clustering import DATA

        from nmfstudy.data import load_dataset

        data = load_dataset("mnist", dir=str(DATA), deskew=True)
        return np.concatenate([data.X_train, data.X_test]), np.concatenate([data.y_train, data.y_test])
    if dataset == "lfw":
        from bench_graph_choice import load as load_lfw

        X, y, _ = load_lfw("lfw")
        return X, y
    from nmfstudy.data import load_dataset

    data = load_dataset(dataset, seed=0, deskew=DESKEW[dataset])
    return data.X_train, data.y_train


def score(dataset: str, method: str, out: Path, seed: int = 0, settings: list[str] | None = None) -> None:
    from sklearn.decomposition import PCA

    from nmfstudy import DCD, NMFR
    from nmfstudy.metrics import hungarian_accuracy, silhouette
    from nmfstudy.nmf.graph import knn_graph, modularity

    X, y = load(dataset)
    Z = PCA(50, random_state=0).fit_transform(X) if min(X.shape) > 50 else X
    reference = knn_graph(X, 10, pca=50 if min(X.shape) > 50 else None)
    cls = NMFR if method == "nmfr" else DCD
    grid = itertools.product(*GRID.values())
    if settings:  # "15,fuzzy,unit": n_neighbors, weight, raw or unit
        grid = [(int(n), w, norm == "unit") for n, w, norm in (s.split(",") for s in settings)]
    for n_neighbors, weight, normalize in grid:
        est = cls(n_clusters=K.get(dataset, 10), random_state=seed, n_neighbors=n_neighbors, weight=weight,
                  normalize=normalize, cache_dir=str(CACHE))
        t = time.perf_counter()
        labels = est.fit(X).labels_
        row = dict(dataset=dataset, method=method, seed=seed, n_neighbors=n_neighbors, weight=weight,
                   normalize=normalize, hungarian=hungarian_accuracy(y, labels, est.n_clusters),
                   silhouette=silhouette(X, labels), silhouette_pca=silhouette(Z, labels),
                   modularity_knn=modularity(reference, labels), modularity=est.modularity_,
                   seconds=round(time.perf_counter() - t, 2))
        print(json.dumps(row), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


def report(rows: list[dict]) -> str:
    from scipy.stats import spearmanr

    lines = ["| data set | method | seed | settings | `knn` graph (10, binary, raw) | best | picked by silhouette | "
             "picked by silhouette_pca | picked by modularity_knn | picked by modularity | Spearman: "
             "silhouette / silhouette_pca / modularity_knn / modularity |", "|---" * 11 + "|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"], r["seed"]), []).append(r)

    def name(r):
        return f"{r['hungarian']:.4f} ({r['n_neighbors']}, {r['weight']}, {'unit' if r['normalize'] else 'raw'})"

    for (dataset, method, seed), rs in groups.items():
        acc = [r["hungarian"] for r in rs]
        default = next((r for r in rs if r["n_neighbors"] == 10 and r["weight"] == "binary" and not r["normalize"]),
                       None)
        pick = {s: max((r for r in rs if np.isfinite(r[s])), key=lambda r, s=s: r[s]) for s in
                SCORES}
        rho = [spearmanr([r[s] for r in rs], acc).statistic for s in SCORES]
        lines.append(f"| {dataset} | {method} | {seed} | {len(rs)} | {name(default) if default else '-'} | "
                     f"{name(max(rs, key=lambda r: r['hungarian']))} | {name(pick['silhouette'])} | "
                     f"{name(pick['silhouette_pca'])} | {name(pick['modularity_knn'])} | {name(pick['modularity'])} | "
                     f"{' / '.join(f'{x:+.2f}' for x in rho)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DESKEW))
    p.add_argument("--methods", nargs="*", default=["nmfr", "dcd"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", nargs="*", help="graph settings to fit instead of the whole grid: N,WEIGHT,raw|unit")
    p.add_argument("--out", type=Path, help="a .jsonl file the rows are appended to")
    p.add_argument("--report", type=Path, help="print the markdown table of a .jsonl file's rows")
    args = p.parse_args(argv)
    if args.report:
        print(report([json.loads(line) for line in args.report.read_text().splitlines()]))
        return
    for method in args.methods:
        score(args.dataset, method, args.out, args.seed, args.settings)


if __name__ == "__main__":
    main()
