"""Clustering methods, one module each, behind one interface (`ClusteringMethod`).

Every module of this package whose name does not start with ``_`` is a method module:
:func:`get` and :func:`names` import them all once, and each `Method` subclass with a
`name` registers itself. Adding a method is adding a module here (and its config file
``conf/method/<name>.yaml``); nothing else names it.
"""

from __future__ import annotations

import importlib
import pkgutil

from ._base import BasisMethod, ClusteringMethod, GraphMethod, IterationCallback, Method, registered

__all__ = ["BasisMethod", "ClusteringMethod", "GraphMethod", "IterationCallback", "Method", "get", "names"]


def _load_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def names() -> tuple[str, ...]:
    """The registered methods' names, sorted.

    Returns
    -------
    tuple of str
    """
    _load_all()
    return tuple(sorted(registered()))


def get(name: str) -> type[Method]:
    """The method class registered as `name`.

    Parameters
    ----------
    name : str
        A method's name, e.g. ``"nmf"``.

    Returns
    -------
    type
        The `Method` subclass.

    Raises
    ------
    KeyError
        When no method has that name.
    """
    _load_all()
    return registered()[name]
