"""Client-side checks with the server's own parsers, so a typo fails before any request.

The server validates everything again; these only give the same message sooner.
"""

from __future__ import annotations

from typing import Any

import typer

from entryguard.cli.errors import UsageError
from entryguard.durations import DurationError, parse_duration
from entryguard.net import CidrError, parse_cidr


def duration_option(value: str | None) -> str | None:
    """Typer callback: refuse ``-1``, ``0``, ``abc``, ``1e309``, ``nan`` with one line."""
    if value is None:
        return None
    try:
        parse_duration(value)
    except DurationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return value.strip()


def duration_flag(name: str, *aliases: str, help: str) -> Any:
    """A ``--duration``-like option checked by :func:`duration_option`."""
    return typer.Option(name, *aliases, metavar="DURATION", callback=duration_option, help=help)


def check_cidr(text: str, allow_any: bool) -> str:
    try:
        parse_cidr(text, allow_any=allow_any)
    except CidrError as exc:
        raise UsageError(str(exc)) from exc
    return text


def cidr_body(resource: str, cidr: str, allow_any: bool, **optional: str | None) -> dict[str, Any]:
    """The body of a rule or guest grant: the CIDR checked first, empty optionals left out."""
    body: dict[str, Any] = {
        "resource": resource,
        "cidr": check_cidr(cidr, allow_any),
        "allow_any": allow_any,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port)."""
    raw = text.strip()
    if raw.startswith("["):
        host, sep, port = raw[1:].partition("]:")
    else:
        host, sep, port = raw.rpartition(":")
        if ":" in host:
            raise UsageError(f"invalid target {text!r}: write an IPv6 target as [ADDRESS]:PORT")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"invalid target {text!r}: expected HOST:PORT, e.g. 10.0.1.50:5432")
    return host, int(port)
