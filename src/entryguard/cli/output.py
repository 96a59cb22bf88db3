"""How ``eg`` prints: Rich tables and lines for people, JSON for scripts, one-line errors.

Everything the server sent is passed through :func:`clean` before it reaches a
terminal, so a resource name or an audit detail cannot carry escape sequences that
rewrite the screen; and nothing is printed as Rich markup, so ``[brackets]`` in a
name are shown as they are.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from entryguard.durations import format_duration

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_NEWLINES = re.compile(r"\s*[\r\n]+\s*")


def clean(value: object) -> str:
    """Text that is safe to print: no control characters, ``-`` for nothing."""
    if value is None or value == "":
        return "-"
    return _CONTROL.sub("?", str(value))


def one_line(message: str) -> str:
    return _CONTROL.sub("?", _NEWLINES.sub(" ", message.strip()))


def _console(stream: TextIO) -> Console:
    # Piped output keeps whole lines: Rich would otherwise wrap at 80 columns.
    wide = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(
        file=stream,
        highlight=False,
        soft_wrap=True,
        width=240 if wide else None,
        emoji=False,
        markup=False,
    )


def stdout() -> Console:
    return _console(sys.stdout)


def print_line(text: str | Text = "") -> None:
    stdout().print(text)


def print_ok(message: str) -> None:
    """``✓ message``, the check in green on a terminal."""
    stdout().print(Text.assemble(("✓", "green"), " ", message))


def print_warning(message: str) -> None:
    sys.stdout.flush()  # keep the order of stdout and stderr when both go to one place
    _console(sys.stderr).print(Text.assemble(("warning:", "yellow"), " ", one_line(message)))


def print_error(message: str) -> None:
    sys.stdout.flush()
    _console(sys.stderr).print(Text.assemble(("error:", "red"), " ", one_line(message)))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def print_json_line(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


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
