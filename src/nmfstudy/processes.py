"""This host's processes: the owner of a run or a trial (id and start time, Linux /proc), and how SIGTERM ends one.

Plain Python (standard library only), so that the sweeper plugin and the tracking can both import
it without importing the application or MLflow.
"""
from __future__ import annotations

import os
import socket
from typing import Any

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


# --- termination ---------------------------------------------------------------------------


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler preempting or cancelling, `kill`): ends a run KILLED; a sweeper retries its trials.

    `reason` says why, where the process knows (`TERMINATION_REASONS`); the run's error tag shows it.
    """

    reason: str | None = None


# Signals received by `raise_terminated` in this process. A signal handler raises where the main
# thread happens to be; inside a database driver the library's clean-up may then raise an error of
# its own that hides the interrupt (SQLAlchemy's "can't change 'autocommit' now", wrapped by Optuna
# in StorageInternalError), so code that catches storage errors asks `interruption` first.
_terminations: list[int] = []
# Why a signal ends a run, by signal number, where the process knows more than "signal 15" (a SLURM job).
TERMINATION_REASONS: dict[int, str] = {}


class JobInterrupted(RuntimeError):
    """A job that ended without finishing its trial (cancelled, preempted, timed out, killed): retried.

    A launcher returns it as the job's error; the sweeper fails the trial, ends its run KILLED and
    queues a retry, as for a worker that died.
    """


def raise_terminated(signum: int, frame: Any = None) -> None:
    """SIGTERM's handler: record the signal, then raise `Terminated` (as Ctrl-C raises KeyboardInterrupt).

    Parameters
    ----------
    signum : int
        The signal.
    frame : frame or None
        The interrupted frame (unused).

    Raises
    ------
    Terminated
        Always.
    """
    _terminations.append(signum)
    reason = TERMINATION_REASONS.get(signum)
    err = Terminated(f"signal {signum}: {reason}" if reason else f"signal {signum}")
    err.reason = reason
    raise err


def raise_if_terminated() -> None:
    """Raise `Terminated` when this process received SIGTERM that did not end it.

    A signal whose handler ran inside a finalizer or a weakref callback ("Exception ignored in ...")
    or inside a library's clean-up was spent without stopping anything; long loops call this
    between steps, so that the process still stops.

    Raises
    ------
    Terminated
        When `raise_terminated` ran in this process.
    """
    if _terminations:
        raise Terminated(f"signal {_terminations[-1]}")


def interruption(err: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that `err` hides, if any: the one to raise instead of handling `err`.

    Looks through the error's causes and contexts for a KeyboardInterrupt (a `Terminated`), and
    answers a new `Terminated` when none is there but this process received SIGTERM through
    `raise_terminated`: a terminated process must stop, whatever error the signal turned into.

    Parameters
    ----------
    err : BaseException
        An error caught by an ``except Exception`` around a storage or network call.

    Returns
    -------
    KeyboardInterrupt or None
        The interrupt to raise; None when `err` is an ordinary error.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        cause = todo.pop()
        if cause is None or id(cause) in seen:
            continue
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        todo += [cause.__cause__, cause.__context__]
    if _terminations:
        return Terminated(f"signal {_terminations[-1]} (received during: {type(err).__name__})")
    return None
