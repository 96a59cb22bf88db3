"""The control plane's tables (SQLAlchemy 2.0 typed models, one schema for SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from entryguard.control.db.clocked import STAMP

# BigInteger ids on PostgreSQL, INTEGER PRIMARY KEY (rowid alias) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are always timezone-aware UTC in Python, whatever the backend stores."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime}


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(info=STAMP)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(info=STAMP)
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)


class Role(Base):
    __tablename__ = "roles"
    __table_args__ = (UniqueConstraint("org_id", "name"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    name: Mapped[str] = mapped_column(String(64))
    max_duration_seconds: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(info=STAMP)


class RoleUser(Base):
    __tablename__ = "role_users"
    role_id: Mapped[int] = mapped_column(
        ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )


class RoleResource(Base):
    __tablename__ = "role_resources"
    role_id: Mapped[int] = mapped_column(
        ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True
    )
    resource_id: Mapped[int] = mapped_column(
        ForeignKey("resources.id", ondelete="CASCADE"), primary_key=True
    )


class ApiKey(Base):
    """An API key; keys with the ``agent:connect`` scope are also agent credentials."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(info=STAMP)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)

    @property
    def scope_list(self) -> list[str]:
        return [s for s in self.scopes.split(",") if s]


class LoginToken(Base):
    __tablename__ = "login_tokens"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(info=STAMP)
    expires_at: Mapped[datetime] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class EdgeToken(Base):
    __tablename__ = "edge_tokens"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(info=STAMP)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Resource(Base):
    __tablename__ = "resources"
    __table_args__ = (UniqueConstraint("org_id", "name"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    name: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))  # tunnel | script
    provider: Mapped[str] = mapped_column(String(16), default="AGENT")
    agent_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    target_host: Mapped[str | None] = mapped_column(String(255), default=None)
    target_port: Mapped[int | None] = mapped_column(Integer, default=None)
    script_dir: Mapped[str | None] = mapped_column(String(1024), default=None)
    # The edge port: allocated once, unique, kept for the life of the tunnel.
    port: Mapped[int | None] = mapped_column(Integer, unique=True, default=None)
    created_at: Mapped[datetime] = mapped_column(info=STAMP)


class Session(Base):
    __tablename__ = "sessions"
    __table_args__ = (
        # At most one active session per user, enforced by the database itself.
        Index(
            "uq_sessions_one_active",
            "user_id",
            unique=True,
            sqlite_where=text("ended_at IS NULL"),
            postgresql_where=text("ended_at IS NULL"),
        ),
        Index("ix_sessions_active_expiry", "expires_at", "ended_at"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    ip: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(info=STAMP)
    expires_at: Mapped[datetime] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    end_reason: Mapped[str | None] = mapped_column(String(32), default=None)


class StaticRule(Base):
    __tablename__ = "static_rules"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    cidr: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(256), default="")
    created_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[datetime] = mapped_column(info=STAMP)


class GuestAccess(Base):
    __tablename__ = "guest_access"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    cidr: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(String(256), default="")
    created_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[datetime] = mapped_column(info=STAMP)
    expires_at: Mapped[datetime] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    end_reason: Mapped[str | None] = mapped_column(String(32), default=None)


class Grant(Base):
    """A materialised grant: this CIDR may reach this resource, until ``expires_at``."""

    __tablename__ = "grants"
    __table_args__ = (
        Index("ix_grants_source", "source", "source_id"),
        Index("ix_grants_resource", "resource_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    cidr: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))  # session | rule | guest
    source_id: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(info=STAMP)


class AgentCommand(Base):
    __tablename__ = "agent_commands"
    __table_args__ = (Index("ix_agent_commands_queue", "agent_key_id", "status", "id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    agent_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    resource_id: Mapped[int | None] = mapped_column(
        ForeignKey("resources.id", ondelete="SET NULL"), default=None
    )
    resource_name: Mapped[str] = mapped_column(String(64))
    script_dir: Mapped[str] = mapped_column(String(1024))
    action: Mapped[str] = mapped_column(String(8))  # apply | revoke
    cidr: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(info=STAMP)
    claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    duration_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    output: Mapped[str | None] = mapped_column(Text, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class AgentStatus(Base):
    __tablename__ = "agent_status"
    key_id: Mapped[int] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32), default="")
    hostname: Mapped[str] = mapped_column(String(255), default="")
    os: Mapped[str] = mapped_column(String(64), default="")
    modes: Mapped[str] = mapped_column(String(64), default="")
    tunnel_connected: Mapped[bool] = mapped_column(Boolean, default=False)
    last_heartbeat: Mapped[datetime] = mapped_column(info=STAMP)
    offline: Mapped[bool] = mapped_column(Boolean, default=False)


class AuditEvent(Base):
    """Append-only; ``hash`` = SHA-256(prev_hash + canonical fields), so edits are detectable."""

    __tablename__ = "audit_events"
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ts: Mapped[datetime] = mapped_column(info=STAMP)
    org_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    actor: Mapped[str] = mapped_column(String(254))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(512), default="")
    ip: Mapped[str | None] = mapped_column(String(64), default=None)
    details: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Change(Base):
    """The change log edges follow; revisions are committed in order (see docs/sync.md)."""

    __tablename__ = "changes"
    # Never reuse a revision, even after the newest rows were deleted.
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012
    revision: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    op: Mapped[str] = mapped_column(String(32))
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(info=STAMP)
    # The revision of the first row its transaction wrote: edges apply a batch whole.
    batch: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Edge(Base):
    """An edge that followed the change stream: the registry behind ``eg admin edges``.

    One row per (edge token, name). The replica an edge streams from refreshes the row
    (revision applied, health, last seen) at most once per stream interval, all of its
    edges in one transaction, so the cost does not grow with the number of changes.
    """

    __tablename__ = "edges"
    __table_args__ = (UniqueConstraint("token_id", "name"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("edge_tokens.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    # A random id per edge process: a second process under the same name is refused.
    instance: Mapped[str] = mapped_column(String(64), default="")
    version: Mapped[str] = mapped_column(String(32), default="")
    replica: Mapped[str] = mapped_column(String(128), default="")
    address: Mapped[str | None] = mapped_column(String(64), default=None)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
    health: Mapped[str] = mapped_column(String(32), default="ok")
    connected: Mapped[bool] = mapped_column(Boolean, default=False)
    first_seen: Mapped[datetime] = mapped_column(info=STAMP)
    last_seen: Mapped[datetime] = mapped_column(info=STAMP)


class ClusterSetting(Base):
    """A setting every replica shares (``entryguard settings``): the tunnel port range and
    the host shown in connection strings. The first replica to start stores them; each
    replica reads them when it starts (``services/cluster_settings.py``)."""

    __tablename__ = "cluster_settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(info=STAMP)
