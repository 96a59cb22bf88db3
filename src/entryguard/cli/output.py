"""How ``eg`` prints: Rich tables and lines for people, JSON for scripts, one-line errors.

Everything the server sent is passed through :func:`clean` before it reaches a
terminal, so a resource name or an audit detail cannot carry escape sequences that
rewrite the screen; and nothing is printed as Rich markup, so ``[brackets]`` in a
name are shown as they are.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from rich import box
from rich.table import Table

from entryguard.console import (
    clean,
    one_line,
    print_error,
    print_json,
    print_json_line,
    print_line,
    print_ok,
    print_warning,
    stdout,
)
from entryguard.durations import format_duration

# The one-line and JSON printers live in entryguard.console (shared with entryguard
# and eg-agent); eg's modules import them from here with the tables and times.
__all__ = [
    "clean",
    "format_hours",
    "format_relative",
    "format_time",
    "one_line",
    "parse_time",
    "print_error",
    "print_json",
    "print_json_line",
    "print_line",
    "print_ok",
    "print_table",
    "print_warning",
    "seconds_until",
    "stdout",
    "yes_no",
]


def print_table(columns: Sequence[str], rows: Iterable[Sequence[object]], *, empty: str) -> None:
    """A plain table; ``empty`` is printed instead when there are no rows."""
    materialised = [[clean(cell) for cell in row] for row in rows]
    if not materialised:
        print_line(empty)
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in materialised:
        table.add_row(*row)
    console = stdout()
    with console.capture() as captured:
        console.print(table)
    # Rich pads every cell to the column width; trailing blanks only get in a pager's way.
    sys.stdout.write("\n".join(line.rstrip() for line in captured.get().splitlines()) + "\n")
    sys.stdout.flush()


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def seconds_until(value: object, now: datetime | None = None) -> float | None:
    t = parse_time(value)
    if t is None:
        return None
    return (t - (now or datetime.now(UTC))).total_seconds()


def format_time(value: object) -> str:
    """``2026-11-22 21:00:05Z`` (UTC, to the second), ``-`` for nothing."""
    t = parse_time(value)
    if t is None:
        return clean(value)
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_relative(value: object) -> str:
    """``in 3h 59m`` or ``5m 3s ago``; ``-`` for nothing."""
    left = seconds_until(value)
    if left is None:
        return clean(value)
    if left >= 0:
        return f"in {format_duration(left)}"
    return f"{format_duration(-left)} ago"


def format_hours(seconds: float) -> str:
    """``4h 0m``, ``24h 0m``: session lengths in hours even past a day (``eg session start``)."""
    s = max(0, round(seconds))
    if s < 3600:
        return format_duration(s)
    return f"{s // 3600}h {s % 3600 // 60}m"


def yes_no(value: object) -> str:
    return "yes" if value else "no"
