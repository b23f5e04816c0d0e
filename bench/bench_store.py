"""A 100-run study against one SQLite store: is it still readable by search_runs and `mlflow ui`,
and how large are the artifacts of a run?

    python bench/bench_store.py --out bench/store_results.md
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from machine import machine_summary  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--k-max", type=int, default=51, help="k = 2..k_max for nmf and kmeans: 2*(k_max-1) runs")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    ks = ",".join(str(k) for k in range(2, args.k_max + 1))
    sweep = ["-m", "method=nmf,kmeans", f"k={ks}", "dataset.n_samples=500", "method.max_iter=50",
             f"tracking.uri={uri}", f"hydra.sweep.dir={folder / 'multirun'}"]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "src/train.py", *sweep], cwd=ROOT, capture_output=True, text=True)
    sweep_s = time.perf_counter() - start
    if done.returncode:
        sys.exit(done.stderr[-3000:])

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("nmfstudy")
    start = time.perf_counter()
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    search_s = time.perf_counter() - start
    jobs = [r for r in runs if r.data.tags.get("nmfstudy.kind") == "run"]
    statuses = sorted({r.info.status for r in runs})
    sizes = []
    for run in jobs:
        artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
        sizes.append((sum(f.stat().st_size for f in artifacts.rglob("*") if f.is_file()), run))
    sizes.sort(key=lambda item: item[0])
    biggest, biggest_run = sizes[-1]

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                               "--port", str(port)], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        page = urllib.request.urlopen(base, timeout=10).status
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"experiment_ids": [experiment.experiment_id], "max_results": 1000}).encode())
        served = len(json.load(urllib.request.urlopen(request, timeout=30))["runs"])
        artifact = urllib.request.urlopen(
            f"{base}/get-artifact?path=figures/components.png&run_uuid={biggest_run.info.run_id}", timeout=30)
        artifact_ok = artifact.status == 200 and artifact.read(8).startswith(b"\x89PNG")
    finally:
        server.terminate()
        server.wait(timeout=30)

    mean_kib = sum(s for s, _ in sizes) / len(sizes) / 1024
    table = "\n".join([
        "## A 100-run study in one store",
        "",
        machine_summary(),
        "",
        f"Command: `python bench/bench_store.py` (one multirun of `method=nmf,kmeans k=2..{args.k_max}` on mnist_5k "
        "with 500 training images, default figures).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| job runs / all runs (with the parent) | {len(jobs)} / {len(runs)} |",
        f"| run statuses | {', '.join(statuses)} |",
        f"| whole sweep, wall time | {sweep_s:.0f} s |",
        f"| `MlflowClient().search_runs` of all runs | {search_s:.2f} s |",
        f"| `mlflow ui`: page / runs served by its REST API / a PNG artifact | "
        f"HTTP {page} / {served} / {'ok' if artifact_ok else 'FAILED'} |",
        f"| artifacts per run: mean / largest "
        f"(k={biggest_run.data.params['k']}, {biggest_run.data.params['method']}) | "
        f"{mean_kib:.0f} KiB / {biggest / 1024:.0f} KiB |",
        f"| SQLite file after the study | {(folder / 'mlflow.db').stat().st_size / 2**20:.1f} MiB |",
    ])
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
