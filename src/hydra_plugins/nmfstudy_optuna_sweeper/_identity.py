"""A study is one experiment: what it was made with, recorded with it, and the check of every later command.

Optuna itself only refuses a parameter whose kind or choices changed; two presets searching other
parameters, or one preset on other data, would land in one study, whose best trial then comes from
an experiment its settings do not describe. So the first command records, as study user attrs,
the search space's keys, the method and the data setting (`nmfstudy.study_names.data_label`), and
a later command whose differ stops before its first trial.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nmfstudy.study_names import data_label

SPACE_ATTR, METHOD_ATTR, DATA_ATTR = "search_space", "method", "data"
NEW_NAME = "a study is one experiment: name a new one with hydra.sweeper.study_name=NAME"


def _fixed_keys(fixed: list[str]) -> set[str]:
    return {override.partition("=")[0].lstrip("+~") for override in fixed}


def setting(job: Mapping[str, Any], space: Mapping[str, Any]) -> dict[str, str]:
    """The method and data setting of a job's config (without `hydra`), leaving out what the space searches.

    Parameters
    ----------
    job : mapping
        The job's resolved config with the command's fixed overrides.
    space : mapping
        The searched keys.

    Returns
    -------
    dict
        ``{METHOD_ATTR: "nmfr", DATA_ATTR: "images-cats-28x28"}``, without a searched one.
    """
    searched = set(space)
    found = {}
    method = job.get("method")
    if isinstance(method, Mapping) and not searched & {"method", "method.name"}:
        found[METHOD_ATTR] = str(method.get("name"))
    dataset = job.get("dataset")
    if isinstance(dataset, Mapping) and not any(key == "dataset" or key.startswith("dataset.") for key in searched):
        found[DATA_ATTR] = data_label(dataset)
    return found


def check(study: Any, label: str, space: Mapping[str, Any], fixed: list[str], now: Mapping[str, str]) -> None:
    """Record what a study is made with, or refuse a command whose search space, method or data differ.

    A key the study searches may be fixed by a later command (``k=8``: trials inside the space);
    a key it does not search may not be added, nor one dropped without fixing it.

    Parameters
    ----------
    study : optuna.Study
        The study, just created or loaded.
    label : str
        Its storage, as messages show it (no password).
    space : mapping
        The command's search space: key -> `Dimension` (its `text`).
    fixed : list of str
        The command's fixed overrides ("k=8").
    now : mapping
        The command's `setting`.

    Raises
    ------
    ValueError
        With one line saying what differs and how to name a new study.
    """
    name, attrs = study.study_name, study.user_attrs
    where = f"study {name!r} in {label}"
    if METHOD_ATTR in now and attrs.get(METHOD_ATTR) not in (None, now[METHOD_ATTR]):
        raise ValueError(f"{where} was made for method={attrs[METHOD_ATTR]}, not method={now[METHOD_ATTR]}: "
                         f"{NEW_NAME}")
    if DATA_ATTR in now and attrs.get(DATA_ATTR) not in (None, now[DATA_ATTR]):
        raise ValueError(f"{where} was made on data {attrs[DATA_ATTR]}, not {now[DATA_ATTR]}: {NEW_NAME}")
    searched = {key: dim.text for key, dim in space.items()}
    recorded = attrs.get(SPACE_ATTR)
    if recorded is not None:
        added = [key for key in searched if key not in recorded]
        dropped = [key for key in recorded if key not in searched and key not in _fixed_keys(fixed)]
        listed = ", ".join(recorded) or "nothing"
        if added:
            raise ValueError(f"{where} searches {listed}; this command also searches {', '.join(added)}: {NEW_NAME}")
        if dropped:
            raise ValueError(f"{where} searches {listed}; this command neither searches nor fixes "
                             f"{', '.join(dropped)}: search or fix it, or {NEW_NAME}")
    for attr, value in ((SPACE_ATTR, searched), *now.items()):
        if attrs.get(attr) is None:
            study.set_user_attr(attr, value)
