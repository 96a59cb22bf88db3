"""Typed settings of the control plane (flags and environment of `entryguard up` / `server`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from entryguard.net import IPNetwork


@dataclass(frozen=True)
class DbTimeouts:
    """How long a PostgreSQL request may wait before it fails (seconds).

    A database that is unreachable or hung then costs a request at most these, and
    it answers 503 ``database_unavailable`` instead of hanging (SQLite ignores them).
    """

    connect: float = 3.0
    """Opening a new connection (asyncpg ``timeout``: TCP, TLS and startup)."""
    statement: float = 10.0
    """One statement: client-side (asyncpg ``command_timeout``) and server-side
    (``statement_timeout``, which also bounds lock waits)."""
    pool: float = 5.0
    """Waiting for a pooled connection when all are busy (SQLAlchemy ``pool_timeout``)."""


@dataclass(frozen=True)
class PortRange:
    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """``41000-41999`` (inclusive)."""
        lo, sep, hi = text.partition("-")
        if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
            raise ValueError(f"invalid port range {text!r}: expected FIRST-LAST, e.g. 41000-41999")
        first, last = int(lo), int(hi)
        if not (1 <= first <= last <= 65535):
            raise ValueError(f"invalid port range {text!r}: ports must be 1..65535, first <= last")
        return cls(first, last)

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


@dataclass(frozen=True)
class Settings:
    database_url: str
    """SQLAlchemy URL: ``sqlite:///path`` or ``postgresql://user@host/db``."""
    data_dir: Path = Path(".entryguard")
    """Holds the SQLite database, generated certificates and the admin credentials note."""
    public_host: str = "127.0.0.1"
    """Host shown in connection strings (``HOST:PORT``)."""
    tunnel_ports: PortRange = field(default_factory=lambda: PortRange(41000, 41999))
    """Edge ports allocated to tunnel resources."""
    trusted_proxies: tuple[IPNetwork, ...] = ()
    """Peers whose ``X-Forwarded-For`` is believed (read right to left)."""
    login_ttl_seconds: int = 12 * 3600
    """How long a login token from ``eg login`` lasts."""
    default_max_duration_seconds: int = 8 * 3600
    """Session cap when a role does not say otherwise."""
    expiry_interval: float = 0.2
    # Heartbeat of the edges' change streams; an edge silent for three is dropped.
    stream_interval: float = 1.0
    """How often the expiry job looks for due sessions and guest grants (seconds)."""
    agent_offline_after: float = 45.0
    """An agent that sent no heartbeat for this long (three missed beats) is offline."""
    change_retention_seconds: int = 7 * 86400
    """Change-log rows older than this are pruned; an edge further behind refetches the snapshot."""
    secure_cookies: bool = False
    """Set the Secure flag on dashboard cookies (on when serving TLS)."""
    db_timeouts: DbTimeouts = field(default_factory=DbTimeouts)
    """Connect, statement and pool-wait timeouts of PostgreSQL (3 s, 10 s, 5 s)."""
