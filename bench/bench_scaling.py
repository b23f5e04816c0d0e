"""Scaling on MNIST: fit time and peak memory of hals, scikit-learn cd, K-means and SymNMF as n and k grow.

Not a test. Each (method, n, k) cell is one fit in a fresh process, so that its peak resident
memory is its own. The method is what a user gets: its config file composed by Hydra, as
`python src/train.py method=<method> k=<k>` resolves it (bench_clustering.compose), built by
`nmfstudy.config.build_estimator`, at its default settings:

    hals        method=nmf                         (solver hals, init nndsvda, tol 1e-4, max_iter 500)
    sklearn-cd  method=nmf method.solver=sklearn-cd (scikit-learn's coordinate descent, same start)
    kmeans      method=kmeans                      (scikit-learn's KMeans, k-means++, n_init 10)
    symnmf      method=symnmf                      (the default kNN graph, then ANLS, n_init 10)

The data are the 60,000 training and the 3,000 test images of the IDX folder, stacked (63,000 x 784,
float32 in [0, 1]) as in bench_solvers.py and bench_graph.py; a smaller n is a subset stratified by
label (bench_graph.load: scikit-learn's train_test_split, random_state=seed). Cells grow as two
sweeps: n grows at k = --n-k (default 10), and k grows at the largest n.

"fit s" is the wall time of `method.fit(X)`, everything a user waits for inside it (the NMF start,
SymNMF's kNN graph, which is built afresh in every cell: no graph cache). SymNMF also reports its
graph's share ("graph s"). The process is killed when a fit passes --cap seconds (the cell reads
"> cap"), and a method that passed the cap at (n, k) is not run at any cell with at least as many
samples and components ("> cap, not run"). Peak memory is the high-water resident set of the
fit's process, reset just before the fit (so loading the full data set to take a subset does not
count): the fit's peak with the data, the interpreter and the libraries in memory; "fit extra" is
that peak minus the resident set just before the fit. Growth exponents are least-squares slopes
on log-log over the cells that finished. Cells run in order of growing n * k, every method per cell.

    flock /tmp/nmfstudy-bench.lock python bench/bench_scaling.py --out bench/scaling_results.md \
        --log /tmp/nmfstudy-scaling.jsonl     # the full table; rerun the same command to resume
    flock /tmp/nmfstudy-bench.lock python bench/bench_scaling.py --n 5000 15000 --k 10 20 --cap 120
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DATA = Path("/work/shared/data/mnist")
# the name in this benchmark -> (method config, extra overrides): each at its config file's defaults
METHODS = {
    "hals": ("nmf", []),
    "sklearn-cd": ("nmf", ["method.solver=sklearn-cd"]),
    "kmeans": ("kmeans", []),
    "symnmf": ("symnmf", []),
}
MIN_CELLS = 3  # finished cells a sweep needs before its exponents are extrapolated
REACH = 10  # extrapolate at most this factor beyond the largest finished cell
SETUP_S = 300  # seconds a child may take beyond the cap (imports, loading the data, the config)


# --------------------------------------------------------------------------- one cell, in a fresh process


def _reset_peak() -> tuple[int, str | None]:
    """Reset the kernel's peak-RSS mark; return the resident KiB now and the field that then holds the peak."""
    from bench_solvers import _status_kib

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS"), "VmHWM"
    except OSError:  # no /proc (not Linux): the process's peak since it started
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, None


def child(spec: dict) -> dict:
    """Load the data, build the method as the pipeline does, fit it once under the cap; one result row."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(spec["threads"])
    from bench_clustering import compose
    from bench_graph import load
    from bench_solvers import _status_kib

    from nmfstudy import config as settings
    from nmfstudy.metrics import hungarian_accuracy

    X, y = load(Path(spec["data"]), spec["n"], spec["seed"])
    if len(X) != spec["n"]:
        raise SystemExit(f"asked for {spec['n']} images; the data hold {len(X)}")
    name, overrides = METHODS[spec["method"]]
    cfg = compose(name, spec["k"], spec["seed"], [*overrides, *spec["overrides"]])
    settings.check(cfg, optimized=False)
    model = settings.build_estimator(cfg, X)  # no cache: a graph method builds its graph in the fit
    gc.collect()
    before, peak_field = _reset_peak()
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the alarm kills the process, even inside BLAS
    signal.alarm(max(1, math.ceil(spec["cap"])))
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(X)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    signal.alarm(0)
    peak = _status_kib(peak_field) if peak_field else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    shown = ", ".join(f"{key}={value}" for key, value in cfg["method"].items() if key not in ("name", "_target_"))
    if "graph" in cfg and hasattr(model, "graph_time_s_"):
        shown += ", graph: " + ", ".join(f"{key}={value}" for key, value in cfg["graph"].items()
                                         if key != "cache_dir")
    graph_s = getattr(model, "graph_time_s_", None)
    return {"fit_s": wall, "cpu_s": cpu, "graph_s": None if graph_s is None else float(graph_s),
            "peak_gb": peak / 2**20, "extra_gb": (peak - before) / 2**20, "n_iter": int(model.n_iter_),
            "loss": float(model.loss_), "hungarian": hungarian_accuracy(y, model.labels_, spec["k"]),
            "settings": f"{shown}, init={cfg['init']['name']}"}


def run_cell(spec: dict) -> dict:
    """One cell in a fresh interpreter; the row with its status (ok, cap, failed) and the load around it."""
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=spec["cap"] + SETUP_S)
    except subprocess.TimeoutExpired:  # stuck before the fit started: its alarm was not set yet
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    row = {key: spec[key] for key in ("method", "n", "k")}
    if proc.returncode == -signal.SIGALRM:
        row["status"] = "cap"
    elif proc.returncode == 0:
        row.update(json.loads(out.strip().splitlines()[-1]), status="ok")
    else:
        last = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        row.update(status="failed", error=f"{last} (exit status {proc.returncode})")
    row.update(load_before=load0, load_after=os.getloadavg()[0], cell_s=time.perf_counter() - t0)
    return row


# --------------------------------------------------------------------------- the grid, the fits, the report


def cells(ns: list[int], ks: list[int], n_k: int) -> list[tuple[int, int]]:
    """The (n, k) cells of both sweeps, in order of growing n * k (then n)."""
    grid = {(n, n_k) for n in ns} | {(max(ns), k) for k in ks}
    return sorted(grid, key=lambda c: (c[0] * c[1], c[0]))


def exponent(rows: list[dict], x: str, y: str) -> tuple[float, int] | None:
    """The slope of log(y) on log(x) over the finished rows, and how many there were; None below 2 points."""
    done = [r for r in rows if r["status"] == "ok" and r[y] > 0]
    if len({r[x] for r in done}) < 2:
        return None
    slope = np.polyfit(np.log([r[x] for r in done]), np.log([r[y] for r in done]), 1)[0]
    return float(slope), len(done)


def _cell_text(r: dict, cap: float) -> list[str]:
    """fit s, graph s, CPU s, peak GB, fit extra GB, iters, accuracy of one row."""
    if r["status"] == "cap":
        return [f"> {cap:g} (killed)"] + [""] * 6
    if r["status"] == "skipped":
        return [f"> {cap:g}, not run"] + [""] * 6
    if r["status"] == "failed":
        return [f"failed: {r['error']}"] + [""] * 6
    graph = "" if r["graph_s"] is None else f"{r['graph_s']:.1f}"
    return [f"{r['fit_s']:.2f}", graph, f"{r['cpu_s']:.1f}", f"{r['peak_gb']:.2f}", f"{r['extra_gb']:.2f}",
            str(r["n_iter"]), f"{r['hungarian']:.4f}"]


def sweep_table(rows: list[dict], methods: list[str], pick, x: str, cap: float) -> list[str]:
    out = [f"| method | {x} | fit s | graph s | CPU s | peak GB | fit extra GB | iters | Hungarian acc | "
           "load before-after |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method in methods:
        for r in sorted((r for r in rows if r["method"] == method and pick(r)), key=lambda r: r[x]):
            load = f"{r['load_before']:.1f}-{r['load_after']:.1f}" if "load_before" in r else ""
            out.append(f"| {method} | {r[x]:,} | " + " | ".join(_cell_text(r, cap)) + f" | {load} |")
    return out


def _limit_x(last: dict, x: str, fits: dict, limit_s: float, limit_gb: float) -> tuple[float, str] | None:
    """Where the fitted exponents take the last finished cell past a limit: (x there, which limit)."""
    found = []
    for key, limit, what in (("fit_s", limit_s, f"{limit_s:g} s"), ("peak_gb", limit_gb, f"{limit_gb:g} GB")):
        slope = fits.get(key)
        if slope and slope[1] >= MIN_CELLS and slope[0] > 0.05:
            found.append((last[x] * (limit / last[key]) ** (1 / slope[0]), what))
    return min(found) if found else None


def practical(rows: list[dict], x: str, label: str, fits: dict, limit_s: float, limit_gb: float,
              cap: float) -> str:
    """One clause: the first cell of a sweep past a limit, or where the fitted exponents put it."""
    rows = sorted(rows, key=lambda r: r[x])
    if not rows:
        return f"as {label}: no cells"
    for i, r in enumerate(rows):
        over = (f"ran past the {cap:g} s cap" if r["status"] == "cap" else "was not run (a smaller cell passed the cap)"
                if r["status"] == "skipped" else "failed" if r["status"] == "failed" else
                f"took {r['fit_s']:.0f} s" if r["fit_s"] > limit_s else
                f"peaked at {r['peak_gb']:.1f} GB" if r["peak_gb"] > limit_gb else None)
        if over:
            before = (f"; the last practical cell is {x}={rows[i - 1][x]:,} ({rows[i - 1]['fit_s']:.1f} s, "
                      f"{rows[i - 1]['peak_gb']:.2f} GB)" if i and rows[i - 1]["status"] == "ok" else "")
            return f"as {label}: stops being practical at {x}={r[x]:,}, which {over}{before}"
    last = rows[-1]
    text = (f"as {label}: practical at every cell measured (largest, {x}={last[x]:,}: {last['fit_s']:.1f} s, "
            f"{last['peak_gb']:.2f} GB)")
    reach = _limit_x(last, x, fits, limit_s, limit_gb)
    if reach and reach[0] <= REACH * last[x]:
        text += f"; the fitted exponents put {reach[1]} at about {x}={reach[0]:,.0f} (an extrapolation)"
    elif reach or len(rows) >= MIN_CELLS:
        text += f"; the fitted exponents reach no limit within {REACH}x that {x}"
    return text


def report(rows: list[dict], methods: list[str], a, n_max: int, command: str, machine: str, started: str) -> str:
    """The Markdown report: both sweeps, the fitted exponents, a sentence per method."""
    def by_n(r):
        return r["k"] == a.n_k

    def by_k(r):
        return r["n"] == n_max

    out = ["## Scaling on MNIST: fit time and peak memory as n and k grow\n", f"{machine}\n",
           f"Command: `{command}` (started {started}; BLAS/OpenMP threads per fit: {a.threads}; cap {a.cap:g} s "
           f"per fit).\n",
           f"Data: {n_max:,} x 784 at most; the 60,000 training and the test images of {a.data} stacked, smaller n "
           f"a subset stratified by label (seed {a.seed}). Every fit in a fresh process. `fit s`: wall time of "
           "`method.fit(X)` (NMF start and SymNMF's kNN graph included; SymNMF's graph, built afresh in every cell, "
           "also in `graph s`); `peak GB`: the fit's high-water resident set (data, interpreter and libraries "
           "included); `fit extra GB`: that peak minus the resident set just before the fit; `Hungarian acc` on "
           "the fitted images, a sanity check. `load`: the 1-minute load average before and after the cell, on "
           f"{os.cpu_count()} cores.\n",
           f"The {sum('cell_s' in r for r in rows)} cells run took {sum(r.get('cell_s', 0.0) for r in rows):.0f} s "
           f"of wall time in all, of which fits {sum(r.get('fit_s', 0.0) for r in rows):.0f} s (the rest: each "
           "process's imports, data and config; a killed fit counts in the first only).\n",
           f"### As the data grow (k={a.n_k})\n", *sweep_table(rows, methods, by_n, "n", a.cap),
           f"\n### As k grows (n={n_max:,})\n", *sweep_table(rows, methods, by_k, "k", a.cap),
           "\n### Growth exponents (least squares on log-log over the finished cells; number of cells)\n",
           "| method | time ~ n^a | peak ~ n^a | fit extra ~ n^a | time ~ k^b | peak ~ k^b | fit extra ~ k^b |",
           "|---|---|---|---|---|---|---|"]
    fits = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        fits[method] = {sweep: {y: exponent([r for r in mine if pick(r)], sweep, y)
                                for y in ("fit_s", "peak_gb", "extra_gb")}
                        for sweep, pick in (("n", by_n), ("k", by_k))}
        cells_text = [f"{e[0]:.2f} ({e[1]})" if e else "n/a" for sweep in ("n", "k")
                      for e in fits[method][sweep].values()]
        out.append(f"| {method} | " + " | ".join(cells_text) + " |")
    out.append(f"\n### Where each method stops being practical on {os.cpu_count()} cores (over {a.limit_s:g} s or "
               f"over {a.limit_gb:g} GB per fit; computed from the cells above)\n")
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        clauses = [practical([r for r in mine if by_n(r)], "n", f"n grows at k={a.n_k}", fits[method]["n"],
                             a.limit_s, a.limit_gb, a.cap),
                   practical([r for r in mine if by_k(r)], "k", f"k grows at n={n_max:,}", fits[method]["k"],
                             a.limit_s, a.limit_gb, a.cap)]
        out.append(f"- **{method}**: " + "; ".join(clauses) + ".")
    settings = {r["method"]: r["settings"] for r in rows if r.get("settings")}
    out.append("\nSettings (each method's config file at its defaults):\n")
    out += [f"- {method}: {settings[method]}" for method in methods if method in settings]
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--n", type=int, nargs="+", default=[5000, 15000, 30000, 63000], help="sample counts (at --n-k)")
    p.add_argument("--k", type=int, nargs="+", default=[10, 20, 50, 100, 200], help="k values (at the largest n)")
    p.add_argument("--n-k", type=int, default=10, help="k of the sweep over n")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--cap", type=float, default=600.0, help="seconds a fit may take before it is killed")
    p.add_argument("--limit-s", type=float, default=600.0, help="a fit longer than this is not practical")
    p.add_argument("--limit-gb", type=float, default=8.0, help="a fit whose peak passes this is not practical")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="BLAS and OpenMP threads per fit")
    p.add_argument("--override", action="append", default=[], help="extra config override for every method")
    p.add_argument("--out", type=Path, default=None, help="write the Markdown report here (after every cell)")
    p.add_argument("--log", type=Path, default=None,
                   help="JSON lines of every cell; the cells already in it are not run again (resume)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(json.loads(a.child))), flush=True)
        return

    from machine import machine_summary

    machine = machine_summary()
    command = shlex.join(["python", *sys.argv])
    started = time.strftime("%Y-%m-%d %H:%M")
    print(machine, flush=True)
    rows = [json.loads(line) for line in a.log.read_text().splitlines()] if a.log and a.log.exists() else []
    done = {(r["method"], r["n"], r["k"]) for r in rows}
    n_max = max(a.n)
    for n, k in cells(a.n, a.k, a.n_k):
        for method in a.methods:
            if (method, n, k) in done:
                continue
            # passed the cap with no more samples and no more components: this one would too
            if any(r["method"] == method and r["status"] in ("cap", "skipped") and r["n"] <= n and r["k"] <= k
                   for r in rows):
                row = {"method": method, "n": n, "k": k, "status": "skipped"}
            else:
                row = run_cell({"method": method, "n": n, "k": k, "seed": a.seed, "cap": a.cap, "data": str(a.data),
                                "threads": a.threads, "overrides": a.override})
            rows.append(row)
            print(json.dumps(row), flush=True)
            if a.log:
                with a.log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            if a.out:
                a.out.write_text(report(rows, a.methods, a, n_max, command, machine, started))
    text = report(rows, a.methods, a, n_max, command, machine, started)
    print("\n" + text)
    if a.out:
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
