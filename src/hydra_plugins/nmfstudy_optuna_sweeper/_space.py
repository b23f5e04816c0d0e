"""Search space: Hydra's override grammar -> Optuna distributions, and suggested values -> overrides.

    choice(a, b, c) or a,b,c     CategoricalDistribution (values keep their Hydra types, null too)
    range(start, stop, step)     Int/FloatDistribution with that step; stop excluded as in Hydra
                                 (the official plugin includes it); shuffle(range(...)) is a choice
    interval(low, high)          FloatDistribution; int(interval(...)) an IntDistribution
    tag(log, interval(...))      the same on a log scale
    anything else                a fixed override, passed unchanged to every trial
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


class SearchSpaceError(ValueError):
    """A param of hydra.sweeper.params (or a sweep on the command line) Optuna cannot search."""


@dataclass
class Dimension:
    """One searched key: its distribution, and how a suggested value is written back as an override.

    Parameters
    ----------
    key : str
        The key as written in the override, with any +/++ prefix or @package.
    name : str
        Optuna's param name: the config path.
    distribution : BaseDistribution
        What Optuna samples from.
    text : str
        The grammar it came from, e.g. "tag(log, interval(1e-5, 1e-1))".
    choice_strings : dict
        For a categorical: repr(choice) -> the choice as Hydra's override wrote it.
    """

    key: str  # as written in the override, with any +/++ prefix or @package
    name: str  # Optuna's param name: the config path
    distribution: BaseDistribution
    text: str  # the grammar it came from, e.g. "tag(log, interval(1e-5, 1e-1))"
    choice_strings: dict[str, str] = field(default_factory=dict)  # repr(choice) -> override string

    def override(self, value: Any) -> str:
        """The override that sets this key to a suggested value.

        Parameters
        ----------
        value : object
            A value of the distribution.

        Returns
        -------
        str
            "key=value" in Hydra's override grammar.
        """
        if self.choice_strings:
            return f"{self.key}={self.choice_strings[repr(value)]}"
        return f"{self.key}={render(value)}"


def render(value: Any) -> str:
    """`value` in Hydra's override grammar (strings quoted, None as null, dicts and lists nested).

    Parameters
    ----------
    value : object
        None, a bool, number, string, mapping or sequence of them.

    Returns
    -------
    str
        Text that Hydra's override parser reads back as `value`.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{key}:{render(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(render(item) for item in value) + "]"
    # Hydra's quoted strings: backslashes are literal except before a quote or the closing quote.
    text = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), str(value))
    return f"'{text}'"


def _distribution(override: Override) -> tuple[BaseDistribution, dict[str, str]]:
    """The override's Optuna distribution, and for a categorical the override string of each choice."""
    value = override.value()
    key = override.get_key_element()
    if override.is_choice_sweep() or (isinstance(value, RangeSweep) and value.shuffle):
        return _categorical(override, key)
    if isinstance(value, RangeSweep):
        return _stepped(override, value, key), {}
    if isinstance(value, IntervalSweep):
        return _interval(value, key), {}
    raise SearchSpaceError(f"{key}: Optuna cannot search {override.input_line!r}")


def _categorical(override: Override, key: str) -> tuple[CategoricalDistribution, dict[str, str]]:
    """choice(...), a,b,c or shuffle(range(...)): typed values for Optuna, Hydra's own strings for overrides."""
    # one pass, since shuffle() reorders each pass
    raw = list(override.sweep_iterator(transformer=Transformer.identity))
    if not raw:
        raise SearchSpaceError(f"{key}: {override.input_line!r} has no values")
    pairs = [(Transformer.encode(x), Transformer.str(x)) for x in raw]
    if getattr(override.value(), "shuffle", False):
        # A resumed study needs the same choices in the same order; shuffling is the sampler's job.
        try:
            pairs.sort()
        except TypeError:
            pairs.sort(key=repr)
    return CategoricalDistribution([v for v, _ in pairs]), {repr(v): text for v, text in pairs}


def _stepped(override: Override, value: RangeSweep, key: str) -> BaseDistribution:
    """range(start, stop, step): that step, `stop` excluded as in Hydra."""
    start, stop, step = value.start, value.stop, value.step
    if "log" in value.tags:
        raise SearchSpaceError(f"{key}: a log scale needs interval(...), e.g. tag(log, int(interval(8, 64)))")
    n = math.ceil((stop - start) / step)
    if n <= 0:
        raise SearchSpaceError(f"{key}: {override.input_line!r} is empty")
    if all(isinstance(x, int) for x in (start, stop, step)):
        return IntDistribution(start, start + (n - 1) * step, step=step)
    return FloatDistribution(start, start + (n - 1) * step, step=step)


def _interval(value: IntervalSweep, key: str) -> BaseDistribution:
    """interval(low, high), int(...) of it, tag(log, ...) of either."""
    log = "log" in value.tags
    if log and value.start <= 0:
        raise SearchSpaceError(f"{key}: a log-scale interval needs a positive lower bound, got {value.start}")
    if isinstance(value.start, int) and isinstance(value.end, int):
        return IntDistribution(value.start, value.end, log=log)
    return FloatDistribution(float(value.start), float(value.end), log=log)


def parse_search_space(
    params: Mapping[str, Any] | None, arguments: Iterable[str] = (), config_loader: Any = None
) -> tuple[dict[str, Dimension], list[str]]:
    """The searched dimensions and the fixed overrides of hydra.sweeper.params and the command line.

    A key given on the command line replaces the same key of `params` (a sweep there is searched,
    a plain value fixes it).

    Parameters
    ----------
    params : mapping or None
        hydra.sweeper.params: key -> grammar (a string) or a plain value.
    arguments : iterable of str
        The command line's overrides.
    config_loader : object
        Hydra's config loader, for the parser (None in tests).

    Returns
    -------
    tuple
        ({param name: Dimension}, [fixed override]).

    Raises
    ------
    SearchSpaceError
        For a sweep Optuna cannot search (naming its key).
    """
    lines = [f"{key}={value if isinstance(value, str) else render(value)}" for key, value in (params or {}).items()]
    parser = OverridesParser.create(config_loader=config_loader)
    by_key: dict[str, Override] = {}
    for override in parser.parse_overrides([*lines, *arguments]):
        by_key[override.key_or_group] = override  # the later one wins
    space: dict[str, Dimension] = {}
    fixed: list[str] = []
    for name, override in by_key.items():
        if not override.is_sweep_override():
            fixed.append(override.input_line or f"{override.get_key_element()}={override.get_value_element_as_str()}")
            continue
        distribution, strings = _distribution(override)
        text = override.input_line.split("=", 1)[1] if override.input_line else str(override.value())
        space[name] = Dimension(override.get_key_element(), name, distribution, text, strings)
    return space, fixed
