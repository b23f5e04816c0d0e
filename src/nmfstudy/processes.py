"""The owner of a run or a trial: this host's processes, told apart by their id and start time (Linux /proc).

Plain Python (standard library only), so that the sweeper plugin and the tracking can both import
it without importing the application or MLflow.
"""
from __future__ import annotations

import os
import socket

from .study_names import HOST_TAG, PID_START_TAG, PID_TAG


def _process_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (Linux): [state, ppid, ...]; None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> str | None:
    """The start time of a process, which tells a reused process id apart.

    Parameters
    ----------
    pid : int
        A process of this host.

    Returns
    -------
    str or None
        Clock ticks since boot (Linux); None where /proc cannot tell.
    """
    stat = _process_stat(pid)
    return stat[19] if stat and len(stat) > 19 else None


def owner() -> dict[str, str]:
    """This process as the owner of a run or a trial.

    Returns
    -------
    dict
        `{HOST_TAG: host name, PID_TAG: process id, PID_START_TAG: its start time or ""}`.
    """
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: process_start(pid) or ""}


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether a process of this host still runs (and is the one that started at `start`).

    A zombie (killed, not yet reaped by its parent) is dead.

    Parameters
    ----------
    pid : int
        The process id.
    start : str or None
        Its start time as `process_start` gave it; None or "": any process with that id.

    Returns
    -------
    bool
        True while it runs.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user
    stat = _process_stat(pid)
    if stat is None:  # not Linux: the signal's answer is all there is
        return True
    return stat[0] != "Z" and (not start or stat[19] == start)
