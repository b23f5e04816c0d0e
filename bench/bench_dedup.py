"""Studies before and after issue 27 (no fit twice, seeds, a space that ends): wall time, trials, fits.

    git worktree add --detach /tmp/before acc342f
    python bench/bench_dedup.py --before /tmp/before --out bench/dedup_results.md

Runs, for each checkout (before, then this one), the same two studies through the real entry point,
each on fresh stores (Optuna SQLite, MLflow SQLite, graph cache) in a temporary folder:
- `hparams_search=kmeans_k dataset=digits hydra.sweeper.n_trials=100` (the issue's 108-point space);
- `hparams_search=nmfr dataset=mnist_5k hydra.sweeper.n_trials=30` (a continuous space: no repeats
  expected, so what is measured there is the bookkeeping's cost).
For each: the wall time of the command, the trials, the distinct points, the fits (MLflow runs that
logged a fit time), the best value; and the machine's load (`uptime`) before and after each command,
since other work shares the cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDIES = {
    "kmeans_k-digits": ["hparams_search=kmeans_k", "dataset=digits", "hydra.sweeper.n_trials=100"],
    "nmfr-mnist_5k-k10": ["hparams_search=nmfr", "dataset=mnist_5k", "hydra.sweeper.n_trials=30"],
}
# The issue's own run, after only (--issue): 400 trials of kmeans_k on digits, on one seed and on three.
ISSUE = [
    ("kmeans_k-digits", ["hparams_search=kmeans_k", "dataset=digits", "hydra.sweeper.n_trials=400"]),
    ("kmeans_k-digits", ["hparams_search=kmeans_k", "dataset=digits", "hydra.sweeper.n_trials=400",
                         "hydra.sweeper.seeds=3"]),
]


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_study(checkout: Path, name: str, overrides: list[str], tmp: Path) -> dict:
    """One study by `checkout`'s own train.py on fresh stores; its time and what the stores hold."""
    tmp.mkdir(parents=True)
    args = [sys.executable, "src/train.py", "-m", *overrides, f"hydra.sweeper.storage=sqlite:///{tmp}/optuna.db",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"hydra.sweep.dir={tmp}/multirun",
            f"graph.cache_dir={tmp}/graphs"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(checkout / "src")
    before = load()
    start = time.perf_counter()
    done = subprocess.run(args, cwd=checkout, env=env, capture_output=True, text=True, timeout=7200)
    wall = time.perf_counter() - start
    after = load()
    if done.returncode != 0:
        raise SystemExit(f"{checkout} {name} failed:\n{done.stderr[-3000:]}")
    counted = subprocess.run([sys.executable, "-c", COUNT, str(tmp), name], env=env, capture_output=True,
                             text=True, check=True)
    stats = json.loads(counted.stdout)
    ended = "every point of the search space" in done.stdout + done.stderr
    return {"wall_s": wall, "load_before": before, "load_after": after, "ended_by_itself": ended, **stats}


# What the stores hold, read in a separate process (so this script imports neither Optuna nor MLflow).
COUNT = r"""
import json, sys
import optuna
import yaml
from mlflow.tracking import MlflowClient
tmp, name = sys.argv[1], sys.argv[2]
study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/optuna.db")
trials = study.get_trials()
points = {json.dumps(t.params, sort_keys=True) for t in trials}
client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=5000)
fits = sum("fit_time_s" in r.data.metrics for r in runs if "optuna.trial_number" in r.data.tags)
# the study's best as its sweeper reports it (after: among each point's trials with the most seeds)
report = yaml.safe_load(open(f"{tmp}/multirun/optimization_results.yaml"))
best = next(iter(report["best_values"].values())) if "best_values" in report else None
seeds = report.get("best_seeds") or {}
fitted = [json.dumps(t.params, sort_keys=True) for t in trials
          if t.state.name in ("COMPLETE", "PRUNED") and t.user_attrs.get("duplicate_of") is None]
most = max((fitted.count(p) for p in set(fitted)), default=0)
cycles = {True: [], False: []}  # from the previous trial's end to this one's: a repeat's, a fit's
for a, b in zip(trials, trials[1:]):
    if a.datetime_complete and b.datetime_complete:
        cycles[b.user_attrs.get("duplicate_of") is not None].append((b.datetime_complete - a.datetime_complete)
                                                                    .total_seconds())
median = {k: sorted(v)[len(v) // 2] if v else None for k, v in cycles.items()}
print(json.dumps({"trials": len(trials), "points": len(points), "fits": fits, "most_fits_per_point": most,
                  "repeats": sum(t.user_attrs.get("duplicate_of") is not None for t in trials), "best": best,
                  "best_seeds": seeds.get("n_seeds", 1), "best_std": next(iter((seeds.get("std") or {None: None})
                                                                              .values())),
                  "repeat_cycle_s": median[True], "fit_cycle_s": median[False]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the commit before (git worktree)")
    parser.add_argument("--after", type=Path, default=ROOT, help="the checkout after (default: this one)")
    parser.add_argument("--studies", default=",".join(STUDIES), help="comma-separated: " + ",".join(STUDIES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "dedup_results.md")
    parser.add_argument("--issue", action="store_true", help="instead: the issue's 400-trial runs, after only")
    args = parser.parse_args()
    commits = {label: subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip() for label, path in (("before", args.before),
                                                                                   ("after", args.after))}
    sys.path.insert(0, str(ROOT / "bench"))
    from machine import machine_summary

    results = []
    studies = ISSUE if args.issue else [(name, STUDIES[name]) for name in args.studies.split(",")]
    versions = (("after", args.after),) if args.issue else (("before", args.before), ("after", args.after))
    with tempfile.TemporaryDirectory(prefix="bench_dedup_") as tmp:
        for i, (name, overrides) in enumerate(studies):
            for label, checkout in versions:
                row = run_study(checkout.resolve(), name, overrides, Path(tmp) / f"{label}-{i}")
                row.update({"study": " ".join(o for o in overrides if not o.startswith("hparams")),
                            "version": f"{label} ({commits[label]})"})
                print(json.dumps(row), flush=True)
                results.append(row)
    title = "The issue's 400-trial runs" if args.issue else "Studies before and after issue 27"
    lines = [f"# {title} (`python bench/bench_dedup.py {'--issue ' if args.issue else ''}--before CHECKOUT`)",
             "", machine_summary(), "",
             "| study | version | wall s | trials | distinct points | fits | most fits of a point | repeats (no fit) "
             "| best | best's seeds (std) | median cycle s, repeat / fit | ended by itself | load before / after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        best = f"{r['best']:.4f}" if r["best"] is not None else "-"
        spread = f" ({r['best_std']:.4f})" if r.get("best_std") is not None else ""
        cycle = " / ".join(f"{r[key]:.2f}" if r.get(key) is not None else "-" for key in ("repeat_cycle_s",
                                                                                          "fit_cycle_s"))
        lines.append(f"| {r['study']} | {r['version']} | {r['wall_s']:.0f} | {r['trials']} | {r['points']} | "
                     f"{r['fits']} | {r['most_fits_per_point']} | {r['repeats']} | {best} | {r['best_seeds']}{spread} "
                     f"| {cycle} | {'yes' if r['ended_by_itself'] else 'no'} "
                     f"| {r['load_before']} / {r['load_after']} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
