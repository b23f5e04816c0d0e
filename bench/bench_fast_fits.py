"""Fast NMFR and DCD fits (issue 26): the old settings and the new defaults, on all 63,000 MNIST images.

Not a test. Each fit is `bench_clustering`'s stage: the method built as `src/train.py` builds it
(its config file composed by Hydra, the issue's graph: 10-NN binary on PCA 50), fitted in its own
spawned process on the 60,000 training and 3,000 test images stacked, the graph read from the
cache (its build time is reported once per seed), scored with the labels. Two settings per
method: `old` passes the settings before issue 26 explicitly (the anchor); `new` is NMFR's config
defaults (no override), `fast` DCD's fast settings passed explicitly (not its defaults: they lost
accuracy). Before and after run in one invocation on the same machine and load.

    python bench/bench_fast_fits.py --k 10 --methods nmfr,dcd --seeds 0,1,2,3,4 --anchor-seeds 0,1 \\
        --out bench/fast_fits_results.md

Rows go, one JSON object per fit, to the log next to `--out`; the report is written from all
rows of the log (with `--append`, runs of several invocations add up). A "## Notes" section at
the end of the report is kept when it is rewritten.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_clustering import DATA, NOTES, ROOT, run_stage  # noqa: E402
from machine import machine_summary  # noqa: E402

# the multilevel search and refinement as they were before issue 26, passed as overrides
OLD = {
    "nmfr": ["method.embedding=arpack", "method.kmeans_n_init=3", "method.kmeans_rows=null", "method.tol=1e-6",
             "method.max_exponent=1.0", "method.label_tol=0.0", "method.max_iter=300", "method.n_init=2"],
    "dcd": ["method.embedding=arpack", "method.kmeans_n_init=3", "method.kmeans_rows=null",
            "method.max_exponent=1.0", "method.label_tol=0.0", "method.max_iter=1000", "method.n_init=2",
            "method.exact_restarts=50"],
}
# the settings measured against the anchor: NMFR's are its config's defaults; DCD's, which lost accuracy, are not
NEW = {
    "nmfr": ("new", []),
    "dcd": ("fast", ["method.embedding=smooth", "method.kmeans_n_init=1", "method.kmeans_rows=15000",
                     "method.max_exponent=8.0", "method.label_tol=2e-5", "method.label_window=20"]),
}


def report(rows: list[dict], command: str, machine: str) -> str:
    """The Markdown report of every row: a summary per method and setting, then every fit."""
    graph = next((r["settings"] for r in rows if r["method"] == "kNN graph"), "the config's")
    lines = [machine, "", f"Command(s): {command}", "",
             "Data: 63,000 MNIST images (../shared/data/mnist, 60,000 training + 3,000 test stacked), scored "
             f"without a held-out part. Graph: {graph}, cached; `graph build s` is its build (once "
             "per seed, its PCA is seeded), `fit s` the fit's wall time with the cached graph (its load and the "
             "PCA that places new samples included).", ""]
    graphs = {r["seed"]: r for r in rows if r["method"] == "kNN graph"}
    fits = [r for r in rows if r["method"] != "kNN graph"]
    lines += ["| method | settings | k | seeds | Hungarian median (min-max) | majority median | fit s median (max) | "
              "CPU s median | iterations median | peak RSS GB max | load (1-min) |", "|" + "---|" * 11]
    groups: dict[tuple, list[dict]] = {}
    for r in fits:
        groups.setdefault((r["method"], r["label"], r["k"]), []).append(r)

    def med(values):
        return float(np.median(values))

    for (method, label, k), mine in groups.items():
        h = [r["hungarian"] for r in mine]
        lines.append(f"| {method} | {label} | {k} | {','.join(str(r['seed']) for r in mine)} | **{med(h):.4f}** "
                     f"({min(h):.4f}-{max(h):.4f}) | {med([r['majority'] for r in mine]):.4f} | "
                     f"{med([r['wall_s'] for r in mine]):.0f} ({max(r['wall_s'] for r in mine):.0f}) | "
                     f"{med([r['cpu_s'] for r in mine]):.0f} | {med([r['n_iter'] for r in mine]):.0f} | "
                     f"{max(r['peak_gb'] for r in mine):.2f} | {min(r['load'] for r in mine):.1f}-"
                     f"{max(r['load'] for r in mine):.1f} |")
    lines += ["", "Every fit:", "", "| method | settings | k | seed | Hungarian | majority | NMI | loss | iters | "
              "fit s | CPU s | graph build s | peak RSS GB | load |", "|" + "---|" * 14]
    for r in fits:
        g = graphs.get(r["seed"], {})
        lines.append(f"| {r['method']} | {r['label']} | {r['k']} | {r['seed']} | {r['hungarian']:.4f} | "
                     f"{r['majority']:.4f} | {r['nmi']:.4f} | {r['loss']:.7g} | {r['n_iter']} | {r['wall_s']:.1f} | "
                     f"{r['cpu_s']:.1f} | {g.get('wall_s', float('nan')):.1f} | {r['peak_gb']:.2f} | {r['load']:.1f} |")
    lines += ["", "Settings:", ""]
    seen = set()
    for r in fits:
        if (r["method"], r["label"]) not in seen:
            seen.add((r["method"], r["label"]))
            lines.append(f"- {r['method']} {r['label']}: {r['settings']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--methods", default="nmfr,dcd")
    p.add_argument("--seeds", default="0,1,2,3,4", help="seeds of the new (fast) settings")
    p.add_argument("--anchor-seeds", default="0", help="seeds of the old settings ('' for none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--cache", type=Path, default=ROOT / ".cache" / "graphs")
    p.add_argument("--out", type=Path, default=HERE / "fast_fits_results.md")
    p.add_argument("--append", action="store_true")
    a = p.parse_args(argv)
    log = a.out.with_suffix(".jsonl")
    rows = [json.loads(line) for line in log.read_text().splitlines()] if a.append and log.exists() else []
    base = {"data": a.data, "images": "all", "k": a.k, "threads": a.threads, "cache": a.cache}
    methods = a.methods.split(",")
    seeds = [int(s) for s in a.seeds.split(",") if s]
    anchors = [int(s) for s in a.anchor_seeds.split(",") if s]

    def keep(row):
        rows.append(row)
        with log.open("a" if log.exists() and (a.append or len(rows) > 1) else "w") as f:
            f.write(json.dumps(row) + "\n")

    for seed in sorted(set(seeds) | set(anchors)):
        keep(run_stage({**base, "overrides": []}, None, seed))
        for method in methods:
            # before and after side by side, seed by seed: the same load for both as far as it goes
            for label, overrides in (("old", OLD[method]), NEW[method]):
                if seed in (anchors if label == "old" else seeds):
                    keep({**run_stage({**base, "overrides": overrides}, method, seed), "label": label, "k": a.k})
    command = "`python bench/bench_fast_fits.py " + shlex.join(argv if argv is not None else sys.argv[1:]) + "`"
    notes = ""
    if a.out.exists() and NOTES in a.out.read_text():
        notes = a.out.read_text()[a.out.read_text().index(NOTES):]
    a.out.write_text(report(rows, command, machine_summary()) + ("\n" + notes if notes else ""))
    print(a.out)


if __name__ == "__main__":
    main()
