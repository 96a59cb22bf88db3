"""The pushed change stream between a control-plane replica and an edge (docs/sync.md).

Sans-I/O: the messages, their JSON form and strict parsing; the WebSocket is the
caller's. One WebSocket per edge at ``/api/v1/edge/stream?since=R&name=…&instance=…``:

- the replica sends ``hello`` once, then ``changes`` (whole batches, oldest first) as the
  log grows, and ``heartbeat`` when it has had nothing to send for an interval;
- the edge answers every ``changes`` and every ``heartbeat`` with an ``ack`` naming the
  revision it has applied (listeners bound, connections judged) and its health;
- either side that hears nothing for :data:`SILENCE_INTERVALS` intervals drops the
  stream: the replica forgets the edge's position, the edge moves to the next replica;
- the replica ends a stream with ``error`` and a close code from :class:`Close` when the
  token is refused, the name is taken, or the revision asked for is no longer kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal, TypeAlias

from entryguard.errors import Invalid

DEFAULT_INTERVAL = 1.0
"""Seconds between heartbeats: what "unseen" is measured in."""
SILENCE_INTERVALS = 3
"""A peer silent for this many intervals is gone (an edge stops counting for acks)."""
MAX_MESSAGE = 4 * 1024 * 1024
"""The largest message either side accepts (a ``changes`` message holds ≤ 500 rows)."""

Health: TypeAlias = Literal["ok", "degraded", "fail-closed"]
HEALTHS: frozenset[str] = frozenset({"ok", "degraded", "fail-closed"})


class StreamError(Invalid, ValueError):
    """A stream message that does not parse: the peer is broken or not ours."""

    code = "invalid_stream_message"


class Close(IntEnum):
    """WebSocket close codes the replica ends a stream with (4000-4999: application's)."""

    UNAUTHORIZED = 4401
    """The edge token is unknown or revoked: do not retry with it."""
    NAME_TAKEN = 4409
    """Another live edge uses this token under this name: give each edge a --name."""
    GONE = 4410
    """The revision asked for is no longer kept: fetch the snapshot, then reconnect."""
    SILENT = 4408
    """The edge sent nothing for too long."""
    SHUTDOWN = 1012
    """The replica is restarting (RFC 6455 "service restart"): move to another."""


@dataclass(frozen=True)
class Hello:
    revision: int
    """The newest revision the replica knows of when the stream starts."""
    interval: float
    edge_id: int
    type: Literal["hello"] = "hello"


@dataclass(frozen=True)
class Changes:
    revision: int
    """The last row's revision: the end of a whole batch."""
    changes: list[dict[str, Any]] = field(default_factory=list)
    """Change-log rows (``entryguard.sync.changes.ChangeRow.parse`` reads each)."""
    type: Literal["changes"] = "changes"


@dataclass(frozen=True)
class Heartbeat:
    revision: int
    type: Literal["heartbeat"] = "heartbeat"


@dataclass(frozen=True)
class Ack:
    revision: int
    """Everything up to here is in force on the edge."""
    health: Health = "ok"
    type: Literal["ack"] = "ack"


@dataclass(frozen=True)
class StreamFailure:
    code: str
    message: str
    type: Literal["error"] = "error"


ServerMessage: TypeAlias = Hello | Changes | Heartbeat | StreamFailure
EdgeMessage: TypeAlias = Ack


def encode(msg: ServerMessage | EdgeMessage) -> str:
    body = {k: v for k, v in msg.__dict__.items() if k != "type"}
    return json.dumps({"type": msg.type, **body}, separators=(",", ":"))


def _load(text: str | bytes) -> dict[str, Any]:
    if len(text) > MAX_MESSAGE:
        raise StreamError(f"message of {len(text)} bytes is over the limit")
    try:
        d = json.loads(text)
    except ValueError as exc:
        raise StreamError(f"not JSON: {exc}") from None
    if not isinstance(d, dict):
        raise StreamError("a message is a JSON object")
    return d


def _rev(d: dict[str, Any]) -> int:
    v = d.get("revision")
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise StreamError(f"'revision' must be a non-negative integer, got {v!r}")
    return v


def parse_server(text: str | bytes) -> ServerMessage:
    """A message from the replica, strictly; :class:`StreamError` otherwise."""
    d = _load(text)
    kind = d.get("type")
    if kind == "changes":
        rows = d.get("changes")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise StreamError("'changes' must be a list of objects")
        return Changes(revision=_rev(d), changes=rows)
    if kind == "heartbeat":
        return Heartbeat(revision=_rev(d))
    if kind == "hello":
        interval, edge_id = d.get("interval"), d.get("edge_id")
        if not isinstance(interval, int | float) or not 0.05 <= interval <= 60:
            raise StreamError(f"'interval' must be 0.05-60 seconds, got {interval!r}")
        if not isinstance(edge_id, int) or isinstance(edge_id, bool):
            raise StreamError(f"'edge_id' must be an integer, got {edge_id!r}")
        return Hello(revision=_rev(d), interval=float(interval), edge_id=edge_id)
    if kind == "error":
        code, message = d.get("code"), d.get("message")
        if not isinstance(code, str) or not isinstance(message, str):
            raise StreamError("'error' needs a string 'code' and 'message'")
        return StreamFailure(code=code[:64], message=message[:500])
    raise StreamError(f"unknown message type {kind!r}")


def parse_edge(text: str | bytes) -> EdgeMessage:
    """A message from the edge, strictly; :class:`StreamError` otherwise."""
    d = _load(text)
    if d.get("type") != "ack":
        raise StreamError(f"unknown message type {d.get('type')!r}")
    health = d.get("health", "ok")
    if health not in HEALTHS:
        raise StreamError(f"'health' must be one of {sorted(HEALTHS)}, got {health!r}")
    return Ack(revision=_rev(d), health=health)
