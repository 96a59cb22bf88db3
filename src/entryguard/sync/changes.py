"""Typed change-log ops and rows (docs/sync.md).

The control plane writes them (``control.services.journal.log_change``) and the edge
reads them (``edge.state.EdgeState.apply_batch``). Parsing is strict: an unknown op or
a malformed payload raises :class:`ChangeError`, which the edge reports; it never
advances the revision silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, TypeAlias

from entryguard.errors import Invalid
from entryguard.net.cidr import CidrError, parse_cidr


class ChangeError(Invalid, ValueError):
    """A change-log row the reader cannot apply (unknown op, missing or bad field)."""

    code = "invalid_change"


class Op(StrEnum):
    GRANT_ADD = "grant.add"
    GRANT_REMOVE = "grant.remove"
    TUNNEL_UPSERT = "tunnel.upsert"
    TUNNEL_REMOVE = "tunnel.remove"
    AGENT_UPSERT = "agent.upsert"
    AGENT_REMOVE = "agent.remove"


def _int(d: Mapping[str, Any], key: str) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ChangeError(f"{key!r} must be a non-negative integer, got {v!r}")
    return v


def _time(d: Mapping[str, Any], key: str) -> str | None:
    """An optional ISO 8601 timestamp, kept as text (the edge converts it)."""
    v = _str(d, key, optional=True)
    if v is not None:
        try:
            datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise ChangeError(f"{key!r} is not an ISO 8601 time: {v!r}") from None
    return v  # type: ignore[no-any-return]


def _str(d: Mapping[str, Any], key: str, *, optional: bool = False) -> Any:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise ChangeError(f"{key!r} must be a string, got {v!r}")
    return v


@dataclass(frozen=True, slots=True)
class GrantAdd:
    """A grant added, or replaced by id (a session extension moves it in place)."""

    op: ClassVar[Op] = Op.GRANT_ADD
    id: int
    resource_id: int
    cidr: str
    source: str
    source_id: int
    expires_at: str | None  # ISO 8601, UTC

    def __post_init__(self) -> None:
        try:
            parse_cidr(self.cidr, allow_any=True)
        except CidrError as exc:
            raise ChangeError(f"grant {self.id}: {exc}") from exc

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> GrantAdd:
        return cls(
            _int(d, "id"),
            _int(d, "resource_id"),
            _str(d, "cidr"),
            _str(d, "source"),
            _int(d, "source_id"),
            _time(d, "expires_at"),
        )


@dataclass(frozen=True, slots=True)
class GrantRemove:
    op: ClassVar[Op] = Op.GRANT_REMOVE
    id: int
    resource_id: int
    reason: str

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> GrantRemove:
        return cls(_int(d, "id"), _int(d, "resource_id"), _str(d, "reason"))


@dataclass(frozen=True, slots=True)
class TunnelUpsert:
    op: ClassVar[Op] = Op.TUNNEL_UPSERT
    id: int
    name: str
    port: int
    agent_key_id: int
    target_host: str | None
    target_port: int | None

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> TunnelUpsert:
        port = _int(d, "port")
        if not 0 < port < 65536:
            raise ChangeError(f"tunnel port {port} is out of range")
        tp = d.get("target_port")
        return cls(
            _int(d, "id"),
            _str(d, "name"),
            port,
            _int(d, "agent_key_id"),
            _str(d, "target_host", optional=True),
            None if tp is None else _int(d, "target_port"),
        )


@dataclass(frozen=True, slots=True)
class TunnelRemove:
    op: ClassVar[Op] = Op.TUNNEL_REMOVE
    id: int

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> TunnelRemove:
        return cls(_int(d, "id"))


@dataclass(frozen=True, slots=True)
class AgentUpsert:
    op: ClassVar[Op] = Op.AGENT_UPSERT
    key_id: int
    name: str
    prefix: str
    key_sha256: str
    expires_at: str | None

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> AgentUpsert:
        return cls(
            _int(d, "key_id"),
            _str(d, "name"),
            _str(d, "prefix"),
            _str(d, "key_sha256"),
            _time(d, "expires_at"),
        )


@dataclass(frozen=True, slots=True)
class AgentRemove:
    op: ClassVar[Op] = Op.AGENT_REMOVE
    key_id: int

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> AgentRemove:
        return cls(_int(d, "key_id"))


Payload: TypeAlias = (
    GrantAdd | GrantRemove | TunnelUpsert | TunnelRemove | AgentUpsert | AgentRemove
)

_PARSERS: dict[Op, Any] = {
    Op.GRANT_ADD: GrantAdd.parse,
    Op.GRANT_REMOVE: GrantRemove.parse,
    Op.TUNNEL_UPSERT: TunnelUpsert.parse,
    Op.TUNNEL_REMOVE: TunnelRemove.parse,
    Op.AGENT_UPSERT: AgentUpsert.parse,
    Op.AGENT_REMOVE: AgentRemove.parse,
}


def payload_json(p: Payload) -> dict[str, Any]:
    return asdict(p)


def parse_payload(op: str, data: Any) -> Payload:
    try:
        kind = Op(op)
    except ValueError:
        raise ChangeError(f"unknown change-log op {op!r}") from None
    if not isinstance(data, Mapping):
        raise ChangeError(f"{op}: data must be an object")
    result: Payload = _PARSERS[kind](data)
    return result


@dataclass(frozen=True, slots=True)
class ChangeRow:
    """One change-log row as the edge receives it."""

    revision: int
    batch: int  # the first revision of the transaction that wrote it
    payload: Payload

    @classmethod
    def parse(cls, raw: Any) -> ChangeRow:
        if not isinstance(raw, Mapping):
            raise ChangeError("a change-log row must be an object")
        rev = _int(raw, "revision")
        batch = raw.get("batch", rev)
        if not isinstance(batch, int) or isinstance(batch, bool):
            raise ChangeError(f"revision {rev}: 'batch' must be an integer")
        try:
            payload = parse_payload(_str(raw, "op"), raw.get("data"))
        except ChangeError as exc:
            raise ChangeError(f"revision {rev}: {exc}") from None
        return cls(rev, batch, payload)
