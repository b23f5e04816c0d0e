"""Placeholder until the Optuna sweeper lands: no trial, no pruning."""
from __future__ import annotations


class TrialReporter:
    @classmethod
    def from_config(cls, trial):
        if trial:
            raise NotImplementedError("Optuna trials are not wired yet")
        return None
