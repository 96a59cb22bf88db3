"""JSON views of rows, as documented in docs/api.md."""

from __future__ import annotations

from datetime import datetime
from typing import Any

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


def user_view(u: User) -> dict[str, Any]:
    return {
        "id": u.id,
        "email": u.email,
        "is_admin": u.is_admin,
        "disabled": u.disabled_at is not None,
        "created_at": iso(u.created_at),
    }


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


def resource_view(r: Resource, settings: Settings) -> dict[str, Any]:
    """What a user sees of a resource their roles give them."""
    return {
        "id": r.id,
        "name": r.name,
        "type": r.type,
        "port": r.port,
        "connection": connection(r, settings),
        "target": target(r),
    }


def admin_resource_view(r: Resource, settings: Settings, agent_name: str) -> dict[str, Any]:
    return {
        **resource_view(r, settings),
        "provider": r.provider,
        "agent": agent_name,
        "target_host": r.target_host,
        "target_port": r.target_port,
        "script_dir": r.script_dir,
        "created_at": iso(r.created_at),
    }


def session_view(sess: Session, email: str, now: datetime) -> dict[str, Any]:
    return {
        "id": sess.id,
        "user_email": email,
        "ip": sess.ip,
        "started_at": iso(sess.started_at),
        "expires_at": iso(sess.expires_at),
        "ended_at": iso(sess.ended_at),
        "end_reason": sess.end_reason,
        "active": sess.ended_at is None and sess.expires_at > now,
    }


def apikey_view(k: ApiKey) -> dict[str, Any]:
    return {
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "scopes": k.scope_list,
        "created_at": iso(k.created_at),
        "expires_at": iso(k.expires_at),
        "revoked_at": iso(k.revoked_at),
        "last_used_at": iso(k.last_used_at),
    }


def rule_view(rule: StaticRule, resource_name: str) -> dict[str, Any]:
    return {
        "id": rule.id,
        "resource": resource_name,
        "cidr": rule.cidr,
        "description": rule.description,
        "created_by": rule.created_by,
        "created_at": iso(rule.created_at),
    }


def guest_view(g: GuestAccess, resource_name: str, now: datetime) -> dict[str, Any]:
    return {
        "id": g.id,
        "resource": resource_name,
        "cidr": g.cidr,
        "note": g.note,
        "created_by": g.created_by,
        "created_at": iso(g.created_at),
        "expires_at": iso(g.expires_at),
        "ended_at": iso(g.ended_at),
        "end_reason": g.end_reason,
        "active": g.ended_at is None and g.expires_at > now,
    }


def audit_view(ev: AuditEvent) -> dict[str, Any]:
    import json

    return {
        "id": ev.id,
        "ts": iso(ev.ts),
        "actor": ev.actor,
        "action": ev.action,
        "target": ev.target,
        "ip": ev.ip,
        "details": json.loads(ev.details),
        "hash": ev.hash,
    }
