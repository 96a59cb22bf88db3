"""Numbers on the wire: frame types, reset codes, the protocol version and the hello.

Kept apart from ``frames`` so that ``errors`` can name a reset code without an import
cycle. The values are part of the protocol: never renumber, only append.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

PROTOCOL_VERSION = 1
"""What a ``hello`` CONTROL message carries in ``version``."""


def hello(window: int, **about: str) -> dict[str, Any]:
    """The ``hello`` CONTROL message each side sends first (docs/protocol.md): the
    protocol version, free-form extras naming the sender (``edge``, ``agent``, ``name``)
    and this side's initial stream window."""
    return {"type": "hello", "version": PROTOCOL_VERSION, **about, "window": window}


class FrameType(IntEnum):
    OPEN = 1
    OPENED = 2
    DATA = 3
    WINDOW = 4
    FIN = 5
    RESET = 6
    CONTROL = 7


class ResetCode(IntEnum):
    """Why a stream was reset (the u16 in a RESET frame)."""

    REFUSED = 1  # the other side will not take the stream (limits, draining, client closed)
    UNREACHABLE = 2  # the agent could not dial the target, or a socket broke
    NOT_ALLOWED = 3  # the tunnel or target is outside what the agent serves
    REVOKED = 4  # the client's access was revoked
    PROTOCOL = 5  # the peer broke the protocol on this stream
    TIMEOUT = 6  # OPEN got no answer in time
    INTERNAL = 7  # a bug or an unexpected failure on the resetting side
