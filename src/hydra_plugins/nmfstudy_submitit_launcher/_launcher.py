"""hydra-submitit-launcher's SLURM launcher, made to survive what a cluster does to jobs.

`conf/hydra/launcher/slurm.yaml` selects it. What it changes, and why:

- **All jobs of a batch are waited for.** The original returns ``[j.results()[0] for j in jobs]``,
  which raises at the first job that failed: the sweeper then lost the whole batch while the other
  jobs ran on unattended. Here every job is waited for; a job that ended without a result (killed,
  cancelled, timed out, its node lost) gets a `JobInterrupted` error of its own, so that the
  sweeper retries that trial only and keeps its neighbours' results.
- **No accounting needed.** submitit learns that a job ended without a result from `sacct`; on a
  cluster without accounting `sacct` answers "accounting storage is disabled" and submitit waits
  forever. Here `squeue` tells which jobs are still queued or running.
- **A job stops on SIGTERM and on SLURM's time-limit warning.** submitit's job ignores SIGTERM
  ("Bypassing signal SIGTERM") and, with ``max_num_timeout`` 0, answers the warning signal (USR2,
  ``signal_delay_s`` before the limit) with "timed-out too many times". Here both raise
  `Terminated` inside the job: the trial's MLflow run ends KILLED with the reason in its error tag,
  the job returns that error, and the sweeper fails the trial and queues its retry.
- **The user's command.** Inside a job ``sys.argv`` is submitit's wrapper (``_submit.py FOLDER``);
  the job gets the command that started the sweep back, so its run records that.
- **Cancelled with the sweep.** When the sweeping process is interrupted, the batch's jobs still
  queued or running are cancelled: none runs on unattended to contradict what the sweeper told.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from nmfstudy.processes import TERMINATION_REASONS, JobInterrupted, Terminated, raise_terminated

log = logging.getLogger(__name__)

# squeue states of a job that may still write its result; any other (or none: forgotten) means ended.
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                 "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}
QUEUE_POLL_S = 2.0  # how often squeue is asked (the result files are looked for every RESULT_POLL_S)
RESULT_POLL_S = 0.5
RESULT_GRACE_S = 5.0  # a job out of the queue may still be writing its result (a shared file system lags)

SIGNAL_REASONS = {
    signal.SIGTERM: "SLURM ended the job (scancel, preemption or its time limit)",
    signal.SIGUSR2: "the SLURM job's time limit is near (sbatch --signal)",
}


def _failed(error: BaseException, overrides: Sequence[str] | None = None) -> JobReturn:
    """A job's return that carries `error`, as Hydra's run_job makes it for a job that raised."""
    ret = JobReturn(overrides=list(overrides) if overrides is not None else None)
    ret.status = JobStatus.FAILED
    ret.return_value = error
    return ret


def queue_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """The SLURM states of `job_ids` (array tasks as 13_0) that slurmctld still knows, by `squeue`.

    Parameters
    ----------
    job_ids : sequence of str
        Job ids as submitit names them.

    Returns
    -------
    dict or None
        Job id -> state (RUNNING, PENDING, COMPLETED, CANCELLED, TIMEOUT, ...); a job ended long ago
        is missing. None when squeue cannot answer (slurmctld restarting): ask again later.
    """
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(arrays)],
                             capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("squeue failed: %s", err)
        return None
    if out.returncode != 0:
        # squeue fails on job ids slurmctld has forgotten altogether: then they are all ended
        if "Invalid job id" in out.stderr:
            return {}
        log.warning("squeue failed (%d): %s", out.returncode, out.stderr.strip()[:300])
        return None
    states = {}
    for line in out.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id:
            states[job_id] = state.split()[0] if state else ""
    return states


class SlurmLauncher(SubmititSlurmLauncher):
    """hydra-submitit-launcher's `SlurmLauncher` that waits for every job and never hangs (module doc)."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.argv: list[str] | None = None

    # --- in the job ------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """Run the job as the original does; SIGTERM or USR2 stop it (run KILLED with the reason, trial retried)."""
        TERMINATION_REASONS.update(SIGNAL_REASONS)
        for signum in SIGNAL_REASONS:
            signal.signal(signum, raise_terminated)
        if self.argv:
            sys.argv = list(self.argv)  # the run's command tag: the user's command, not submitit's wrapper
        try:
            return super().__call__(*args, **kwargs)
        except Terminated as err:
            for signum in SIGNAL_REASONS:  # stopping now: a second signal must not break the result's writing
                signal.signal(signum, signal.SIG_IGN)
            log.warning("job stopped: %s; its trial is retried", err)
            return _failed(err, args[0] if args else None)

    # --- in the sweeping process -----------------------------------------------------------

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit the batch as one array, wait for every job; a job without a result returns `JobInterrupted`."""
        self.argv = list(sys.argv)
        jobs = self._submit(job_overrides, initial_job_idx)
        try:
            ended = self._wait(jobs)
        except BaseException:
            self._cancel(jobs)
            raise
        return [self._result(job, ended.get(job.job_id), overrides)
                for job, overrides in zip(jobs, job_overrides, strict=True)]

    def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        """The original launcher's submission (its executor, parameters and log lines), without its wait."""
        import submitit
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides
        from omegaconf import OmegaConf

        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        assert self.config is not None
        init_keys = {"max_num_timeout", "submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                                         **{f"{self._EXECUTOR}_max_num_timeout": self.params.get("max_num_timeout", 0)})
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in base else f"{self._EXECUTOR}_{key}": value
                                      for key, value in self.params.items() if key not in init_keys})
        log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, self.config.hydra.sweep.dir)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        job_params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        return executor.map_array(self, *zip(*job_params, strict=True))

    @staticmethod
    def _wait(jobs: list) -> dict[str, str]:
        """Until every job has its result file or has left the queue; the latter's last known states."""
        pending = {job.job_id: job for job in jobs}
        ended: dict[str, str] = {}
        gone_since: dict[str, float] = {}
        last_asked = -float("inf")
        while pending:
            for job_id in [j for j, job in pending.items() if job.paths.result_pickle.exists()]:
                del pending[job_id]
            now = time.monotonic()
            if pending and now - last_asked >= QUEUE_POLL_S:
                last_asked = now
                states = queue_states(list(pending))
                for job_id in list(pending) if states is not None else []:
                    state = states.get(job_id, "")
                    if state in ACTIVE_STATES:
                        gone_since.pop(job_id, None)
                    elif now - gone_since.setdefault(job_id, now) >= RESULT_GRACE_S:
                        ended[job_id] = state or "gone from the queue"
                        del pending[job_id]
            if pending:
                time.sleep(RESULT_POLL_S)
        return ended

    @staticmethod
    def _result(job: Any, ended_state: str | None, overrides: Sequence[str]) -> JobReturn:
        if ended_state is not None and not job.paths.result_pickle.exists():
            return _failed(JobInterrupted(f"SLURM job {job.job_id} ended {ended_state} without a result "
                                          f"(log: {job.paths.stderr})"), overrides)
        try:
            return job.results()[0]
        except Exception as err:  # an error outside the task (the job's setup): the trial fails, not retried
            return _failed(err, overrides)

    @staticmethod
    def _cancel(jobs: list) -> None:
        ids = [job.job_id for job in jobs if not job.paths.result_pickle.exists()]
        if ids:
            log.warning("cancelling the batch's SLURM jobs %s", ", ".join(ids))
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60, check=False)
