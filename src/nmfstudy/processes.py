"""This host's processes: the owner of a run or a trial (id and start time, Linux /proc), and how SIGTERM or Ctrl-C
ends one.

Plain Python (standard library only), so that the sweeper plugin and the tracking can both import
it without importing the application or MLflow.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
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


# Signals received by `raise_terminated` in this process, and SIGINT for a Ctrl-C that Python could
# not raise (see `keep_unraisable_interrupts`), in the order they came. A signal handler raises where
# the main thread happens to be; inside a database driver the library's clean-up may then raise an
# error of its own that hides the interrupt (SQLAlchemy's "can't change 'autocommit' now", wrapped by
# Optuna in StorageInternalError), so code that catches storage errors asks `interruption` first.
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


class _UnraisableInterrupts:
    """`sys.unraisablehook` that keeps an interrupt Python cannot raise; other exceptions go to the previous hook."""

    def __init__(self, previous: Callable[[Any], Any]) -> None:
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        if unraisable.exc_type is None or not issubclass(unraisable.exc_type, KeyboardInterrupt):
            self.previous(unraisable)
        elif not issubclass(unraisable.exc_type, Terminated):  # `raise_terminated` recorded its SIGTERM itself
            # The signal, not the exception: its traceback would keep the interrupted frames alive.
            _terminations.append(signal.SIGINT)


def keep_unraisable_interrupts() -> Callable[[Any], Any]:
    """Let no Ctrl-C be lost where Python cannot raise it: `raise_if_terminated` raises it at the next check.

    SIGINT's handler raises KeyboardInterrupt (`Terminated` for SIGTERM) where the main thread happens
    to be. Inside a weakref callback, a finalizer or `__del__` Python cannot raise it: it prints
    "Exception ignored in ..." with a traceback and goes on as if the key had not been pressed. This
    hook prints nothing for such an interrupt and records a Ctrl-C (`raise_terminated` records its
    SIGTERM itself); every other unraisable exception goes to the previous hook unchanged. SIGINT's
    handler stays Python's own. Installing it twice keeps one.

    Returns
    -------
    callable
        The hook it replaced, to restore with ``sys.unraisablehook = previous`` (it is this one's
        own hook when that was installed already).
    """
    previous = sys.unraisablehook
    if not isinstance(previous, _UnraisableInterrupts):
        sys.unraisablehook = _UnraisableInterrupts(previous)
    return previous


def _spent_signal(during: str | None = None) -> KeyboardInterrupt:
    """The interrupt for the last signal in `_terminations`: KeyboardInterrupt for Ctrl-C, else `Terminated`."""
    signum, note = _terminations[-1], f"received during: {during}" if during else ""
    if signum == signal.SIGINT:  # Ctrl-C ends as it always does: not `Terminated`, so its trials are not retried
        return KeyboardInterrupt(note) if note else KeyboardInterrupt()
    return Terminated(f"signal {signum} ({note})" if note else f"signal {signum}")


def raise_if_terminated() -> None:
    """Raise the SIGTERM or Ctrl-C that this process received and that did not end it.

    A signal whose handler ran inside a finalizer or a weakref callback (where Python can only
    print "Exception ignored in ...", or, with `keep_unraisable_interrupts`, keep it) or inside a
    library's clean-up was spent without stopping anything; long loops call this between steps,
    so that the process still stops.

    Raises
    ------
    Terminated
        When `raise_terminated` ran in this process (and no Ctrl-C was kept after it).
    KeyboardInterrupt
        When `keep_unraisable_interrupts` kept a Ctrl-C, the last signal received.
    """
    if _terminations:
        raise _spent_signal()


def chained(err: BaseException) -> Iterator[BaseException]:
    """`err`, then each error it chains (its causes and contexts, depth first), each once.

    Parameters
    ----------
    err : BaseException
        The error.

    Yields
    ------
    BaseException
        `err` and the errors it was raised from or while handling.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        cause = todo.pop()
        if cause is None or id(cause) in seen:
            continue
        seen.add(id(cause))
        yield cause
        todo += [cause.__cause__, cause.__context__]


def interruption(err: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that `err` hides, if any: the one to raise instead of handling `err`.

    Looks through the error's causes and contexts for a KeyboardInterrupt (a `Terminated`), and
    answers a new one when none is there but this process received SIGTERM through
    `raise_terminated` (a `Terminated`) or a Ctrl-C that `keep_unraisable_interrupts` kept (a
    KeyboardInterrupt): a terminated process must stop, whatever error the signal turned into.

    Parameters
    ----------
    err : BaseException
        An error caught by an ``except Exception`` around a storage or network call.

    Returns
    -------
    KeyboardInterrupt or None
        The interrupt to raise; None when `err` is an ordinary error.
    """
    for cause in chained(err):
        if isinstance(cause, KeyboardInterrupt):
            return cause
    if _terminations:
        return _spent_signal(type(err).__name__)
    return None
