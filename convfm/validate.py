"""Checks for configuration values, used by every config class and extractor: each takes the allowed range
once and builds its message from it, so the check and the message cannot drift apart.

A failure is a ``ConfigError`` whose message starts with the field and says what is allowed and what was given
(``batch_size: must be an integer in [1, 1048576], got True``); its ``field`` lets the YAML loader add the key's
line. Booleans are never numbers here: YAML reads ``yes``/``true`` as True, which Python would take as 1.
NumPy scalars count as the numbers they hold.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence

from convfm.errors import ConfigError


def require(ok: bool, field: str, message: str) -> None:
    """For a rule that is not a range or a choice (overlaps, duplicates, formats): ``field: message`` unless ok."""
    if not ok:
        raise ConfigError(f"{field}: {message}", field=field)


def is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number that is not a boolean."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_int(value: Any, field: str, low: Optional[int] = None, high: Optional[int] = None, *,
              odd: bool = False, low_from: str = "", high_from: str = "") -> int:
    """``value`` as an int when it is an integer in [low, high] (either bound may be open-ended).

    ``low_from``/``high_from`` name where a bound comes from when it is another field (``max_t``), so the
    message shows ``[1, max_t=4]``."""
    ok = is_integer(value) and _within(value, low, high) and (not odd or value % 2 == 1)
    kind = "an odd integer" if odd else "an integer"
    require(ok, field, f"must be {kind}{_range(low, high, low_from=low_from, high_from=high_from)}, "
                       f"got {value!r}{_as_text(value, integer=True)}")
    return int(value)


def check_number(value: Any, field: str, low: Optional[float] = None, high: Optional[float] = None, *,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float when it is a finite number in the interval (closed unless ``*_open``)."""
    ok = is_number(value) and _within(value, low, high, low_open, high_open)
    kind = "a number" if low is not None or high is not None else "a finite number"
    require(ok, field, f"must be {kind}{_range(low, high, low_open, high_open)}, got {value!r}{_as_text(value)}")
    return float(value)


def check_int_list(values: Any, field: str, low: int, high: int) -> tuple[int, ...]:
    """A non-empty list (or tuple) of integers in [low, high], as a tuple."""
    ok = isinstance(values, (list, tuple)) and len(values) > 0 and all(
        is_integer(v) and _within(v, low, high) for v in values)
    require(ok, field, f"must be a non-empty list of integers{_range(low, high)}, got {values!r}")
    return tuple(int(v) for v in values)


def check_list(values: Any, field: str, what: str) -> tuple[Any, ...]:
    """A list (or tuple) as a tuple; a single string is refused rather than read as its characters."""
    one = f" (write [{values}] for one)" if isinstance(values, str) else ""
    require(isinstance(values, (list, tuple)), field, f"must be a list of {what}{one}, got {values!r}")
    return tuple(values)


def check_choice(value: Any, field: str, choices: Sequence[Any]) -> Any:
    """``value`` when it is one of ``choices``."""
    require(value in choices, field, f"must be one of {list(choices)}, got {value!r}")
    return value


def check_bool(value: Any, field: str) -> bool:
    """``value`` when it is True or False (not 0/1, not the string 'yes')."""
    require(isinstance(value, bool), field, f"must be true or false, got {value!r}")
    return value


def check_text(value: Any, field: str, what: str) -> str:
    """``value`` when it is a string with something besides blanks; ``what`` says what it should name."""
    require(isinstance(value, str) and bool(value.strip()), field, f"must be {what}, got {value!r}")
    return value


def lone_surrogate(text: str) -> Optional[int]:
    """Where ``text`` holds a lone UTF-16 surrogate (0-based; JSON can escape one, no UTF-8 file holds it), or
    None: text that can be written as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _as_text(value: Any, integer: bool = False) -> str:
    """A hint when ``value`` is a string holding a number: YAML 1.1 reads ``1e-3`` (no dot) and ``1.0e3`` (no
    sign) as text, so a number written that way reaches the check as a string."""
    try:
        number = float(value) if isinstance(value, str) else math.nan
    except ValueError:
        return ""
    if not math.isfinite(number) or (integer and not number.is_integer()):
        return ""
    if integer:
        fix = str(int(number))
    else:
        mantissa, e, exponent = value.strip().lower().partition("e")
        mantissa = mantissa if "." in mantissa else mantissa + ".0"
        fix = mantissa + (e + (exponent if exponent[:1] in "+-" else "+" + exponent) if e else "")
    if fix == value.strip():  # a number YAML would read, so it was quoted
        return " (a number in quotes is text: write it without quotes)"
    return f" (YAML reads {value} as text: write {fix})"


def _within(value: Any, low: Optional[float], high: Optional[float], low_open: bool = False,
            high_open: bool = False) -> bool:
    above = low is None or (value > low if low_open else value >= low)
    below = high is None or (value < high if high_open else value <= high)
    return above and below


def _range(low: Optional[float], high: Optional[float], low_open: bool = False, high_open: bool = False, *,
           low_from: str = "", high_from: str = "") -> str:
    """' in [1, 64]', ' in (0, 1]', ' >= 1', ' <= 8' or '' (no bounds)."""
    lo = f"{low_from}={_show(low)}" if low_from else _show(low)
    hi = f"{high_from}={_show(high)}" if high_from else _show(high)
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {lo}"
    if high is not None:
        return f" {'<' if high_open else '<='} {hi}"
    return ""


def _show(bound: Optional[float]) -> str:
    """A bound as written in a config: 0 and 1 rather than 0.0 and 1.0."""
    return f"{bound:g}" if isinstance(bound, float) else str(bound)
