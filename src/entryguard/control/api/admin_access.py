"""Admin: resources, static rules, guest access, sessions, agents, audit."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select

from entryguard.control.api.admin_directory import admin, duration_or_400
from entryguard.control.api.deps import ctx, edges_apply
from entryguard.control.api.schemas import GuestCreateIn, ResourceCreateIn, RuleCreateIn
from entryguard.control.auth.principal import Principal
from entryguard.control.db.clocked import clock_of
from entryguard.control.db.models import (
    ApiKey,
    AuditEvent,
    GuestAccess,
    Resource,
    Session,
    StaticRule,
    User,
)
from entryguard.control.services import access_rules, resources, sessions
from entryguard.control.services.agents import list_agents
from entryguard.control.services.journal import verify_chain
from entryguard.control.services.views import (
    admin_resource_view,
    audit_view,
    guest_view,
    rule_view,
    session_view,
)
from entryguard.errors import Invalid, NotFound

router = APIRouter(prefix="/admin", tags=["admin"])


async def _key_names(s: Any) -> dict[int, str]:
    return {k.id: k.name for k in (await s.execute(select(ApiKey))).scalars()}


@router.get("/resources")
async def list_resources(request: Request, p: Principal = Depends(admin)) -> dict[str, Any]:
    c = ctx(request)
    async with c.db.read() as s:
        names = await _key_names(s)
        rs = (await s.execute(select(Resource).order_by(Resource.name))).scalars()
        return {
            "items": [
                admin_resource_view(r, c.settings, names.get(r.agent_key_id, "?")) for r in rs
            ]
        }


@router.post("/resources", status_code=201)
async def create_resource(
    body: ResourceCreateIn, request: Request, p: Principal = Depends(admin)
) -> dict[str, Any]:
    c = ctx(request)
    if body.provider.upper() != "AGENT":
        raise Invalid("provider must be AGENT", code="invalid_provider")
    async with c.db.write() as s:
        r = await resources.create_resource(
            s,
            p.user.org_id,
            name=body.name,
            type_=body.type,
            agent=body.agent,
            target_host=body.target_host,
            target_port=body.target_port,
            script_dir=body.script_dir,
            ports=c.settings.tunnel_ports,
            actor=p.actor,
        )
        view = admin_resource_view(r, c.settings, body.agent)
    await edges_apply(request, s.info.get("revision"))
    return {"resource": view}


@router.delete("/resources/{name}")
async def delete_resource(
    name: str, request: Request, p: Principal = Depends(admin)
) -> dict[str, Any]:
    c = ctx(request)
    async with c.db.write() as s:
        r = await resources.get_resource(s, name)
        view = admin_resource_view(r, c.settings, (await _key_names(s)).get(r.agent_key_id, "?"))
        await resources.delete_resource(s, r, p.actor)
    await edges_apply(request, s.info.get("revision"))
    return {"resource": view}


@router.get("/rules")
async def list_rules(
    request: Request,
    resource: str | None = Query(default=None, max_length=256),
    p: Principal = Depends(admin),
) -> dict[str, Any]:
    async with ctx(request).db.read() as s:
        q = (
            select(StaticRule, Resource.name)
            .join(Resource, Resource.id == StaticRule.resource_id)
            .order_by(StaticRule.id)
        )
        if resource is not None:
            q = q.where(Resource.id == (await resources.get_resource(s, resource)).id)
        return {"items": [rule_view(rule, name) for rule, name in (await s.execute(q)).all()]}


@router.post("/rules", status_code=201)
async def add_rule(
    body: RuleCreateIn, request: Request, p: Principal = Depends(admin)
) -> dict[str, Any]:
    async with ctx(request).db.write() as s:
        r = await resources.get_resource(s, body.resource)
        rule = await access_rules.add_rule(
            s, r, body.cidr, body.description, body.allow_any, p.actor
        )
    await edges_apply(request, s.info.get("revision"))
    return {"rule": rule_view(rule, r.name)}


@router.delete("/rules/{rule_id}")
async def remove_rule(
    rule_id: int, request: Request, p: Principal = Depends(admin)
) -> dict[str, Any]:
    async with ctx(request).db.write() as s:
        rule, r = await access_rules.remove_rule(s, rule_id, p.actor)
    await edges_apply(request, s.info.get("revision"))
    return {"rule": rule_view(rule, r.name)}


@router.get("/guests")
async def list_guests(
    request: Request, active: bool = False, p: Principal = Depends(admin)
) -> dict[str, Any]:
    async with ctx(request).db.read() as s:
        q = (
            select(GuestAccess, Resource.name)
            .join(Resource, Resource.id == GuestAccess.resource_id)
            .order_by(GuestAccess.id)
        )
        if active:
            q = q.where(GuestAccess.ended_at.is_(None), GuestAccess.expires_at > clock_of(s).now())
        return {
            "items": [
                guest_view(g, name, ctx(request).db.clock.now())
                for g, name in (await s.execute(q)).all()
            ]
        }


@router.post("/guests", status_code=201)
async def grant_guest(
    body: GuestCreateIn, request: Request, p: Principal = Depends(admin)
) -> dict[str, Any]:
    seconds = duration_or_400(body.duration, "duration")
    async with ctx(request).db.write() as s:
        r = await resources.get_resource(s, body.resource)
        g = await access_rules.grant_guest(
            s, r, body.cidr, seconds, body.note, body.allow_any, p.actor
        )
    await edges_apply(request, s.info.get("revision"))
    return {"guest": guest_view(g, r.name, ctx(request).db.clock.now())}


@router.delete("/guests/{guest_id}")
async def revoke_guest(
    guest_id: int, request: Request, p: Principal = Depends(admin)
) -> dict[str, Any]:
    async with ctx(request).db.write() as s:
        before = await s.get(GuestAccess, guest_id)
        was_active = before is not None and before.ended_at is None
        g, r = await access_rules.revoke_guest(s, guest_id, p.actor)
    await edges_apply(request, s.info.get("revision"))
    # "revoked": whether this call ended it (false: it had already ended).
    return {"guest": guest_view(g, r.name, ctx(request).db.clock.now()), "revoked": was_active}


@router.get("/sessions")
async def list_sessions(
    request: Request, active: bool = False, p: Principal = Depends(admin)
) -> dict[str, Any]:
    async with ctx(request).db.read() as s:
        q = (
            select(Session, User.email)
            .join(User, User.id == Session.user_id)
            .order_by(Session.id.desc())
            .limit(500)
        )
        if active:
            q = q.where(Session.ended_at.is_(None), Session.expires_at > clock_of(s).now())
        return {
            "items": [
                session_view(x, email, ctx(request).db.clock.now())
                for x, email in (await s.execute(q)).all()
            ]
        }


@router.delete("/sessions/{session_id}")
async def revoke_session(
    session_id: int, request: Request, p: Principal = Depends(admin)
) -> dict[str, Any]:
    async with ctx(request).db.write() as s:
        row = (
            await s.execute(
                select(Session, User)
                .join(User, User.id == Session.user_id)
                .where(Session.id == session_id)
            )
        ).first()
        if row is None:
            raise NotFound(f"no session {session_id}", code="session_not_found")
        sess, user = row
        was_active = sess.ended_at is None
        if was_active:
            await sessions.end_session(s, sess, user, "revoked", p.actor)
    await edges_apply(request, s.info.get("revision"))
    # "revoked": whether this call ended it (false: it had already ended).
    return {
        "session": session_view(sess, user.email, ctx(request).db.clock.now()),
        "revoked": was_active,
    }


@router.get("/agents")
async def agents(request: Request, p: Principal = Depends(admin)) -> dict[str, Any]:
    c = ctx(request)
    async with c.db.read() as s:
        return {"items": await list_agents(s, c.settings.agent_offline_after)}


@router.get("/audit")
async def audit_log(
    request: Request,
    since: str | None = Query(default=None, max_length=32),
    after_id: int = 0,
    limit: int = Query(default=200, ge=1, le=5000),
    actor: str | None = Query(default=None, max_length=254),
    action: str | None = Query(default=None, max_length=64),
    p: Principal = Depends(admin),
) -> dict[str, Any]:
    q = select(AuditEvent).where(AuditEvent.id > after_id)
    if since:
        q = q.where(
            AuditEvent.ts
            >= ctx(request).db.clock.now() - timedelta(seconds=duration_or_400(since, "since"))
        )
    if actor:
        q = q.where(AuditEvent.actor.contains(actor))
    if action:
        q = q.where(AuditEvent.action.startswith(action))
    async with ctx(request).db.read() as s:
        if after_id:
            forward = (await s.execute(q.order_by(AuditEvent.id).limit(limit))).scalars()
            return {"items": [audit_view(e) for e in forward]}
        # Without a cursor: the newest `limit` events, oldest first.
        newest = list((await s.execute(q.order_by(AuditEvent.id.desc()).limit(limit))).scalars())
        return {"items": [audit_view(e) for e in reversed(newest)]}


@router.get("/audit/verify")
async def audit_verify(request: Request, p: Principal = Depends(admin)) -> dict[str, Any]:
    async with ctx(request).db.read() as s:
        r = await verify_chain(s)
    return {"ok": r.ok, "checked": r.checked, "bad_id": r.bad_id, "message": r.message}
