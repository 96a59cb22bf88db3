"""JSON views of rows, as documented in docs/api.md.

Each view is a frozen pydantic model: the REST API declares them as its response
models (so ``/api/v1/openapi.json`` types every answer) and the dashboard renders the
same objects. Field order is the JSON's key order; every field is always present
(``null`` rather than missing), which clients such as ``eg`` rely on.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from entryguard.control.db.models import (
    ApiKey,
    AuditEvent,
    GuestAccess,
    Resource,
    Session,
    StaticRule,
    User,
)
from entryguard.control.services.journal import iso
from entryguard.control.settings import Settings


class View(BaseModel):
    model_config = ConfigDict(frozen=True)


class UserView(View):
    id: int
    email: str
    is_admin: bool
    disabled: bool
    created_at: str | None


class ResourceView(View):
    """What a user sees of a resource their roles give them."""

    id: int
    name: str
    type: str
    port: int | None
    connection: str | None
    target: str | None


class AdminResourceView(ResourceView):
    provider: str
    agent: str
    target_host: str | None
    target_port: int | None
    script_dir: str | None
    created_at: str | None


class SessionView(View):
    id: int
    user_email: str
    ip: str
    started_at: str | None
    expires_at: str | None
    ended_at: str | None
    end_reason: str | None
    active: bool


class ApiKeyView(View):
    id: int
    name: str
    prefix: str
    scopes: list[str]
    created_at: str | None
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None


class RuleView(View):
    id: int
    resource: str
    cidr: str
    description: str
    created_by: str
    created_at: str | None


class GuestView(View):
    id: int
    resource: str
    cidr: str
    note: str
    created_by: str
    created_at: str | None
    expires_at: str | None
    ended_at: str | None
    end_reason: str | None
    active: bool


class AuditView(View):
    id: int
    ts: str | None
    actor: str
    action: str
    target: str
    ip: str | None
    details: dict[str, Any]
    """Free-form: each action records its own details."""
    hash: str


def user_view(u: User) -> UserView:
    return UserView(
        id=u.id,
        email=u.email,
        is_admin=u.is_admin,
        disabled=u.disabled_at is not None,
        created_at=iso(u.created_at),
    )


def connection(r: Resource, settings: Settings) -> str | None:
    if r.type != "tunnel" or r.port is None:
        return None
    host = settings.public_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{r.port}"


def target(r: Resource) -> str | None:
    if r.type != "tunnel":
        return None
    host = r.target_host or ""
    return f"[{host}]:{r.target_port}" if ":" in host else f"{host}:{r.target_port}"


def resource_view(r: Resource, settings: Settings) -> ResourceView:
    return ResourceView(
        id=r.id,
        name=r.name,
        type=r.type,
        port=r.port,
        connection=connection(r, settings),
        target=target(r),
    )


def admin_resource_view(r: Resource, settings: Settings, agent_name: str) -> AdminResourceView:
    return AdminResourceView(
        **dict(resource_view(r, settings)),
        provider=r.provider,
        agent=agent_name,
        target_host=r.target_host,
        target_port=r.target_port,
        script_dir=r.script_dir,
        created_at=iso(r.created_at),
    )


def session_view(sess: Session, email: str, now: datetime) -> SessionView:
    """``now``: the clock's time, against which ``active`` is judged."""
    return SessionView(
        id=sess.id,
        user_email=email,
        ip=sess.ip,
        started_at=iso(sess.started_at),
        expires_at=iso(sess.expires_at),
        ended_at=iso(sess.ended_at),
        end_reason=sess.end_reason,
        active=sess.ended_at is None and sess.expires_at > now,
    )


def apikey_view(k: ApiKey) -> ApiKeyView:
    return ApiKeyView(
        id=k.id,
        name=k.name,
        prefix=k.prefix,
        scopes=k.scope_list,
        created_at=iso(k.created_at),
        expires_at=iso(k.expires_at),
        revoked_at=iso(k.revoked_at),
        last_used_at=iso(k.last_used_at),
    )


def rule_view(rule: StaticRule, resource_name: str) -> RuleView:
    return RuleView(
        id=rule.id,
        resource=resource_name,
        cidr=rule.cidr,
        description=rule.description,
        created_by=rule.created_by,
        created_at=iso(rule.created_at),
    )


def guest_view(g: GuestAccess, resource_name: str, now: datetime) -> GuestView:
    return GuestView(
        id=g.id,
        resource=resource_name,
        cidr=g.cidr,
        note=g.note,
        created_by=g.created_by,
        created_at=iso(g.created_at),
        expires_at=iso(g.expires_at),
        ended_at=iso(g.ended_at),
        end_reason=g.end_reason,
        active=g.ended_at is None and g.expires_at > now,
    )


def audit_view(ev: AuditEvent) -> AuditView:
    return AuditView(
        id=ev.id,
        ts=iso(ev.ts),
        actor=ev.actor,
        action=ev.action,
        target=ev.target,
        ip=ev.ip,
        details=json.loads(ev.details),
        hash=ev.hash,
    )
