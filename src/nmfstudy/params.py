"""Parameter declarations and the one validator that checks them.

After scikit-learn's ``_parameter_constraints``: a function or class declares each
parameter once, as a list of what it accepts (an `Interval`, an `Options`, a `Boolean`,
or ``None`` for "may be null"), next to its code. `validate` checks values against such a
declaration and raises `InvalidParameterError`, which names the parameter in the
library's own words (``solver must be one of hals, mu; got 'x'``). The command line
speaks in config keys (``method.solver``); `nmfstudy.config` is the one place that
renames the parameter into its key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Union

__all__ = ["Interval", "Options", "Boolean", "Constraint", "Declaration", "InvalidParameterError", "validate", "check"]


class InvalidParameterError(ValueError):
    """A parameter value that its declaration does not accept.

    Parameters
    ----------
    param : str
        The parameter's name, as the function or class that declares it spells it.
    detail : str
        What is wrong, without the name: ``"must be one of a, b; got 'c'"``.
    sep : str
        What joins name and detail in the message (``": "`` for ``"dir: no such folder"``).
    """

    def __init__(self, param: str, detail: str, sep: str = " ") -> None:
        super().__init__(f"{param}{sep}{detail}")
        self.param, self.detail, self.sep = param, detail, sep

    def renamed(self, name: str) -> str:
        """The message with the parameter called `name` (e.g. its config key)."""
        return f"{name}{self.sep}{self.detail}"


@dataclass(frozen=True)
class Interval:
    """Numbers of one kind between two bounds.

    Parameters
    ----------
    kind : type
        ``numbers.Integral`` for integers (booleans excluded) or ``numbers.Real`` for any
        finite real number.
    low, high : float or None
        The bounds; None for no bound on that side.
    closed : {"both", "left", "right", "neither"}
        Which bounds belong to the interval.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"

    def accepts(self, value: Any) -> bool:
        """True when `value` is a number of this kind inside the interval (booleans are not numbers)."""
        if isinstance(value, bool) or not isinstance(value, self.kind):
            return False
        if self.kind is Real and not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (value == self.low and self.closed in ("right", "neither"))):
            return False
        return not (self.high is not None
                    and (value > self.high or (value == self.high and self.closed in ("left", "neither"))))

    def describe(self, value: Any) -> str:
        """What the interval allows and what `value` was: ``"must be an integer >= 1, got 0"``."""
        if self.kind is Integral:
            if self.high is None:
                return f"must be an integer >= {self.low}, got {value!r}"
            return f"must be an integer in [{self.low}, {self.high}], got {value!r}"
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            return f"must be a number, got {value!r}"
        low = -math.inf if self.low is None else float(self.low)
        high = math.inf if self.high is None else float(self.high)
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        return f"must be in {left}{low}, {high}{right}, got {value!r}"


@dataclass(frozen=True)
class Options:
    """A fixed set of allowed values (strings, mostly), in the order messages list them."""

    values: tuple

    def accepts(self, value: Any) -> bool:
        """True when `value` is one of the options."""
        return isinstance(value, (str, int, float)) and not isinstance(value, bool) and value in self.values

    def describe(self, value: Any) -> str:
        """The options and what `value` was: ``"must be one of a, b; got 'c'"``."""
        return f"must be one of {', '.join(map(str, self.values))}; got {value!r}"


@dataclass(frozen=True)
class Boolean:
    """True or False (a YAML ``true``/``false``), nothing else: not 0, 1 or "yes"."""

    def accepts(self, value: Any) -> bool:
        """True when `value` is a bool."""
        return isinstance(value, bool)

    def describe(self, value: Any) -> str:
        """``"must be true or false; got 'x'"``."""
        return f"must be true or false; got {value!r}"


Constraint = Union[Interval, Options, Boolean, None]
Declaration = Mapping[str, Sequence[Constraint]]


def check(name: str, value: Any, constraints: Sequence[Constraint]) -> Any:
    """Return `value` when one of `constraints` accepts it, else raise `InvalidParameterError`.

    Parameters
    ----------
    name : str
        The parameter's name, for the message.
    value : object
        The value to check.
    constraints : sequence of Interval, Options or None
        What the parameter accepts; ``None`` in the list accepts ``None``.

    Returns
    -------
    object
        `value`, unchanged.
    """
    if value is None and None in constraints:
        return value
    if any(c is not None and c.accepts(value) for c in constraints):
        return value
    first = next(c for c in constraints if c is not None)
    raise InvalidParameterError(name, first.describe(value))


def validate(values: Mapping[str, Any], declaration: Declaration) -> None:
    """Check every declared parameter of `values` against its declaration, in declaration order.

    Parameters
    ----------
    values : mapping
        Parameter values by name; every declared name must be present.
    declaration : mapping of str to sequence of constraints
        What each parameter accepts (see `check`).

    Raises
    ------
    InvalidParameterError
        For the first parameter whose value no constraint accepts.
    """
    for name, constraints in declaration.items():
        check(name, values[name], constraints)
