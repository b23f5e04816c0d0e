"""Graph-aware NMF on full MNIST (63,000 x 784): graph build, GNMF and SymNMF against K-means and NMF.

Not a test. Every stage runs in its own fresh process (spawned), so that its peak
resident memory (ru_maxrss) is its own: data + graph build; then each method, reading
the graph from the on-disk cache the first stage wrote. Wall time and CPU time are both
reported: other jobs may share the cores, which stretches wall time but not CPU time.

    python bench/bench_graph.py --out bench/graph_results.md              # full run
    python bench/bench_graph.py --n-samples 10000 --grid                   # explore settings
    python bench/bench_graph.py --methods anchor --out bench/graph_results_build.md  # the graph alone
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DATA = Path("/work/shared/data/mnist")


def load(data_dir: Path, n_samples: int | None, seed: int):
    """The 60,000 training and (first) 3,000 test images together, float32 in [0, 1]; a stratified subset."""
    from nmfstudy.data import read_idx

    X = np.concatenate([read_idx(data_dir / f"{p}-images-idx3-ubyte.gz").reshape(-1, 784)
                        for p in ("train", "t10k")]).astype(np.float32) / np.float32(255)
    y = np.concatenate([read_idx(data_dir / f"{p}-labels-idx1-ubyte.gz") for p in ("train", "t10k")])
    y = y.astype(np.int64)
    if n_samples and n_samples < len(y):
        from sklearn.model_selection import train_test_split

        keep, _ = train_test_split(np.arange(len(y)), train_size=n_samples, stratify=y, random_state=seed)
        keep.sort()
        X, y = X[keep], y[keep]
    return X, y


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _scores(y, clusters, k) -> dict:
    from sklearn.metrics import normalized_mutual_info_score

    from nmfstudy.metrics import hungarian_accuracy, majority_accuracy

    return {"hungarian": hungarian_accuracy(y, clusters, k), "majority": majority_accuracy(y, clusters, k),
            "nmi": normalized_mutual_info_score(y, clusters)}


def stage(args: dict, name: str, params: dict) -> list[dict]:
    """One stage in this (fresh) process; returns rows of results."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(args["threads"])
    X, y = load(args["data"], args["n_samples"], args["seed"])
    fp = f"mnist63k-{len(y)}-s{args['seed']}"
    graph_settings = {key: params[key] for key in ("n_neighbors", "weight", "pca") if key in params}
    k, seed = args["k"], args["seed"]
    rows = []
    import sklearn.neighbors  # noqa: F401

    import nmfstudy.nmf.graph  # noqa: F401 - its imports (scikit-learn's PCA) are not the build's time

    t0, c0 = time.perf_counter(), time.process_time()

    def row(method, settings, clusters, n_iter=None, extra=None):
        return {"method": method, "settings": settings, **_scores(y, clusters, k),
                "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                "n_iter": n_iter, "peak_gb": _peak_gb(), **(extra or {})}

    if name == "graph":
        from nmfstudy.nmf.graph import cached_knn_graph

        S = cached_knn_graph(X, fp, args["cache"], seed=seed, **graph_settings)
        r, c = S.nonzero()
        rows.append(row("kNN graph", _fmt(graph_settings), np.zeros(len(y), dtype=int),
                        extra={"nnz": S.nnz, "edge_purity": float(np.mean(y[r] == y[c]))}))
        return rows
    if name == "anchor":
        # scikit-learn's exact brute-force search on the same projection: the anchor of the
        # graph's time, and a check that the graph is the exact one
        import scipy.sparse as sp
        from sklearn.neighbors import NearestNeighbors

        from nmfstudy.nmf.graph import _project, cached_knn_graph

        Z, _ = _project(X, [], graph_settings.get("pca"), seed)
        pca_cpu = time.process_time() - c0
        nn = NearestNeighbors(n_neighbors=graph_settings["n_neighbors"], algorithm="brute").fit(Z)
        A = nn.kneighbors_graph(mode="connectivity")
        ref = A.maximum(A.T).tocsr()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        S = cached_knn_graph(X, fp, args["cache"], seed=seed, **graph_settings)  # the graph stage's, from the cache
        same = ((S != 0) != (ref != 0)).nnz == 0 and sp.isspmatrix_csr(S)
        r = row("sklearn brute kNN", _fmt(graph_settings) + f" (PCA {pca_cpu:.1f} s CPU of it)",
                np.zeros(len(y), dtype=int), extra={"nnz": ref.nnz, "same_support": same})
        r.update(wall_s=wall, cpu_s=cpu)
        return [r]
    if name == "kmeans":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(X)
        return [row("K-means", "n_init=10, k-means++", km.labels_, km.n_iter_)]

    from nmfstudy.nmf.graph import cached_knn_graph
    from nmfstudy.nmf.graph_nmf import cluster_rows, gnmf
    from nmfstudy.nmf.initialization import nmf_init
    from nmfstudy.nmf.solvers import nmf_mu

    S = cached_knn_graph(X, fp, args["cache"], seed=seed, **graph_settings) if graph_settings else None
    t0, c0 = time.perf_counter(), time.process_time()  # the fit only: the graph is timed on its own
    if name == "nmf":
        W, H = nmf_init(X, k, "nndsvda", seed)
        res = nmf_mu(X, W, H, max_iter=params["max_iter"], tol=params["tol"])
        for assign in params["assign"]:
            rows.append(row("NMF (MU)", f"nndsvda, tol={params['tol']}, assign={assign}",
                            cluster_rows(res.W, k, assign, seed), res.n_iter))
    elif name == "gnmf":
        W, H = nmf_init(X, k, "nndsvda", seed)
        res = gnmf(X, W, H, S, lam=params["lam"], solver=params["solver"], max_iter=params["max_iter"],
                   tol=params["tol"])
        for assign in params["assign"]:
            rows.append(row(f"GNMF ({params['solver']})",
                            f"{_fmt(graph_settings)}, lam={params['lam']}, tol={params['tol']}, assign={assign}",
                            cluster_rows(res.W, k, assign, seed), res.n_iter))
    elif name == "symnmf":
        # the method as train.py runs it (its start search included), on the cached graph
        from nmfstudy import SymNMF

        settings = {key: params[key] for key in ("solver", "max_iter", "tol", "n_init", "start", "screen_iter")}
        # the estimator keys its cache by the samples' values (data_key), the stages above by fp: one graph build more
        model = SymNMF(k, random_state=seed, **graph_settings, **settings, cache_dir=str(args["cache"])).fit(X)
        t0 += model.graph_time_s_  # the graph's load from the cache is not the fit's
        rows.append(row(f"SymNMF ({params['solver']})", f"{_fmt(graph_settings)}, {_fmt(settings)}, argmax",
                        model.labels_, model.n_iter_, extra={"loss": model.loss_}))
    return rows


def _fmt(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def run_stage(args: dict, name: str, params: dict) -> list[dict]:
    with mp.get_context("spawn").Pool(1) as pool:
        rows = pool.apply(stage, (args, name, params))
    for r in rows:
        print(f"  {r['method']:<16} {r['settings']:<70} hung={r['hungarian']:.4f} maj={r['majority']:.4f} "
              f"nmi={r['nmi']:.4f} wall={r['wall_s']:.1f}s cpu={r['cpu_s']:.1f}s it={r['n_iter']} "
              f"peak={r['peak_gb']:.2f}GB" + (f" purity={r['edge_purity']:.4f}" if "edge_purity" in r else ""),
              flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| method | settings | Hungarian acc | majority acc | NMI | wall s | CPU s | iters | peak RSS GB |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    body = []
    anchor = next((r for r in rows if r["method"] == "sklearn brute kNN"), None)
    for r in rows:
        if r["method"] == "kNN graph":
            ratio = f"; CPU {r['cpu_s'] / anchor['cpu_s']:.2f}x sklearn brute's" if anchor else ""
            body.append(f"| kNN graph | {r['settings']} (nnz {r['nnz']:,}, edges within a class "
                        f"{r['edge_purity']:.3f}{ratio}) | | | | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | | "
                        f"{r['peak_gb']:.2f} |")
        elif r["method"] == "sklearn brute kNN":
            body.append(f"| sklearn brute kNN (anchor) | {r['settings']}, NearestNeighbors(algorithm='brute'), "
                        f"max(A, A^T); same graph as ours: {'yes' if r['same_support'] else 'NO'} | | | | "
                        f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | | {r['peak_gb']:.2f} |")
        else:
            body.append(f"| {r['method']} | {r['settings']} | {r['hungarian']:.4f} | {r['majority']:.4f} | "
                        f"{r['nmi']:.4f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['n_iter']} | "
                        f"{r['peak_gb']:.2f} |")
    return head + "\n".join(body) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--n-samples", type=int, default=None, help="stratified subset (default: all 63,000)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="BLAS threads per stage")
    p.add_argument("--n-neighbors", type=int, default=10)
    p.add_argument("--weight", default="binary", choices=("binary", "heat"))
    p.add_argument("--pca", type=int, default=50, help="0: no PCA before the kNN search")
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--gnmf-solver", default="hals", choices=("mu", "hals"))
    p.add_argument("--max-iter", type=int, default=500)
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--symnmf-solver", default="anls", choices=("mu", "anls"))
    p.add_argument("--symnmf-tol", type=float, default=1e-9)
    p.add_argument("--n-init", type=int, default=3, help="SymNMF starts; the lowest loss is kept")
    p.add_argument("--symnmf-start", default="multilevel", choices=("multilevel", "random"))
    p.add_argument("--screen-iter", type=int, default=50, help="SymNMF: iterations of each start before all but "
                                                               "the best are dropped (0: none dropped)")
    p.add_argument("--methods", default="anchor,kmeans,nmf,gnmf,symnmf",
                   help="after the graph: anchor (scikit-learn's brute-force kNN on the same projection), "
                        "kmeans, nmf, gnmf, symnmf")
    p.add_argument("--grid", action="store_true",
                   help="explore n_neighbors x weight x pca x lam (GNMF, SymNMF only)")
    p.add_argument("--cache", type=Path, default=None, help="graph cache folder (default: a temporary one)")
    p.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    a = p.parse_args(argv)

    from machine import machine_summary

    cache = a.cache or Path(tempfile.mkdtemp(prefix="bench_graph_"))
    args = {"data": a.data, "n_samples": a.n_samples, "k": a.k, "seed": a.seed, "threads": a.threads,
            "cache": cache}
    load0 = os.getloadavg()
    print(machine_summary(), flush=True)
    symnmf_params = {"solver": a.symnmf_solver, "max_iter": a.max_iter, "tol": a.symnmf_tol, "n_init": a.n_init,
                     "start": a.symnmf_start, "screen_iter": a.screen_iter or None}
    rows = []
    if a.grid:
        for nn, weight, pca in itertools.product((5, 10, 15), ("binary", "heat"), (None, 50)):
            g = {"n_neighbors": nn, "weight": weight, "pca": pca}
            rows += run_stage(args, "graph", g)
            for lam in (0.3, 1.0, 3.0):
                rows += run_stage(args, "gnmf", {**g, "lam": lam, "solver": a.gnmf_solver,
                                                 "max_iter": a.max_iter, "tol": a.tol, "assign": ("kmeans",)})
            rows += run_stage(args, "symnmf", {**g, **symnmf_params})
    else:
        g = {"n_neighbors": a.n_neighbors, "weight": a.weight, "pca": a.pca or None}
        rows += run_stage(args, "graph", g)
        methods = a.methods.split(",")
        if "anchor" in methods:
            rows += run_stage(args, "anchor", g)
        if "kmeans" in methods:
            rows += run_stage(args, "kmeans", {})
        if "nmf" in methods:
            rows += run_stage(args, "nmf", {"max_iter": a.max_iter, "tol": a.tol, "assign": ("argmax", "kmeans")})
        if "gnmf" in methods:
            rows += run_stage(args, "gnmf", {**g, "lam": a.lam, "solver": a.gnmf_solver, "max_iter": a.max_iter,
                                             "tol": a.tol, "assign": ("argmax", "kmeans")})
        if "symnmf" in methods:
            rows += run_stage(args, "symnmf", {**g, **symnmf_params})
    load1 = os.getloadavg()
    n = a.n_samples or 63000
    report = (f"## Graph-aware NMF on MNIST ({n:,} x 784, k={a.k})\n\n"
              f"{machine_summary()}\n\n"
              f"Command: `python {' '.join(shlex.quote(s) for s in sys.argv)}`\n\n"
              f"Load average (1/5/15 min) before: {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, "
              f"after: {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} on {os.cpu_count()} cores: other jobs "
              "shared the machine, so wall times are stretched; CPU time is this job's own.\n\n"
              "Each stage ran in a fresh process: peak RSS is that stage's own, data included. "
              "Method times are the fit and assignment only; the graph row times its build "
              "(PCA + chunked kNN search + symmetrisation).\n\n" + table(rows))
    print("\n" + report)
    if a.out:
        a.out.write_text(report)


if __name__ == "__main__":
    main()
