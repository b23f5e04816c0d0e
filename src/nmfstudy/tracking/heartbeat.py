"""The heartbeat: a thread that tags runs with the time, so that other machines can tell they are alive."""
from __future__ import annotations

import logging
import threading

from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis

from nmfstudy.study_names import HEARTBEAT_INTERVAL_TAG, HEARTBEAT_TAG

from .store import Store

# One logger for the package, as before it was split: log lines name nmfstudy.tracking.
log = logging.getLogger(__package__)


class Heartbeat:
    """Tags runs with the time every `interval_s`, so that other machines can tell they are alive.

    Only for a tracking server or database: on one machine (SQLite) the process id is enough.

    Parameters
    ----------
    client : MlflowClient
        A client of the store.
    store : Store
        The store; a SQLite one gets no heartbeat.
    interval_s : float
        Seconds between two beats; 0: none.
    """

    def __init__(self, client: MlflowClient, store: Store, interval_s: float) -> None:
        self.client, self.interval_s = client, float(interval_s)
        self.enabled = not store.tracking_uri.startswith("sqlite") and self.interval_s > 0
        self.run_ids: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tags(self) -> dict[str, str]:
        """The tags a new run gets so that readers know it beats.

        Returns
        -------
        dict
            The interval and the first beat; empty when disabled.
        """
        if not self.enabled:
            return {}
        return {HEARTBEAT_INTERVAL_TAG: f"{self.interval_s:g}", HEARTBEAT_TAG: str(get_current_time_millis())}

    def add(self, run_id: str) -> None:
        """Beat for a run from now on (the thread starts with the first run).

        Parameters
        ----------
        run_id : str
            The run.
        """
        if not self.enabled:
            return
        self.run_ids.add(run_id)
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="mlflow-heartbeat", daemon=True)
            self._thread.start()

    def discard(self, run_id: str) -> None:
        """Stop beating for a run.

        Parameters
        ----------
        run_id : str
            The run.
        """
        self.run_ids.discard(run_id)

    def stop(self) -> None:
        """Stop beating (the thread ends at its next wake-up)."""
        self._stop.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            for run_id in list(self.run_ids):
                try:
                    self.client.set_tag(run_id, HEARTBEAT_TAG, str(get_current_time_millis()))
                except Exception as err:  # a restarting server: the next beat may get through
                    log.debug("heartbeat of run %s failed: %s", run_id, err)
