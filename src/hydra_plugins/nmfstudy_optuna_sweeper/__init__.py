"""nmfstudy's Optuna sweeper for Hydra: ask-and-tell on a current Optuna, persistent, resumable, pruning.

`hydra/sweeper=optuna` selects it (see config.py for its keys; docs/optuna.md for usage).
"""
