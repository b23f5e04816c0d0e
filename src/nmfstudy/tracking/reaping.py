"""Which process owns a run, and which runs are dead: RUNNING runs whose process is gone end KILLED.

A process killed by SIGKILL or the out-of-memory killer cannot end its run; the next command that
opens the experiment does it.
"""
from __future__ import annotations

import logging
import socket

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis

from nmfstudy.processes import owner, process_alive
from nmfstudy.study_names import (
    ERROR_TAG,
    HEARTBEAT_INTERVAL_TAG,
    HEARTBEAT_TAG,
    HOST_TAG,
    KIND_STUDY,
    KIND_TAG,
    PARENT_RUN_TAG,
    PID_START_TAG,
    PID_TAG,
)

# One logger for the package, as before it was split: log lines name nmfstudy.tracking.
log = logging.getLogger(__package__)


def process_tags() -> dict[str, str]:
    """Tags naming this process as the owner of a run: host, pid and the pid's start time.

    Returns
    -------
    dict
        `processes.owner()`: HOST_TAG, PID_TAG, PID_START_TAG.
    """
    return owner()


def run_alive(tags: dict[str, str], start_time_ms: int, now_ms: int, grace_s: float) -> bool | None:
    """Whether the process that owns a RUNNING run lives: True, False, or None when nothing tells.

    On this host the process id answers; for another host, the run's last heartbeat (or its start)
    older than `grace_s` means dead. Runs without an owner or a heartbeat are unknown.

    Parameters
    ----------
    tags : dict
        The run's tags.
    start_time_ms : int
        The run's start (ms since the epoch).
    now_ms : int
        Now (ms since the epoch).
    grace_s : float
        Seconds without a heartbeat after which a run of another host is dead.

    Returns
    -------
    bool or None
        Alive, dead, or unknown.
    """
    if tags.get(HOST_TAG) == socket.gethostname() and tags.get(PID_TAG, "").isdigit():
        return process_alive(int(tags[PID_TAG]), tags.get(PID_START_TAG) or None)
    if HEARTBEAT_INTERVAL_TAG in tags:
        last = int(tags.get(HEARTBEAT_TAG) or start_time_ms or 0)
        return now_ms - last <= grace_s * 1000
    return None


def kill_run(client: MlflowClient, run_id: str, reason: str, status: str = "KILLED") -> bool:
    """End a run that is still RUNNING as KILLED (or `status`) with `reason` as its error tag.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    run_id : str
        The run.
    reason : str
        Its error tag.
    status : str
        How it ends: KILLED or FAILED.

    Returns
    -------
    bool
        True when it was RUNNING and is ended now.
    """
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        client.set_tag(run_id, ERROR_TAG, reason[:5000])
        client.set_terminated(run_id, status)
        return True
    except MlflowException as err:  # deleted, or another command ended it first
        log.debug("could not end run %s: %s", run_id, err)
        return False


def kill_running_children(client: MlflowClient, parent_run_id: str, reason: str) -> int:
    """End the RUNNING runs nested under `parent_run_id` as KILLED.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    parent_run_id : str
        The parent run.
    reason : str
        Their error tag.

    Returns
    -------
    int
        How many were ended.
    """
    experiment = client.get_run(parent_run_id).info.experiment_id
    query = f"attributes.status = 'RUNNING' and tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'"
    return sum(kill_run(client, r.info.run_id, reason) for r in client.search_runs([experiment], query))


def end_dead_runs(client: MlflowClient, experiment_ids: list[str], grace_s: float = 300.0) -> list[str]:
    """Mark KILLED the RUNNING runs whose process is gone; log one line about them.

    A process killed by SIGKILL or the out-of-memory killer cannot end its run; the next command
    that opens the experiment does it. A study's run lives while any of its trials' runs lives.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    experiment_ids : list of str
        The experiments to look in.
    grace_s : float
        Seconds without a heartbeat after which a run of another host is dead.

    Returns
    -------
    list of str
        The ids of the runs ended.
    """
    if not experiment_ids:
        return []
    running = client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=10000)
    now = get_current_time_millis()
    alive = {r.info.run_id: run_alive(r.data.tags, r.info.start_time, now, grace_s) for r in running}
    children: dict[str, list[str]] = {}
    for r in running:
        children.setdefault(r.data.tags.get(PARENT_RUN_TAG, ""), []).append(r.info.run_id)
    dead = []
    for r in running:
        verdict = alive[r.info.run_id]
        # Several workers share a study's run: it lives while any of its trials' runs may live.
        trials = children.get(r.info.run_id, [])
        if r.data.tags.get(KIND_TAG) == KIND_STUDY and any(alive[c] is not False for c in trials):
            verdict = True
        if verdict is False:
            dead.append(r)
    for r in dead:
        owner = f"process {r.data.tags.get(PID_TAG, '?')} on {r.data.tags.get(HOST_TAG, '?')}"
        kill_run(client, r.info.run_id, f"{owner} ended without closing the run (killed, out of memory or lost)")
    if dead:
        log.warning("marked %d dead run(s) KILLED (their process is gone): %s", len(dead),
                    ", ".join(f"{r.info.run_id[:8]} {r.info.run_name or ''}".strip() for r in dead[:10])
                    + (" ..." if len(dead) > 10 else ""))
    return [r.info.run_id for r in dead]


def end_dead_runs_in(client: MlflowClient, experiment: str, grace_s: float | None = None) -> list[str]:
    """`end_dead_runs` for the experiment named `experiment`, if it exists.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    experiment : str
        The experiment's name.
    grace_s : float or None
        As for `end_dead_runs`; None: 300 s.

    Returns
    -------
    list of str
        The ids of the runs ended.
    """
    found = client.get_experiment_by_name(experiment)
    return end_dead_runs(client, [found.experiment_id], grace_s or 300.0) if found is not None else []
