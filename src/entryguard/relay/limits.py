"""What one agent link may hold: its memory budget and its stream cap, set the same way
on both ends (``entryguard edge --link-memory/--max-streams``, the agent's
``tunnel.link_memory``/``tunnel.max_streams``), and the mux built from them.

The rule the budget drives is the mux's (docs/protocol.md, "Memory per link"); here
are the sizes a person types and the link's settings in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from entryguard.mux import (
    DEFAULT_LINK_MEMORY,
    DEFAULT_MAX_STREAMS,
    DEFAULT_WINDOW,
    INITIAL_WINDOW,
    MuxConnection,
)

# Control frames (RESETs, OPENED, WINDOW) a link may have queued while its writing is
# paused before it stops reading the peer: the peer makes them by sending (OPENs we
# refuse, faults), so a peer that sends and never reads could grow them without end.
CONTROL_BACKLOG = 1024 * 1024

# The least budget that still lets a stream open and progress (one initial window).
MIN_LINK_MEMORY = INITIAL_WINDOW
MAX_STREAMS_LIMIT = 1 << 24

_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
_SIZE = re.compile(r"\s*(\d+)\s*([a-z]*)\s*")


class SizeError(ValueError):
    """A size that is not a whole number of B, KiB, MiB or GiB."""


def parse_size(text: str) -> int:
    """``64MiB``, ``512KiB``, ``1GiB`` or a bare number of bytes. Binary units only:
    ``64MB`` is refused rather than guessed (is it 10⁶ or 2²⁰?)."""
    m = _SIZE.fullmatch(str(text).lower())
    if m is None or m.group(2) not in _UNITS:
        raise SizeError(f"{text!r} is not a size: use e.g. 64MiB, 512KiB, 1GiB")
    return int(m.group(1)) * _UNITS[m.group(2)]


def format_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


@dataclass(frozen=True)
class LinkLimits:
    link_memory: int = DEFAULT_LINK_MEMORY
    """Bytes the peer may make this end hold for the whole link (credit it may still
    use, plus bytes received and not yet passed on)."""
    max_streams: int = DEFAULT_MAX_STREAMS
    """Streams open at once on the link; an OPEN past it is refused (RESET REFUSED)."""

    def __post_init__(self) -> None:
        if self.link_memory < MIN_LINK_MEMORY:
            raise ValueError(f"link memory must be at least {format_size(MIN_LINK_MEMORY)}")
        if not 1 <= self.max_streams <= MAX_STREAMS_LIMIT:
            raise ValueError(f"max streams must be 1 … {MAX_STREAMS_LIMIT}")

    def new_mux(self, role: Literal["edge", "agent"]) -> MuxConnection:
        """The link's mux: small initial windows that grow to 1 MiB while the budget
        allows (both ends grant the same initial window: see docs/protocol.md)."""
        return MuxConnection(
            role,
            initial_window=INITIAL_WINDOW,
            max_window=DEFAULT_WINDOW,
            link_memory=self.link_memory,
            max_streams=self.max_streams,
        )
