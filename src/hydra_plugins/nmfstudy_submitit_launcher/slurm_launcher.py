"""What Hydra's plugin scan finds: the SLURM launcher of `_launcher`, when hydra-submitit-launcher is installed.

`conf/hydra/launcher/slurm.yaml` names it; without the `cluster` extra there is nothing to find, and
Hydra's scan stays quiet.
"""
try:
    from ._launcher import SlurmLauncher  # noqa: F401
except ImportError:  # pip install -e ".[cluster]" brings hydra-submitit-launcher and submitit
    pass
