"""What pruning saves: the same seeded Optuna study run twice, without and with a MedianPruner.

    python bench/bench_pruning.py                        # nmf_sparse on mnist_5k, 16 random trials each
    python bench/bench_pruning.py --preset nmf_k --n-trials 20 --max-iter 200
    python bench/bench_pruning.py --dataset mnist --data-dir /work/shared/data/mnist --n-samples 10000

By default the sampler is a seeded RandomSampler, whose suggestions do not depend on the results:
both studies then try the same configurations, and differ only in what pruning stops (with TPE
they diverge after the first pruned trial, which confounds the comparison; --sampler tpe shows it).
Each study is the real command line (`src/train.py -m hparams_search=...`) with fits of a fixed
length (method.tol=0, so that every unpruned fit runs max_iter iterations and a pruned one
visibly stops early), in a temporary store. Reported: the NMF iterations run (independent of the
machine's load), the seconds spent fitting (MLflow's fit_time_s), the seconds of the whole trials
(Optuna's start/complete times, which include evaluation, figures and logging) and of the whole
command, and the best objective value found, and how long each study took to reach it.
Appends a Markdown section to bench/pruning_results.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_study(tmp: Path, name: str, args, pruner: list[str]) -> dict:
    data = [f"dataset={args.dataset}"]
    if args.data_dir:
        data.append(f"dataset.dir={args.data_dir}")
    if args.n_samples:
        data.append(f"dataset.n_samples={args.n_samples}")
    command = [sys.executable, "src/train.py", "-m", f"hparams_search={args.preset}", *data,
               f"hydra.sweeper.n_trials={args.n_trials}", "method.tol=0", f"method.max_iter={args.max_iter}",
               f"hydra.sweeper.report_every={args.report_every}", f"hydra.sweeper.study_name={name}",
               f"hydra.sweeper.storage=sqlite:///{tmp}/optuna.db", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
               f"hydra.sweep.dir={tmp}/{name}", f"hydra/sweeper/sampler={args.sampler}", *pruner]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")

    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/optuna.db")
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    metrics = {t.number: client.get_run(t.user_attrs["mlflow_run_id"]).data.metrics
               for t in trials if "mlflow_run_id" in t.user_attrs}
    fits = list(metrics.values())
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials if t.datetime_complete]
    per_trial = {t.number: {"params": t.params, "trial_s": seconds, "fit_s": metrics[t.number]["fit_time_s"],
                            "iterations": metrics[t.number]["n_iter"]}
                 for t, seconds in zip(trials, durations, strict=False) if t.number in metrics}
    best = study.best_trial
    elapsed, reached = 0.0, None
    for trial, seconds in zip(trials, durations, strict=False):
        elapsed += seconds
        if trial.number == best.number:
            reached = elapsed
    states = [t.state for t in trials]
    return {
        "name": name, "command": " ".join(["python", *command[1:]]).replace(str(tmp), "<tmp>"),
        "complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
        "fail": states.count(TrialState.FAIL), "iterations": int(sum(m.get("n_iter", 0) for m in fits)),
        "fit_s": sum(m.get("fit_time_s", 0.0) for m in fits), "trials_s": sum(durations), "wall_s": wall,
        "best": best.value, "best_trial": best.number, "best_params": best.params, "to_best_s": reached,
        "load": (load_before + os.getloadavg()[0]) / 2, "per_trial": per_trial,
    }


def at_base_speed(base: dict, pruned: dict) -> dict | None:
    """The pruned study's fit and trial seconds had it run at the speed of the unpruned one.

    The machine's load changes between the two studies; with the same configurations (a random
    sampler), each pruned trial can be costed from its unpruned twin: its fit time scaled by the
    share of iterations it ran, plus the twin's evaluation and logging time.
    """
    a, b = base["per_trial"], pruned["per_trial"]
    if a.keys() != b.keys() or any(a[n]["params"] != b[n]["params"] for n in a):
        return None
    fit = {n: a[n]["fit_s"] * b[n]["iterations"] / a[n]["iterations"] for n in a}
    return {"fit_s": sum(fit.values()), "trials_s": sum(a[n]["trial_s"] - a[n]["fit_s"] + fit[n] for n in a)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nmf_sparse")
    parser.add_argument("--sampler", default="random", help="hydra/sweeper/sampler option: random, tpe, ...")
    parser.add_argument("--dataset", default="mnist_5k")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n-samples", type=int, default=None)
    parser.add_argument("--n-trials", type=int, default=16)
    parser.add_argument("--max-iter", type=int, default=150)
    parser.add_argument("--report-every", type=int, default=10)
    parser.add_argument("--startup", type=int, default=4, help="MedianPruner n_startup_trials")
    parser.add_argument("--warmup", type=int, default=20, help="MedianPruner n_warmup_steps (iterations)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "pruning_results.md"))
    args = parser.parse_args()

    pruner = ["hydra/sweeper/pruner=median", f"hydra.sweeper.pruner.n_startup_trials={args.startup}",
              f"hydra.sweeper.pruner.n_warmup_steps={args.warmup}"]
    with tempfile.TemporaryDirectory(prefix="bench_pruning_") as folder:
        tmp = Path(folder)
        rows = [run_study(tmp, "no_pruning", args, []), run_study(tmp, "median_pruning", args, pruner)]

    base, pruned = rows
    lines = [
        f"\n## {args.preset}, {args.sampler} sampler, on {args.dataset}"
        f"{f' ({args.n_samples} samples)' if args.n_samples else ''}, "
        f"{args.n_trials} trials, {args.max_iter} iterations per fit ({datetime.now():%Y-%m-%d %H:%M})\n",
        f"Machine: {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, shared with other work (1-minute load average during each "
        "study below; above the core count means contended timings).\n",
        "Commands (the second adds the pruner):\n",
        f"    {base['command']}\n    ... {' '.join(pruner)}\n",
        "| study | complete | pruned | failed | NMF iterations | fit s | fit ms/iteration | trial s | command s | "
        "load | best value (trial) | trial s to best |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['complete']} | {row['pruned']} | {row['fail']} | {row['iterations']} | "
            f"{row['fit_s']:.0f} | {1000 * row['fit_s'] / max(row['iterations'], 1):.0f} | {row['trials_s']:.0f} | "
            f"{row['wall_s']:.0f} | {row['load']:.1f} | {row['best']:.4f} (#{row['best_trial']}) | "
            f"{row['to_best_s']:.0f} |")
    # Timings move with the machine's load; with the same configurations, cost both at one speed.
    same = at_base_speed(base, pruned)
    if same is not None:
        lines.append(f"| median_pruning, costed at no_pruning's speed | | | | | {same['fit_s']:.0f} | | "
                     f"{same['trials_s']:.0f} | | | | |")
    timed = same or pruned

    def change(new: float, old: float, less: str = "less", more: str = "more") -> str:
        return f"{1 - new / old:.0%} {less}" if new <= old else f"{new / old - 1:.0%} {more}"

    lines += [
        "",
        f"Pruning ran {change(pruned['iterations'], base['iterations'], 'fewer')} NMF iterations and spent "
        f"{change(timed['fit_s'], base['fit_s'])} time fitting and {change(timed['trials_s'], base['trials_s'])} in "
        f"trials{' (costed at the same speed)' if same else ''}; best value {pruned['best']:.4f} vs "
        f"{base['best']:.4f} without pruning "
        f"({'equal' if abs(pruned['best'] - base['best']) < 1e-9 else 'different'}). "
        f"Best params: {base['best_params']} / {pruned['best_params']}.",
        "",
    ]
    text = "\n".join(lines)
    out = Path(args.out)
    if not out.exists():
        out.write_text("# Pruning benchmark (bench/bench_pruning.py)\n")
    with out.open("a") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
