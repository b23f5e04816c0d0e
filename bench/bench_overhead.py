"""What a run costs besides its fit, and what a trial of an in-process study adds to its fit.

    python bench/bench_overhead.py --anchor 691da6f --out bench/overhead_results.md

Part 1, one run: `python src/train.py` (the offline default: NMF, k=10, mnist_5k) on a store that
already exists, `--repeats` times, each in a new process as a user starts it. A small driver
(`--one-run`) imports train.py and wraps its stages with timers, so that the process's wall time
splits into imports, data, store, fit, evaluation, figures, model (logging the fitted model, with
its registration in a study), lineage (the data as the run's MLflow input), the rest of main
(logging, Hydra) and the interpreter's start and exit. The stages are found by their names on
either side of issue 23 (`build_method` or `build_estimator`, `train.log_figures` or
`products.log_figures`); a part the commit does not have is 0.

Part 2, a study: `hparams_search=nmf_k` on 1,000 images, `--trials` trials in one process (Hydra's
basic launcher). A trial's overhead is its MLflow run's wall time minus its fit time.

Both parts run on this checkout and on `--anchor` (a commit, checked out in a temporary worktree)
in the same invocation, alternating, so that the ratio compares like with like.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from machine import machine_summary  # noqa: E402

# "exit": the interpreter's start and teardown, the process's wall time less the timed main
PARTS = ("imports", "data", "store", "fit", "evaluation", "figures", "model", "lineage", "rest", "exit")


def one_run(src: Path, overrides: list[str]) -> None:
    """Run train.py's main in this process with its stages timed; print the parts as JSON."""
    start = time.perf_counter()
    sys.path.insert(0, str(src))
    sys.argv = [str(src / "train.py"), *overrides]
    import train  # noqa: E402  (timed: the imports a run pays)

    spent = {"imports": time.perf_counter() - start}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - begin
        return wrapper

    train.load_dataset = timed("data", train.load_dataset)
    train.tracking.open_store = timed("store", train.tracking.open_store)
    train.evaluate = timed("evaluation", train.evaluate)
    # since issue 23 the figures and the model are drawn and logged in products.keep
    products = getattr(train, "products", None)
    host = products if products is not None and hasattr(products, "log_figures") else train
    host.log_figures = timed("figures", host.log_figures)
    if products is not None and hasattr(products, "log_model"):
        products.log_model = timed("model", products.log_model)
    tracked_models = getattr(train, "tracked_models", None)
    if tracked_models is not None and hasattr(tracked_models, "log_dataset"):
        tracked_models.log_dataset = timed("lineage", tracked_models.log_dataset)
    name = "build_estimator" if hasattr(train.settings, "build_estimator") else "build_method"
    build = getattr(train.settings, name)

    def build_timed(*args, **kwargs):
        model = build(*args, **kwargs)
        fit = timed("fit", model.fit)

        def fit_once(*args, **kwargs):
            # off the instance again before the model is pickled (a closure does not pickle)
            model.__dict__.pop("fit", None)
            return fit(*args, **kwargs)

        model.fit = fit_once
        return model

    setattr(train.settings, name, build_timed)
    # Hydra finds conf/ relative to the file of a __main__ task function, as when train.py is run
    train.main.__wrapped__.__module__ = "__main__"
    try:
        train.main()
    except SystemExit:
        pass
    spent["in_process"] = time.perf_counter() - start
    spent["rest"] = spent["in_process"] - sum(spent.get(part, 0.0) for part in PARTS[:-2])
    print("PARTS " + json.dumps(spent), flush=True)
    if getattr(train, "single_run_ended", False):  # as `python src/train.py` ends (an anchor may not have it)
        train.exit_without_teardown()


def _checkout(commit: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="anchor-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(folder), commit], cwd=ROOT, check=True,
                   capture_output=True)
    return folder


def _timed_run(tree: Path, store: Path, out: Path) -> dict[str, float]:
    overrides = [f"tracking.uri=sqlite:///{store}", f"hydra.run.dir={out}"]
    driver = [sys.executable, str(Path(__file__).resolve()), "--one-run", str(tree / "src"), *overrides]
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    begin = time.perf_counter()
    done = subprocess.run(driver, cwd=tree, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - begin
    lines = [line for line in done.stdout.splitlines() if line.startswith("PARTS ")]
    if done.returncode or not lines:
        sys.exit(f"run in {tree} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    parts = json.loads(lines[-1].removeprefix("PARTS "))
    return {**parts, "wall": wall, "exit": wall - parts["in_process"]}


def _study(tree: Path, folder: Path, trials: int) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    store = folder / "mlflow.db"
    command = [sys.executable, "src/train.py", "hparams_search=nmf_k", "dataset.n_samples=1000",
               f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.storage=sqlite:///{folder / 'optuna.db'}",
               f"tracking.uri=sqlite:///{store}", f"hydra.sweep.dir={folder / 'multirun'}"]
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"study in {tree} failed:\n{done.stderr[-3000:]}")
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("nmfstudy")
    trials = [r for r in client.search_runs([experiment.experiment_id]) if "optuna.trial_number" in r.data.tags]
    # a trial that repeats a finished fit (issue 27: tag duplicate_of) runs no job and has no fit to subtract
    runs = [r for r in trials if "fit_time_s" in r.data.metrics]
    overheads = [(r.info.end_time - r.info.start_time) / 1000 - r.data.metrics["fit_time_s"] for r in runs]
    fits = [r.data.metrics["fit_time_s"] for r in runs]
    drew = sum(1 for r in runs if client.list_artifacts(r.info.run_id, "figures"))
    trial_runs = {r.info.run_id for r in runs}
    models = client.search_logged_models(experiment_ids=[experiment.experiment_id], max_results=1000)
    logged = len({m.source_run_id for m in models} & trial_runs)
    return {"wall": wall, "trials": len(trials), "fitted": len(runs),
            "overhead_median": statistics.median(overheads),
            "overhead_max": max(overheads), "fit_median": statistics.median(fits), "drew": drew,
            "logged": logged}


def _load() -> str:
    return "%.1f %.1f %.1f" % os.getloadavg()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchor", required=True, help="the commit to compare with (e.g. the last before the work)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    trees = {"anchor " + args.anchor: _checkout(args.anchor), "this checkout": ROOT}
    rows, studies, loads = {name: [] for name in trees}, {}, [_load()]
    try:
        for name, tree in trees.items():  # a first run makes each store: not timed
            folder = Path(tempfile.mkdtemp(prefix="overhead-"))
            trees[name] = (tree, folder)
            _timed_run(tree, folder / "mlflow.db", folder / "out")
        for _ in range(args.repeats):
            for name, (tree, folder) in trees.items():
                rows[name].append(_timed_run(tree, folder / "mlflow.db", folder / "out"))
        loads.append(_load())
        for name, (tree, _) in trees.items():
            studies[name] = _study(tree, Path(tempfile.mkdtemp(prefix="study-")), args.trials)
        loads.append(_load())
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(trees["anchor " + args.anchor][0])], cwd=ROOT,
                       capture_output=True)

    median = {name: {part: statistics.median(r.get(part, 0.0) for r in runs) for part in (*PARTS, "wall")}
              for name, runs in rows.items()}
    before, after = median.values()
    lines = [
        "# What a run costs besides its fit",
        "",
        f"`python bench/bench_overhead.py --anchor {args.anchor}`, {time.strftime('%Y-%m-%d %H:%M')}. "
        + machine_summary(),
        f"Load average (1, 5, 15 min) at the start, after the runs, after the studies: {'; '.join(loads)}.",
        "",
        f"## One run: `python src/train.py` (NMF, k=10, mnist_5k), an existing store, median of {args.repeats}",
        "",
        "| part (s) | " + " | ".join(rows) + " | after / before |",
        "|---|" + "---:|" * (len(rows) + 1),
    ]
    for part in (*PARTS, "wall"):  # wall: the process's, as the user waits for it
        ratio = after[part] / before[part] if before[part] > 0.005 else float("nan")
        lines.append(f"| {part} | " + " | ".join(f"{m[part]:.2f}" for m in median.values()) + f" | {ratio:.2f} |")
    lines += ["", f"## A {args.trials}-trial study (`hparams_search=nmf_k dataset.n_samples=1000`), in one process",
              "", "| | " + " | ".join(studies) + " |", "|---|" + "---:|" * len(studies)]
    for key, label in [("wall", "study wall (s)"), ("trials", "trials"),
                       ("fitted", "trials that fitted (others repeat a fit)"), ("fit_median", "fit, median (s)"),
                       ("overhead_median", "a trial's run minus its fit, median (s)"),
                       ("overhead_max", "... largest (s)"), ("drew", "trials that drew figures"),
                       ("logged", "trials that logged a model")]:
        lines.append(f"| {label} | " + " | ".join(f"{s[key]:.2f}" if isinstance(s[key], float) else str(s[key])
                                                  for s in studies.values()) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--one-run":
        one_run(Path(sys.argv[2]), sys.argv[3:])
    else:
        main()
