"""Run a fixed set of sweeps on scikit-learn's digits and write every run's metrics as JSON.

Times are left out (they vary); everything else is kept to the last digit, loss histories
included. Run it on two commits and compare the files, to show that a change of structure
left every number where it was:

    python bench/sweep_metrics.py before.json            # in a checkout of the old commit
    python bench/sweep_metrics.py after.json --compare before.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# every method, both sparsity variants on both of our solvers, scikit-learn's solvers and both assignment rules
SWEEPS = [
    ["method=nmf,kmeans,minibatch_kmeans,gnmf,symnmf", "k=5,10", "dataset=digits"],
    ["sparsity=l1,hoyer", "method.solver=hals,mu", "dataset=digits", "k=8"],
    ["method.solver=sklearn-cd,sklearn-mu", "method.assign=argmax,kmeans", "dataset=digits", "k=6"],
]
KEY_PARAMS = ("method", "k", "sparsity", "method.solver", "method.assign")


def run_sweeps(store: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    for overrides in SWEEPS:
        subprocess.run([sys.executable, "src/train.py", "-m", *overrides, f"hydra.sweep.dir={tempfile.mkdtemp()}"],
                       cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def collect(store: Path) -> dict[str, dict]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("nmfstudy")
    table = {}
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        if run.data.tags.get("nmfstudy.kind") != "run":
            continue
        key = " ".join(f"{k}={v}" for k, v in sorted(run.data.params.items()) if k in KEY_PARAMS)
        metrics = {k: v for k, v in run.data.metrics.items() if "time" not in k}
        metrics["loss_history"] = [m.value for m in client.get_metric_history(run.info.run_id, "loss")]
        table[key] = metrics
    return dict(sorted(table.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--compare", type=Path, help="an earlier output: print every value that differs")
    args = parser.parse_args()
    store = Path(tempfile.mkdtemp()) / "mlflow.db"
    run_sweeps(store)
    table = collect(store)
    args.out.write_text(json.dumps(table, indent=1, sort_keys=True))
    print(f"{len(table)} runs, {sum(len(v) for v in table.values())} values -> {args.out}")
    if args.compare:
        before = json.loads(args.compare.read_text())
        differ = [(run, name) for run in before.keys() | table.keys()
                  for name in before.get(run, {}).keys() | table.get(run, {}).keys()
                  if before.get(run, {}).get(name) != table.get(run, {}).get(name)]
        print(f"differences from {args.compare}: {len(differ)}", *differ[:20], sep="\n")


if __name__ == "__main__":
    main()
