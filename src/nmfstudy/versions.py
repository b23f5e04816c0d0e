"""What a result depends on, recorded with every run: the packages' versions and the code's git state."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

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


def _git(folder: Path, *args: str) -> str | None:
    """What `git args...` prints in `folder`, stripped; None without git or outside a work tree."""
    try:
        out = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(folder: Path) -> str:
    """The commit checked out in `folder`.

    Parameters
    ----------
    folder : Path
        A folder of a git work tree.

    Returns
    -------
    str
        The commit's hash, or "unknown" (no git, not a work tree).
    """
    return _git(folder, "rev-parse", "HEAD") or "unknown"


def git_tags(folder: Path) -> dict[str, str]:
    """The commit checked out in `folder` and whether the work tree differs from it, as MLflow run tags.

    MLflow's fluent runs get ``mlflow.source.git.commit`` by themselves; runs made with
    ``MlflowClient.create_run`` (a study's, its trials') and runs continued by id do not.

    Parameters
    ----------
    folder : Path
        A folder of a git work tree.

    Returns
    -------
    dict
        ``mlflow.source.git.commit`` (the hash, or "unknown") and ``nmfstudy.git_dirty`` ("true" when
        tracked files have uncommitted changes, "false", or "unknown").
    """
    commit = git_commit(folder)
    status = _git(folder, "status", "--porcelain", "--untracked-files=no") if commit != "unknown" else None
    dirty = "unknown" if status is None else ("true" if status else "false")
    return {"mlflow.source.git.commit": commit, "nmfstudy.git_dirty": dirty}
