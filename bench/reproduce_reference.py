"""Reproduce the reference results on full MNIST with the matching configs, through the real entry point.

    python bench/reproduce_reference.py --data ../shared/data/mnist --out bench/reference_results.md

Reference (reports this study grew from, full MNIST): NMF k=10, random init, 500 multiplicative
updates, argmax clusters: 0.34 Hungarian accuracy; K-means k=10, n_init=10: 0.53 Hungarian;
MiniBatchKMeans with majority-vote labels: 0.58 at k=10, 0.81 at k=50.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from machine import machine_summary  # noqa: E402

CASES = [
    # (label, reference metric, reference value, overrides)
    ("NMF k=10, random init, 500 MU iterations, argmax", "hungarian_accuracy", 0.34,
     ["method=nmf", "k=10", "init=random", "method.solver=mu", "method.max_iter=500", "method.tol=0"]),
    ("K-means k=10, n_init=10", "hungarian_accuracy", 0.53, ["method=kmeans", "k=10", "method.n_init=10"]),
    ("MiniBatchKMeans k=10, majority vote", "accuracy", 0.58, ["method=minibatch_kmeans", "k=10"]),
    ("MiniBatchKMeans k=50, majority vote", "accuracy", 0.81, ["method=minibatch_kmeans", "k=50"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--store", default=None, help="MLflow sqlite file (default: a temporary one)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    store = Path(args.store or Path(tempfile.mkdtemp()) / "mlflow.db").resolve()
    uri = f"sqlite:///{store}"
    rows = []
    for label, metric, reference, overrides in CASES:
        command = [sys.executable, "src/train.py", "dataset=mnist", f"dataset.dir={args.data}", *overrides,
                   f"tracking.uri={uri}", "tracking.experiment=reference", f"hydra.run.dir={store.parent / 'outputs'}"]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{label} failed:\n{done.stderr[-2000:]}")
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("reference")
        run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
        m = run.data.metrics
        rows.append(f"| {label} | `{' '.join(overrides)}` | {metric} | {reference:.2f} | **{m[metric]:.3f}** | "
                    f"{m['accuracy']:.3f} | {m['hungarian_accuracy']:.3f} | {m['nmi']:.3f} | "
                    f"{m['test_accuracy']:.3f} | {m['fit_time_s']:.1f} | {int(m['n_iter'])} |")
        print(rows[-1], flush=True)
    table = "\n".join([
        "## Reference results reproduced (full MNIST)",
        "",
        machine_summary(),
        "",
        f"Command: `python bench/reproduce_reference.py --data {args.data}` (each row is one "
        f"`python src/train.py dataset=mnist dataset.dir=... <overrides>`; fitted on the 60,000 training images, "
        "test accuracy on the 3,000 test images of the shared folder).",
        "",
        "| reference | overrides | metric | reference | ours | accuracy | hungarian | NMI | test acc. | fit s | "
        "iterations |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
