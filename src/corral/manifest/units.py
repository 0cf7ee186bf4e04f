"""Durations, sizes and percentages as users write them, and back again for display.

Theory of operation: every function here is a pure mapping from one value to another; nothing
reads the environment or the clock. Parsers accept what a user writes in YAML or JSON and
return one canonical number, so the rest of Corral never parses unit strings:

- durations become float **seconds**: ``500ms``, ``10s``, ``1m30s``, ``10m``, ``2h``, ``1d``;
  a bare number (``5``, ``0.5``, ``"5"``) is seconds. Components must run from larger to
  smaller units, each at most once (``1m30s``, not ``30s1m``), as in Go's ``time.Duration``.
- sizes become int **bytes**: binary suffixes ``Ki Mi Gi Ti`` (powers of 1024) and decimal ``k M
  G T`` (powers of 1000), as Kubernetes quantities; an optional trailing ``B`` is allowed
  (``256MiB``); a bare integer is bytes. Fractions round to the nearest byte (``1.5Gi``).
- percentages become a float percent: ``25%`` and ``25`` are both 25.0.

Invalid input raises ``UnitError`` (a ``ValueError``) whose message says what was wrong and
whose ``hint`` shows a valid example; the schema turns it into a manifest problem at its path.
Booleans are refused everywhere even though Python treats them as integers: ``grace: yes`` is a
mistake, not one second.
"""

from __future__ import annotations

import re

__all__ = [
    "UnitError",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_percent",
    "parse_size",
]


class UnitError(ValueError):
    """A value that is not a valid duration, size or percentage; ``hint`` shows a valid one."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


_DURATION_UNITS: dict[str, float] = {
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
}
_DURATION_ORDER = ["d", "h", "m", "s", "ms"]
_NUMBER = r"\d+(?:\.\d+)?|\.\d+"
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|d|h|m|s)")
_BARE_NUMBER = re.compile(rf"^(?:{_NUMBER})$")
_DURATION_HINT = "write it like 500ms, 10s, 1m30s, 10m or 2h; a bare number means seconds"


def _describe(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}"


def parse_duration(value: object) -> float:
    """Seconds in ``value`` (``"1m30s"`` → 90.0, ``"500ms"`` → 0.5, ``5`` → 5.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UnitError(f"expected a duration, got {_describe(value)}", _DURATION_HINT)
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise UnitError(f"expected a finite duration, got {value!r}", _DURATION_HINT)
        if value < 0:
            raise UnitError(f"a duration cannot be negative, got {value!r}", _DURATION_HINT)
        return float(value)
    text = value.strip()
    if text.startswith("-"):
        raise UnitError(f"a duration cannot be negative, got {value!r}", _DURATION_HINT)
    if _BARE_NUMBER.match(text):
        return float(text)
    total = 0.0
    position = 0
    last_rank = -1
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        unit = match.group(2)
        rank = _DURATION_ORDER.index(unit)
        if rank <= last_rank:
            raise UnitError(
                f"invalid duration {value!r}: units must go from larger to smaller, once each",
                _DURATION_HINT,
            )
        last_rank = rank
        total += float(match.group(1)) * _DURATION_UNITS[unit]
        position = match.end()
    if position != len(text) or position == 0:
        raise UnitError(f"invalid duration {value!r}", _DURATION_HINT)
    return total


_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}
_SIZE = re.compile(rf"^({_NUMBER})\s*(Ki|Mi|Gi|Ti|k|K|M|G|T|)B?$")
_SIZE_HINT = "write it like 256Mi, 1Gi, 512M or 100k; a bare integer means bytes"


def parse_size(value: object) -> int:
    """Bytes in ``value`` (``"256Mi"`` → 268435456, ``"1k"`` → 1000, ``512`` → 512)."""
    if isinstance(value, bool) or not isinstance(value, int | str | float):
        raise UnitError(f"expected a size, got {_describe(value)}", _SIZE_HINT)
    if isinstance(value, float):
        if not value.is_integer():
            raise UnitError(f"a size in bytes must be a whole number, got {value!r}", _SIZE_HINT)
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"a size cannot be negative, got {value!r}", _SIZE_HINT)
        return value
    text = value.strip()
    if text.startswith("-"):
        raise UnitError(f"a size cannot be negative, got {value!r}", _SIZE_HINT)
    match = _SIZE.match(text)
    if match is None:
        lowered = text.lower()
        unit_hint = _SIZE_HINT
        for suffix, proper in (("mib", "Mi"), ("gib", "Gi"), ("kib", "Ki"), ("mi", "Mi")):
            if lowered.endswith(suffix):
                unit_hint = f"units are case-sensitive: did you mean {proper}? ({_SIZE_HINT})"
                break
        raise UnitError(f"invalid size {value!r}", unit_hint)
    number, unit = match.group(1), match.group(2)
    return round(float(number) * _SIZE_UNITS[unit])


_PERCENT_HINT = "write it like 25% (or the bare number 25)"


def parse_percent(value: object) -> float:
    """The percent in ``value`` (``"25%"`` → 25.0, ``25`` → 25.0); 0 or more."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UnitError(f"expected a percentage, got {_describe(value)}", _PERCENT_HINT)
    if isinstance(value, str):
        text = value.strip().removesuffix("%").strip()
        if not _BARE_NUMBER.match(text):
            raise UnitError(f"invalid percentage {value!r}", _PERCENT_HINT)
        number = float(text)
    else:
        number = float(value)
    if number < 0 or number != number or number == float("inf"):
        raise UnitError(f"a percentage must be 0 or more, got {value!r}", _PERCENT_HINT)
    return number


def _trim(number: float) -> str:
    text = f"{number:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def format_duration(seconds: float) -> str:
    """A short human form: 0.25 → ``250ms``, 90 → ``1m30s``, 600 → ``10m``, 1.5 → ``1.5s``.

    Parsing the result gives back ``seconds`` to the millisecond."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{_trim(seconds * 1000)}ms"
    if seconds < 60:
        return f"{_trim(seconds)}s"
    millis = round(seconds * 1000)
    whole, frac_ms = divmod(millis, 1000)
    parts: list[str] = []
    for unit in ("d", "h", "m"):
        size = int(_DURATION_UNITS[unit])
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    if whole or frac_ms:
        parts.append(f"{_trim(whole + frac_ms / 1000)}s")
    return "".join(parts)


def format_size(size: int) -> str:
    """A short human form in binary units: 268435456 → ``256Mi``, 1536 → ``1.5Ki``, 512 → ``512B``.

    The largest unit that shows the size exactly with at most one decimal wins (``1.5Gi``,
    ``1025Ki``); a size exact in no unit is rounded to one decimal for display."""
    if size < 0:
        return "-" + format_size(-size)
    units = ("Ti", "Gi", "Mi", "Ki")
    for unit in units:
        scale = _SIZE_UNITS[unit]
        if size >= scale and (size * 10) % scale == 0:
            return f"{_trim(size / scale)}{unit}"
    for unit in units:
        scale = _SIZE_UNITS[unit]
        if size >= scale:
            return f"{size / scale:.1f}{unit}"
    return f"{size}B"
