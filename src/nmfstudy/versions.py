"""Versions of the packages a result depends on, recorded with every run."""
from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("nmfstudy", "numpy", "scipy", "scikit-learn", "hydra-core", "mlflow", "optuna", "matplotlib", "mlxtend")


def package_versions() -> dict[str, str]:
    """The Python version and the installed version of each package of ``PACKAGES``.

    Recorded with every run, so that a result can be traced to the code that produced it.

    Returns
    -------
    dict of str to str
        "python" and each package name, mapped to its version, or "not installed".
    """
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
