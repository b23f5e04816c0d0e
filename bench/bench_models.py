"""What a run's logged model costs on full MNIST: its size on disk, its load time, its predict time.

Not a test. Each method is built as `src/train.py` builds it (its config file composed by Hydra
with `dataset=mnist k=10 seed=0`, then `nmfstudy.config.build_estimator`), fitted once on all
63,000 images of the IDX folder (the 60,000 training and the 10,000 test images stacked, as
bench/bench_clustering.py does) and logged with `nmfstudy.tracking.models.log_model` (the call
a run makes, with the majority-vote label map) into a temporary SQLite store. The graph methods
are measured twice: with the default graph (no PCA: the index keeps the 63,000 images as uint8)
and with `graph.pca=50` (the index keeps the PCA and the 63,000 projected images, float32).

`--max-iter` and `--n-init` cap the fit (a model's size does not depend on how long it was
fitted, only on its shape and the training samples a graph method keeps), so the fits here are
not the ones of bench/clustering_63k_k10_results.md. For each model:

- size: the logged model's folder (MLmodel, the pickle, the input example, the requirements and
  the package's own code, which travels with every model: ``code/``), and the pickle alone;
- load: `mlflow.pyfunc.load_model("models:/<model id>")` in a fresh process (the import of
  mlflow.pyfunc not included; the process's wall time beside it), median of `--loads`;
- predict: the loaded pyfunc's `predict` on 1,000 images (the last 1,000 stacked, the test
  images), in the same fresh processes, median; checked equal to the fitted estimator's.

    python bench/bench_models.py --out bench/models_results.md

Rows are appended, one JSON object per model, to `--log` (default: next to `--out`), and the
report is written from all rows of that log.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from machine import machine_summary  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "mnist"
METHODS = ("nmf", "kmeans", "minibatch_kmeans", "gnmf", "symnmf", "nmfr", "dcd")
GRAPH_METHODS = ("gnmf", "symnmf", "nmfr", "dcd")
GRAPHS = {"default": [], "pca50": ["graph.pca=50"]}

# run in a fresh process: argv = model URI, images (.npy); prints the timings as JSON
LOADER = """
import json, sys, time
t0 = time.perf_counter()
import mlflow.pyfunc
import numpy as np
t1 = time.perf_counter()
model = mlflow.pyfunc.load_model(sys.argv[1])
t2 = time.perf_counter()
X = np.load(sys.argv[2])
t3 = time.perf_counter()
clusters = model.predict(X)
t4 = time.perf_counter()
np.save(sys.argv[3], clusters)
print("TIMES " + json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "predict_s": t4 - t3}), flush=True)
"""


def compose(method: str, overrides: list[str]) -> dict:
    """The run config that `python src/train.py method=<method> dataset=mnist k=10 seed=0 <overrides>` resolves."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"method={method}", "k=10", "seed=0", "dataset=mnist",
                                                 f"dataset.dir={DATA}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(method: str, graph: str, data, args, work: Path) -> dict:
    """Fit, log and load one model; its row."""
    import mlflow
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    from nmfstudy import config as settings
    from nmfstudy.metrics import majority_mapping
    from nmfstudy.tracking import models as tracked_models

    X, y = data.X_train, data.y_train
    cfg = compose(method, GRAPHS[graph])
    settings.check(cfg)
    estimator = settings.build_estimator(cfg, X)
    params = estimator.get_params()
    caps = {key: min(params[key], cap) for key, cap in (("max_iter", args.max_iter), ("n_init", args.n_init))
            if key in params and params[key] is not None}
    estimator.set_params(**caps)
    if "cache_dir" in params:  # the graph is built once per setting, then read by the other graph methods
        estimator.set_params(cache_dir=str(work / "graphs"))
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    estimator.fit(X)
    fit_s = time.perf_counter() - t0
    labels = majority_mapping(y, estimator.labels_, estimator.k)
    mlflow.set_experiment("models")
    with mlflow.start_run(run_name=f"{method} {graph}"):
        t0 = time.perf_counter()
        info = tracked_models.log_model(estimator, data.X_test[:2] if len(data.X_test) >= 2 else X[:2], labels)
        log_s = time.perf_counter() - t0
    folder = Path(MlflowClient().get_logged_model(info.model_id).artifact_location.removeprefix("file://"))
    pickled = Model.load(str(folder / "MLmodel")).flavors["sklearn"]["pickled_model"]
    images = work / "images.npy"
    expected = estimator.predict(np.load(images))
    loads = []
    for _ in range(args.loads):
        out = work / "clusters.npy"
        begin = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", LOADER, info.model_uri, str(images), str(out)],
                              capture_output=True, text=True, env={**os.environ})
        wall = time.perf_counter() - begin
        lines = [line for line in done.stdout.splitlines() if line.startswith("TIMES ")]
        if done.returncode or not lines:
            sys.exit(f"loading {info.model_uri} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        loads.append({**json.loads(lines[-1].removeprefix("TIMES ")), "process_s": wall,
                      "same": bool(np.array_equal(np.load(out), expected))})
    index = getattr(estimator, "neighbor_index_", None)
    return {
        "method": method, "graph": graph if method in GRAPH_METHODS else "-", "n": len(X),
        "caps": ", ".join(f"{key}={value}" for key, value in caps.items()),
        "index": "-" if index is None else (f"PCA {index.train.shape[1]}, {index.train.dtype}" if index.projection
                                            is not None else f"pixels, {index.train.dtype}"),
        "index_mb": 0.0 if index is None else index.train.nbytes / 1e6,
        "model_mb": folder_size(folder) / 1e6, "pickle_mb": (folder / pickled).stat().st_size / 1e6,
        "code_mb": folder_size(folder / "code") / 1e6 if (folder / "code").exists() else 0.0,
        "fit_s": fit_s, "log_s": log_s,
        "load_s": statistics.median(r["load_s"] for r in loads),
        "process_s": statistics.median(r["process_s"] for r in loads),
        "predict_s": statistics.median(r["predict_s"] for r in loads),
        "same": all(r["same"] for r in loads), "n_predict": len(expected),
        "load": f"{load0:.1f}-{os.getloadavg()[0]:.1f}",
    }


def warm_up(data, work: Path) -> None:
    """Log one small model first, so that MLflow's first imports are not in the first row's log_model time."""
    import mlflow

    from nmfstudy import KMeansClustering
    from nmfstudy.tracking import models as tracked_models

    estimator = KMeansClustering(n_clusters=2, n_init=1, max_iter=5).fit(data.X_train[:200])
    with mlflow.start_run(run_name="warm-up"):
        tracked_models.log_model(estimator, data.X_train[:2])


def report(rows: list[dict], command: str, machine: str, loads: int) -> str:
    out = ["# A run's model on full MNIST: size, load time, predict time (issue 23)", "", machine, "",
           f"Command: `{command}`", "",
           f"Data: {rows[0]['n']:,} MNIST images (../shared/data/mnist, train + test stacked), k=10, seed 0, each "
           "method at its config defaults except the caps (a model's size does not depend on its iterations). "
           "Model: `nmfstudy.tracking.models.log_model` into a SQLite store; its folder holds MLmodel, the "
           "pickle, the input example, the requirements and the package's code (`code/`, in every model). "
           f"Load: `mlflow.pyfunc.load_model(\"models:/<id>\")` in a fresh process, median of {loads} "
           "(process: the whole `python -c`, interpreter and imports included); predict: the loaded model's "
           f"`predict` on {rows[0]['n_predict']:,} images, median of the same processes; `same`: its clusters "
           "equal the fitted estimator's. Load: the 1-min load average at the fit's start and after its loads "
           "(2 cores shared with other jobs: wall times stretch with it).", "",
           "| method | graph | caps | kept for predict | index MB | model folder MB | pickle MB | code/ MB "
           f"| log_model s | load_model s | process s | predict {rows[0]['n_predict']:,} s | same | fit s | load avg |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        out.append(f"| {r['method']} | {r['graph']} | {r['caps'] or '-'} | {r['index']} | {r['index_mb']:.1f} | "
                   f"{r['model_mb']:.1f} | {r['pickle_mb']:.2f} | {r['code_mb']:.2f} | {r['log_s']:.2f} | "
                   f"{r['load_s']:.2f} | {r['process_s']:.1f} | {r['predict_s']:.2f} | {r['same']} | "
                   f"{r['fit_s']:.0f} | {r['load']} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--graphs", default="default,pca50", help="graph settings for the graph methods: "
                        + ", ".join(f"{name} ({' '.join(o) or 'config defaults'})" for name, o in GRAPHS.items()))
    parser.add_argument("--max-iter", type=int, default=20, help="cap on max_iter (default 20)")
    parser.add_argument("--n-init", type=int, default=1, help="cap on n_init (default 1)")
    parser.add_argument("--loads", type=int, default=3, help="fresh processes that load the model (default 3)")
    parser.add_argument("--predict", type=int, default=1000, help="images to predict (default 1000)")
    parser.add_argument("--n", type=int, default=None, help="use the first N stacked images only (a quick try)")
    parser.add_argument("--out", type=Path, default=HERE / "models_results.md")
    parser.add_argument("--log", type=Path, default=None, help="JSON lines, one per model (default: next to --out)")
    args = parser.parse_args()
    log = args.log or args.out.with_suffix(".jsonl")
    command = "python bench/bench_models.py " + shlex.join(sys.argv[1:])

    import mlflow

    from nmfstudy.data import load_dataset

    data = load_dataset("mnist", dir=str(DATA))
    data = dataclasses.replace(data, X_train=np.concatenate([data.X_train, data.X_test]),
                               y_train=np.concatenate([data.y_train, data.y_test]))
    if args.n:
        data = dataclasses.replace(data, X_train=data.X_train[:args.n], y_train=data.y_train[:args.n])
    work = Path(tempfile.mkdtemp(prefix="models-"))
    np.save(work / "images.npy", np.ascontiguousarray(data.X_test[-args.predict:], dtype=np.float32))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"  # the loaders read it too
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.create_experiment("models", artifact_location=str(work / "artifacts"))  # not ./mlruns
    warm_up(data, work)
    rows = []
    for method in args.methods.split(","):
        for graph in args.graphs.split(",") if method in GRAPH_METHODS else ["default"]:
            row = measure(method, graph, data, args, work)
            print(json.dumps(row), flush=True)
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
    every = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    text = report(every, command, machine_summary(), args.loads)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
