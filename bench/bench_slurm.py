"""A study on SLURM: trials per minute through each README pattern, and what a cancelled job costs.

    python bench/bench_slurm.py                 # prints the markdown section
    python bench/bench_slurm.py --trials 12     # trials per setting (default 12)

Starts PostgreSQL, the MLflow server and a single-node SLURM (2 CPUs, no accounting) with
tests/servers.py, then runs the same study (preset nmf_k on dataset=digits, method.max_iter=200)
three ways on the same servers, each to `--trials` finished trials:
- one plain worker: `python src/train.py -m ...` (the basic launcher, jobs in its own process);
- `hydra/launcher=slurm`: one worker submitting batches of 2 trials as SLURM arrays (1 CPU each);
- an `sbatch --array=0-1` of 2 workers (the README's script, 1 CPU each).
Trials per minute = finished trials / wall time from the command's start to the last process's end.

Then the cost of a cancel: a `hydra/launcher=slurm` study of 2 long trials (method.tol=0,
max_iter=3000) whose task 0 is cancelled with `scancel` once its fit reports; measured from the
scancel to the retry trial's start (Optuna's datetime_start), and to its end. And of a job killed
outright (SIGKILL to its process, as the out-of-memory killer does: no result file, no accounting):
from the kill to its trial told FAIL, and to its retry's start (`--faults-only`: these two alone).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from servers import local_slurm, local_study_servers  # noqa: E402 (tests/ is put on the path just above)

STUDY = ["hparams_search=nmf_k", "dataset=digits", "method.max_iter=200"]


def _env(cluster) -> dict[str, str]:
    env = {k: v for k, v in cluster.env.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}


def _args(servers, name: str, sweep_dir: Path) -> list[str]:
    return [f"hydra.sweeper.storage={servers.optuna_url}", f"hydra.sweeper.study_name={name}",
            f"tracking.uri={servers.mlflow_url}", f"tracking.experiment={name}", f"hydra.sweep.dir={sweep_dir}"]


def _finished(servers, name: str) -> list:
    import optuna

    study = optuna.load_study(study_name=name, storage=servers.optuna_url)
    return [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]


def plain(servers, cluster, tmp: Path, n: int) -> tuple[float, int]:
    name = "bench_plain"
    argv = [sys.executable, "src/train.py", "-m", *STUDY, *_args(servers, name, tmp / name),
            f"hydra.sweeper.n_trials={n}"]
    start = time.monotonic()
    subprocess.run(argv, cwd=ROOT, env={**_env(cluster), "OMP_NUM_THREADS": "1"}, check=True,
                   capture_output=True)
    return time.monotonic() - start, len(_finished(servers, name))


def launcher(servers, cluster, tmp: Path, n: int) -> tuple[float, int]:
    name = "bench_launcher"
    argv = [sys.executable, "src/train.py", "-m", *STUDY, *_args(servers, name, tmp / name),
            "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
            f"hydra.sweeper.n_trials={n}", "hydra.sweeper.n_jobs=2"]
    start = time.monotonic()
    subprocess.run(argv, cwd=ROOT, env=_env(cluster), check=True, capture_output=True)
    return time.monotonic() - start, len(_finished(servers, name))


def array(servers, cluster, tmp: Path, n: int) -> tuple[float, int]:
    name = "bench_array"
    text = (ROOT / "README.md").read_text()
    script = re.search(r"```bash\n(#!/bin/bash\n#SBATCH --array.*?)```", text, re.S).group(1)
    worker = " ".join([sys.executable, "src/train.py", "-m", *STUDY, *_args(servers, name, tmp / name),
                       f"hydra.sweeper.n_trials={n}", f"hydra.sweeper.max_trials={n}"])
    (tmp / "workers.sh").write_text(script.replace("python src/train.py -m hparams_search=nmf_k ...", worker))
    start = time.monotonic()
    cluster.sbatch("--array=0-1", "--cpus-per-task=1", "--mem=1G", f"--output={tmp}/worker-%a.log",
                   str(tmp / "workers.sh"), cwd=ROOT, env=_env(cluster))
    cluster.wait_empty(timeout=1800)
    return time.monotonic() - start, len(_finished(servers, name))


def cancel_cost(servers, cluster, tmp: Path) -> tuple[float, float]:
    """Seconds from `scancel` of a job mid-fit to its retry's start, and to the retry's end."""
    import optuna

    name = "bench_cancel"
    argv = [sys.executable, "src/train.py", "-m", "hparams_search=nmf_k", "dataset=digits", "dataset.n_samples=400",
            "method.tol=0", "method.max_iter=3000", *_args(servers, name, tmp / name), "hydra/launcher=slurm",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=2"]
    sweep = subprocess.Popen(argv, cwd=ROOT, env=_env(cluster), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    while True:
        try:
            trials = optuna.load_study(study_name=name, storage=servers.optuna_url).get_trials(deepcopy=False)
        except KeyError:
            trials = []
        if trials and trials[0].intermediate_values:
            break
        time.sleep(0.2)
    task0 = next(job for job, _ in cluster.squeue() if job.endswith("_0"))
    cancelled = time.time()
    cluster.scancel(task0)
    sweep.wait(timeout=600)
    retry = [t for t in optuna.load_study(study_name=name, storage=servers.optuna_url).get_trials()
             if t.number >= 2][0]
    return retry.datetime_start.timestamp() - cancelled, retry.datetime_complete.timestamp() - cancelled


def kill_cost(servers, cluster, tmp: Path) -> tuple[float, float]:
    """Seconds from SIGKILL of a job's process mid-fit (no result file) to its trial told FAIL, and to
    its retry's start."""
    import mlflow
    import optuna

    name = "bench_kill"
    argv = [sys.executable, "src/train.py", "-m", "hparams_search=nmf_k", "dataset=digits", "dataset.n_samples=400",
            "method.tol=0", "method.max_iter=3000", *_args(servers, name, tmp / name), "hydra/launcher=slurm",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.sweeper.n_trials=1",
            "hydra.sweeper.n_jobs=1"]
    sweep = subprocess.Popen(argv, cwd=ROOT, env=_env(cluster), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    while True:
        try:
            trials = optuna.load_study(study_name=name, storage=servers.optuna_url).get_trials(deepcopy=False)
        except KeyError:
            trials = []
        if trials and trials[0].intermediate_values:
            break
        time.sleep(0.2)
    run = mlflow.MlflowClient(servers.mlflow_url).get_run(trials[0].user_attrs["mlflow_run_id"])
    killed = time.time()
    os.kill(int(run.data.tags["nmfstudy.pid"]), 9)
    sweep.wait(timeout=600)
    first, retry = optuna.load_study(study_name=name, storage=servers.optuna_url).get_trials()[:2]
    return first.datetime_complete.timestamp() - killed, retry.datetime_start.timestamp() - killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--faults-only", action="store_true", help="only the cost of scancel and of SIGKILL")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    rows = []
    with local_study_servers(tmp / "servers") as servers, local_slurm(tmp / "slurm") as cluster:
        for label, run in (("one plain worker (basic launcher)", plain),
                           ("`hydra/launcher=slurm`, batches of 2 jobs", launcher),
                           ("`sbatch --array=0-1`: 2 workers", array)) if not args.faults_only else ():
            load = os.getloadavg()[0]
            wall, finished = run(servers, cluster, tmp, args.trials)
            rows.append((label, finished, wall, load, os.getloadavg()[0]))
            print(f"{label}: {finished} trials in {wall:.1f} s", file=sys.stderr)
        to_start, to_end = cancel_cost(servers, cluster, tmp)
        to_fail, to_retry = kill_cost(servers, cluster, tmp)
    print(f"SIGKILL of a job's process mid-fit -> its trial FAIL: {to_fail:.1f} s; -> its retry's start: "
          f"{to_retry:.1f} s")
    print(f"scancel of a job mid-fit -> its retry's start: {to_start:.1f} s; -> the retry's end: {to_end:.1f} s")
    if not rows:
        return
    anchor = rows[0][1] / rows[0][2]
    print("| setting | finished trials | wall s | trials/min | vs one plain worker | load before / after |")
    print("|---|---|---|---|---|---|")
    for label, finished, wall, before, after in rows:
        print(f"| {label} | {finished} | {wall:.1f} | {60 * finished / wall:.1f} | "
              f"{finished / wall / anchor:.2f}x | {before:.1f} / {after:.1f} |")


if __name__ == "__main__":
    main()
