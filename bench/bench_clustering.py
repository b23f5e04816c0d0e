"""Clustering full MNIST at k=10: every method at its default settings, several seeds, one fresh process per fit.

Not a test. Each method is built exactly as `src/train.py` builds it (its config file, composed
by Hydra, plus the overrides given here; no setting of its own), on the data as the run loads them
(the data set's own preprocessing, `dataset.deskew`, included), fitted on all 63,000 images of the
IDX folder (the 60,000 training and the test images stacked; `--images train`: the training images
only), and scored on
them with the labels (Hungarian and majority-vote accuracy, NMI). Every fit runs
in its own spawned process, so that its peak resident memory (ru_maxrss) is its own; graph
methods read the kNN graph from the cache that the first stage builds (its time is reported
once, on its own line). Wall time, CPU time and the load average are recorded per fit: other
jobs on the machine stretch wall time, not CPU time.

    python bench/bench_clustering.py --methods nmfr,dcd --seeds 0,1,2,3,4 --out bench/clustering_results.md
    python bench/bench_clustering.py --methods symnmf,gnmf,kmeans,nmf --seeds 0 --append

Rows are also appended, one JSON object per fit, to `--log` (default: next to `--out`), and the
Markdown report is written from all rows of that log, so runs of several invocations add up (with
`--append`); a "## Notes" section at the end of the report is kept when it is rewritten.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

DATA = ROOT.parent / "shared" / "data" / "mnist"
# a row shows the method's own settings, not the run's keys interpolated into it (k, seed, init, the cache)
HIDDEN = ("name", "_target_", "n_clusters", "n_components", "random_state", "init", "cache_dir")
GRAPH_METHODS = ("gnmf", "symnmf", "nmfr", "dcd")
NOTES = "## Notes"  # a report's hand-written part from this heading on survives its regeneration


def compose(method: str, k: int, seed: int, overrides: list[str]) -> dict:
    """The run config that `python src/train.py method=<method> k=<k> seed=<seed> <overrides>` resolves."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"method={method}", f"k={k}", f"seed={seed}", "dataset=mnist",
                                                 *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def stage(args: dict, method: str | None, seed: int) -> dict:
    """One fit (or, with method None, the graph build for that seed: its PCA is seeded) in this fresh process."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(args["threads"])
    from sklearn.metrics import normalized_mutual_info_score

    from nmfstudy import config as settings
    from nmfstudy.data import load_dataset
    from nmfstudy.metrics import hungarian_accuracy, majority_accuracy
    from nmfstudy.nmf.graph import cached_graph_and_index, data_key

    # the graph stage composes the run's first method, so that its overrides (method.*) apply
    cfg = compose(method or args.get("methods", ["nmfr"])[0], k := args["k"], seed, args["overrides"])
    settings.check(cfg)
    data = load_dataset("mnist", dir=str(args["data"]), deskew=cfg["dataset"]["deskew"])
    if args["images"] == "all":  # clustering has no held-out part: the full MNIST is every image
        data = dataclasses.replace(data, X_train=np.concatenate([data.X_train, data.X_test]),
                                   y_train=np.concatenate([data.y_train, data.y_test]))
    X, y = data.X_train, data.y_train
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    if method is None:  # the graph the graph methods read, built into the cache as they would build it
        graph = {key: cfg["graph"][key] for key in ("n_neighbors", "weight", "normalize", "pca")}
        # and the neighbour index that the fits keep (its PCA is the graph's), as the graph methods cache them
        S, _ = cached_graph_and_index(X, data_key(X), args["cache"], **graph, seed=seed)
        shown = ", ".join(f"graph.{key}={value}" for key, value in graph.items())
        return {"method": "kNN graph", "seed": seed, "n": len(X),
                "settings": f"{shown}, dataset.deskew={cfg['dataset']['deskew']} (nnz {S.nnz:,})",
                "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "peak_gb": _peak_gb(),
                "load": (load0 + os.getloadavg()[0]) / 2}
    model = settings.build_estimator(cfg, X).set_params(**({"cache_dir": str(args["cache"])} if method in GRAPH_METHODS
                                                             else {}))
    model.fit(X)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    shown = {key: value for key, value in cfg["method"].items() if key not in HIDDEN}
    return {"method": method, "seed": seed, "n": len(X),
            "settings": ", ".join(f"{key}={value}" for key, value in shown.items()) + f", init={cfg['init']['name']}"
                        f", dataset.deskew={cfg['dataset']['deskew']}",
            "hungarian": hungarian_accuracy(y, model.labels_, k), "majority": majority_accuracy(y, model.labels_, k),
            "nmi": float(normalized_mutual_info_score(y, model.labels_)), "loss": float(model.loss_),
            "n_iter": int(model.n_iter_), "wall_s": wall, "cpu_s": cpu,
            "graph_s": float(getattr(model, "graph_time_s_", 0.0)), "peak_gb": _peak_gb(),
            "load": (load0 + os.getloadavg()[0]) / 2}


def run_stage(args: dict, method: str | None, seed: int) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        row = pool.apply(stage, (args, method, seed))
    print(json.dumps(row), flush=True)
    return row


def report(rows: list[dict], command: str, machine: str) -> str:
    """The Markdown report: a summary per method (median and lowest of the seeds), then every fit."""
    fits = [r for r in rows if r["method"] != "kNN graph"]
    graphs = [r for r in rows if r["method"] == "kNN graph"]
    out = [f"{machine}\n", f"Command(s): `{command}`\n"]
    sizes = sorted({r.get("n", 60000) for r in rows})  # rows of older logs: the 60,000 training images
    out.append(f"Data: {' and '.join(f'{n:,}' for n in sizes)} MNIST images (../shared/data/mnist), fitted and "
               "scored without a held-out part.\n")
    if graphs:
        g = max(graphs, key=lambda r: r["wall_s"])  # a build, not a load from the cache
        out.append(f"kNN graph ({g['settings']}): built in {g['wall_s']:.0f} s wall, {g['cpu_s']:.0f} s CPU, "
                   f"peak {g['peak_gb']:.2f} GB, once per seed (its PCA is seeded) and cached. `fit s` below is "
                   "the fit's wall time without the graph (a graph built inside a fit is in `graph s`).\n")
    out.append("| method | seeds | Hungarian median (min-max) | majority median | NMI median | fit s median "
               "(max) | CPU s median | peak RSS GB max | load (1-min avg) |\n|---|---|---|---|---|---|---|---|---|")
    for method in dict.fromkeys(r["method"] for r in fits):
        mine = [r for r in fits if r["method"] == method]

        def med(key, mine=mine):
            return float(np.median([r[key] for r in mine]))

        hung = [r["hungarian"] for r in mine]
        fit = [r["wall_s"] - r.get("graph_s", 0.0) for r in mine]
        out.append(f"| {method} | {','.join(str(r['seed']) for r in mine)} | **{med('hungarian'):.4f}** "
                   f"({min(hung):.4f}-{max(hung):.4f}) | {med('majority'):.4f} | {med('nmi'):.4f} | "
                   f"{np.median(fit):.0f} ({max(fit):.0f}) | {med('cpu_s'):.0f} | "
                   f"{max(r['peak_gb'] for r in mine):.2f} | {min(r['load'] for r in mine):.1f}-"
                   f"{max(r['load'] for r in mine):.1f} |")
    out.append("\nEvery fit:\n\n| method | seed | Hungarian | majority | NMI | loss | iters | fit s | graph s | "
               "CPU s | peak RSS GB | load |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in fits:
        out.append(f"| {r['method']} | {r['seed']} | {r['hungarian']:.4f} | {r['majority']:.4f} | {r['nmi']:.4f} | "
                   f"{r['loss']:.6g} | {r['n_iter']} | {r['wall_s'] - r.get('graph_s', 0.0):.0f} | "
                   f"{r.get('graph_s', 0.0):.0f} | {r['cpu_s']:.0f} | {r['peak_gb']:.2f} | {r['load']:.1f} |")
    out.append("\nSettings (each method's config file, plus the graph options above):\n")
    for method in dict.fromkeys(r["method"] for r in fits):
        out.append(f"- {method}: {next(r['settings'] for r in fits if r['method'] == method)}")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--images", choices=("all", "train"), default="all",
                   help="fit all images of the folder (63,000) or the 60,000 training images")
    p.add_argument("--methods", default="nmfr,dcd,symnmf,gnmf,kmeans,nmf")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--threads", type=int, default=2, help="BLAS threads per fit")
    p.add_argument("--cache", type=Path, default=ROOT / ".cache" / "graphs", help="graph cache folder")
    p.add_argument("--override", action="append", default=[], help="extra config override, e.g. method.n_init=1")
    p.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    p.add_argument("--log", type=Path, default=None, help="JSON lines of every fit (default: <out>.jsonl)")
    p.add_argument("--append", action="store_true", help="keep the rows already in the log")
    a = p.parse_args(argv)

    from machine import machine_summary

    args = {"data": a.data, "images": a.images, "k": a.k, "threads": a.threads, "cache": a.cache,
            "overrides": a.override, "methods": a.methods.split(",")}
    log = a.log or (a.out.with_suffix(".jsonl") if a.out else None)
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log and a.append and log.exists() else []
    machine = machine_summary()
    print(machine, flush=True)

    def keep(row):
        rows.append(row)
        if log:
            with log.open("a" if a.append or len(rows) > 1 else "w") as f:
                f.write(json.dumps(row) + "\n")

    for seed in (int(s) for s in a.seeds.split(",")):
        keep(run_stage(args, None, seed))
        for method in a.methods.split(","):
            keep(run_stage(args, method, seed))
    if a.out:
        command = shlex.join(["python", *sys.argv])
        commands = (a.out.with_suffix(".commands").read_text().splitlines() if a.append and
                    a.out.with_suffix(".commands").exists() else []) + [command]
        a.out.with_suffix(".commands").write_text("\n".join(commands) + "\n")
        notes = a.out.read_text().partition(NOTES)[2] if a.out.exists() else ""
        a.out.write_text(report(rows, "` ; `".join(commands), machine) + (f"\n{NOTES}{notes}" if notes else ""))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
