"""The sweeper's side of the Optuna storage: calls that outlast a server restart, trial heartbeats, safe URLs."""
from __future__ import annotations

import gc
import logging
import threading
import time
import traceback
from typing import Any, Callable, TypeVar

from nmfstudy.processes import chained, interruption

log = logging.getLogger(__name__)
T = TypeVar("T")


def retrying(what: str, action: Callable[[], T], patience_s: float = 120.0) -> T:
    """Call `action()`, again while the storage's server is unreachable (a PostgreSQL restart).

    Parameters
    ----------
    what : str
        What the call does, for the warning ("asking a trial").
    action : callable
        The call.
    patience_s : float
        Seconds to keep trying before the last error is raised.

    Returns
    -------
    object
        What `action` returns.
    """
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import DBAPIError, OperationalError

    deadline, wait = time.monotonic() + patience_s, 0.5
    while True:
        try:
            return action()
        except (OperationalError, DBAPIError, StorageInternalError) as err:
            # Optuna's storage turns a driver's error in its commit into StorageInternalError: the same outage
            if isinstance(err, StorageInternalError) and not isinstance(err.__cause__, (OperationalError, DBAPIError)):
                raise
            stop = interruption(err)
            if stop is not None:  # SIGTERM inside the call, turned into a driver's error: stop, never retry
                raise stop from err
            if time.monotonic() > deadline:
                raise
            log.warning("%s: the storage did not answer (%s); trying again in %.0f s", what,
                        str(err).strip().splitlines()[0][:200], wait)
            time.sleep(wait)
            wait = min(wait * 2, 10.0)


def release_interrupted(err: BaseException) -> None:
    """Free what the calls that `err` (and the errors it chains) cut short still hold: their frames' locals.

    A Ctrl-C that lands while an in-process job steps through a query of an SQLite storage leaves that
    query's cursor in the traceback's frames. SQLAlchemy closes the connection, but SQLite keeps a closed
    connection with an unfinished statement alive, holding its shared lock, until the statement is freed:
    every write to the file waits for it (60 s a try, the storage's busy timeout), the sweeper's telling
    the trial FAIL among them. The frames that still run (the sweeper's own) keep their locals.
    Not covered yet: a cut-short query whose connection went back to the pool with its cursor still
    open (Python 3.11's sqlite3 no longer resets cursors on rollback), held from outside these frames;
    in a loop of Ctrl-Cs on a tiny in-process study it hung about 1 in 65, against 1 in 18 before.

    Parameters
    ----------
    err : BaseException
        The interrupt (or error) that ended the batch.
    """
    for cause in chained(err):
        traceback.clear_frames(cause.__traceback__)
    gc.collect()  # a cursor in a reference cycle is freed only by the collector


def safe_url(url: str) -> str:
    """A storage URL without its password, for messages and the tracker.

    Parameters
    ----------
    url : str
        An SQLAlchemy URL.

    Returns
    -------
    str
        The URL with the password shown as ***; the URL unchanged when it cannot be parsed.
    """
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


class Heartbeats:
    """Records the heartbeat of this worker's running trials in the storage, from a thread.

    Optuna does this only inside `study.optimize`, which an ask-and-tell sweeper never calls.

    Parameters
    ----------
    storage : optuna.storages.RDBStorage
        The storage, opened with a heartbeat interval.
    interval_s : int
        Seconds between two heartbeats.
    """

    def __init__(self, storage: Any, interval_s: int) -> None:
        self.storage, self.interval_s = storage, interval_s
        self.trial_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)
        self._thread.start()

    def add(self, trial_id: int) -> None:
        """Beat for a trial from now on, starting at once (a trial without a heartbeat is never found stale).

        Parameters
        ----------
        trial_id : int
            The trial's id in the storage.
        """
        with self._lock:
            self.trial_ids.add(trial_id)
        self._beat(trial_id)

    def discard(self, trial_id: int) -> None:
        """Stop beating for a trial.

        Parameters
        ----------
        trial_id : int
            The trial's id in the storage.
        """
        with self._lock:
            self.trial_ids.discard(trial_id)

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self, trial_id: int) -> None:
        try:
            self.storage.record_heartbeat(trial_id)
        except Exception as err:  # a restarting server: the next beat may get through
            log.debug("heartbeat of trial id %d failed: %s", trial_id, err)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                self._beat(trial_id)
