"""Strict parsing and friendly formatting of durations (``4``, ``90s``, ``30m``, ``2h``, ``1h30m``)."""

from __future__ import annotations

import re

from entryguard.errors import Invalid

# A bare number means hours (``eg session start --duration 4``). Units may be
# combined in descending order; each part is a plain decimal integer, so
# ``1e309``, ``nan``, ``-1`` and ``inf`` never reach float().
_PART = re.compile(r"(\d{1,7})([dhms])")
_ORDER = "dhms"
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
MAX_SECONDS = 366 * 86400


class DurationError(Invalid, ValueError):
    """Not a valid duration."""

    code = "invalid_duration"


def parse_duration(text: str | int, *, bare_unit: str = "h") -> int:
    """Return the duration in whole seconds; refuse zero, negatives, garbage and overflow."""
    if isinstance(text, bool):
        raise DurationError("duration must be text like 4, 90s, 30m, 2h or 1h30m")
    raw = str(text).strip().lower()
    hint = "use a positive duration like 4 (hours), 90s, 30m, 2h or 1h30m"
    if not raw:
        raise DurationError(f"empty duration: {hint}")
    if not raw.isascii():
        raise DurationError(f"invalid duration {text!r}: {hint}")
    if raw.isdigit():
        if len(raw) > 7:
            raise DurationError(f"duration {text!r} is too long: {hint}")
        seconds = int(raw) * _SECONDS[bare_unit]
    else:
        pos, seconds, last = 0, 0, -1
        for m in _PART.finditer(raw):
            if m.start() != pos:
                break
            unit_index = _ORDER.index(m.group(2))
            if unit_index <= last:
                raise DurationError(f"invalid duration {text!r}: units must go from large to small")
            last = unit_index
            seconds += int(m.group(1)) * _SECONDS[m.group(2)]
            pos = m.end()
        if pos != len(raw) or pos == 0:
            raise DurationError(f"invalid duration {text!r}: {hint}")
    if seconds <= 0:
        raise DurationError(f"duration {text!r} must be more than zero: {hint}")
    if seconds > MAX_SECONDS:
        raise DurationError(f"duration {text!r} is longer than a year")
    return seconds


def format_duration(seconds: float) -> str:
    """``4h 0m``, ``1h 30m``, ``5m 3s``, ``42s`` — the shape ``eg`` prints."""
    s = max(0, round(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h {m}m"
    if h:
        return f"{h}h {m}m"
    if m:
        return f"{m}m {s}s"
    return f"{s}s"
