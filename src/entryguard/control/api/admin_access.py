"""Admin: resources, static rules, guest access, sessions, agents, edges, audit."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Query, Request
from sqlalchemy import select

from entryguard.control.api.admin_directory import Admin, duration_or_400
from entryguard.control.api.deps import CtxDep, edges_apply
from entryguard.control.api.models import (
    ChainCheckOut,
    GuestOut,
    GuestRevokeOut,
    Items,
    ResourceOut,
    RuleOut,
    SessionRevokeOut,
)
from entryguard.control.api.schemas import GuestCreateIn, ResourceCreateIn, RuleCreateIn
from entryguard.control.db.models import AuditEvent
from entryguard.control.services import access_rules, resources, sessions
from entryguard.control.services.agents import AgentView, list_agents
from entryguard.control.services.edge_hub import EdgeView, list_edges
from entryguard.control.services.journal import verify_chain
from entryguard.control.services.views import (
    AdminResourceView,
    AuditView,
    GuestView,
    RuleView,
    SessionView,
    admin_resource_view,
    audit_view,
    guest_view,
    rule_view,
    session_view,
)
from entryguard.errors import Invalid

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/resources")
async def list_resources(c: CtxDep, p: Admin) -> Items[AdminResourceView]:
    async with c.db.read() as s:
        return Items(items=await resources.list_resources(s, c.settings))


@router.post("/resources", status_code=201)
async def create_resource(
    body: ResourceCreateIn, request: Request, c: CtxDep, p: Admin
) -> ResourceOut:
    if body.provider.upper() != "AGENT":
        raise Invalid("provider must be AGENT", code="invalid_provider")
    async with (tx := c.db.write()) as s:
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
    await edges_apply(request, tx.revision)
    return ResourceOut(resource=view)


@router.delete("/resources/{name}")
async def delete_resource(name: str, request: Request, c: CtxDep, p: Admin) -> ResourceOut:
    async with (tx := c.db.write()) as s:
        r = await resources.get_resource(s, name)
        view = await resources.admin_view(s, r, c.settings)
        await resources.delete_resource(s, r, p.actor)
    await edges_apply(request, tx.revision)
    return ResourceOut(resource=view)


@router.get("/rules")
async def list_rules(
    c: CtxDep, p: Admin, resource: str | None = Query(default=None, max_length=256)
) -> Items[RuleView]:
    async with c.db.read() as s:
        return Items(items=await access_rules.list_rules(s, resource))


@router.post("/rules", status_code=201)
async def add_rule(body: RuleCreateIn, request: Request, c: CtxDep, p: Admin) -> RuleOut:
    async with (tx := c.db.write()) as s:
        r = await resources.get_resource(s, body.resource)
        rule = await access_rules.add_rule(
            s, r, body.cidr, body.description, body.allow_any, p.actor
        )
    await edges_apply(request, tx.revision)
    return RuleOut(rule=rule_view(rule, r.name))


@router.delete("/rules/{rule_id}")
async def remove_rule(rule_id: int, request: Request, c: CtxDep, p: Admin) -> RuleOut:
    async with (tx := c.db.write()) as s:
        rule, r = await access_rules.remove_rule(s, rule_id, p.actor)
    await edges_apply(request, tx.revision)
    return RuleOut(rule=rule_view(rule, r.name))


@router.get("/guests")
async def list_guests(c: CtxDep, p: Admin, active: bool = False) -> Items[GuestView]:
    async with c.db.read() as s:
        return Items(items=await access_rules.list_guests(s, active=active))


@router.post("/guests", status_code=201)
async def grant_guest(body: GuestCreateIn, request: Request, c: CtxDep, p: Admin) -> GuestOut:
    seconds = duration_or_400(body.duration, "duration")
    async with (tx := c.db.write()) as s:
        r = await resources.get_resource(s, body.resource)
        g = await access_rules.grant_guest(
            s, r, body.cidr, seconds, body.note, body.allow_any, p.actor
        )
    await edges_apply(request, tx.revision)
    return GuestOut(guest=guest_view(g, r.name, c.db.clock.now()))


@router.delete("/guests/{guest_id}")
async def revoke_guest(guest_id: int, request: Request, c: CtxDep, p: Admin) -> GuestRevokeOut:
    async with (tx := c.db.write()) as s:
        out = await access_rules.revoke_guest(s, guest_id, p.actor)
    await edges_apply(request, tx.revision)
    return GuestRevokeOut(
        guest=guest_view(out.guest, out.resource.name, c.db.clock.now()), revoked=out.revoked
    )


@router.get("/sessions")
async def list_sessions(c: CtxDep, p: Admin, active: bool = False) -> Items[SessionView]:
    async with c.db.read() as s:
        return Items(items=await sessions.list_sessions(s, active=active))


@router.delete("/sessions/{session_id}")
async def revoke_session(
    session_id: int, request: Request, c: CtxDep, p: Admin
) -> SessionRevokeOut:
    async with (tx := c.db.write()) as s:
        out = await sessions.revoke_session(s, session_id, p.actor)
    await edges_apply(request, tx.revision)
    return SessionRevokeOut(
        session=session_view(out.session, out.user.email, c.db.clock.now()), revoked=out.revoked
    )


@router.get("/edges")
async def edges(request: Request, c: CtxDep, p: Admin) -> Items[EdgeView]:
    """Every edge that has streamed the change log: applied revision, lag, health, and
    whether it is live (heard from within three stream intervals)."""
    head = request.app.state.tail.head
    async with c.db.read() as s:
        return Items(items=await list_edges(s, head, c.settings.stream_interval))


@router.get("/agents")
async def agents(c: CtxDep, p: Admin) -> Items[AgentView]:
    async with c.db.read() as s:
        return Items(items=await list_agents(s, c.settings.agent_offline_after))


@router.get("/audit")
async def audit_log(
    c: CtxDep,
    p: Admin,
    since: str | None = Query(default=None, max_length=32),
    after_id: int = 0,
    limit: int = Query(default=200, ge=1, le=5000),
    actor: str | None = Query(default=None, max_length=254),
    action: str | None = Query(default=None, max_length=64),
) -> Items[AuditView]:
    q = select(AuditEvent).where(AuditEvent.id > after_id)
    if since:
        q = q.where(
            AuditEvent.ts >= c.db.clock.now() - timedelta(seconds=duration_or_400(since, "since"))
        )
    if actor:
        q = q.where(AuditEvent.actor.contains(actor))
    if action:
        q = q.where(AuditEvent.action.startswith(action))
    async with c.db.read() as s:
        if after_id:
            forward = (await s.execute(q.order_by(AuditEvent.id).limit(limit))).scalars()
            return Items(items=[audit_view(e) for e in forward])
        # Without a cursor: the newest `limit` events, oldest first.
        newest = list((await s.execute(q.order_by(AuditEvent.id.desc()).limit(limit))).scalars())
        return Items(items=[audit_view(e) for e in reversed(newest)])


@router.get("/audit/verify")
async def audit_verify(c: CtxDep, p: Admin) -> ChainCheckOut:
    async with c.db.read() as s:
        r = await verify_chain(s)
    return ChainCheckOut(ok=r.ok, checked=r.checked, bad_id=r.bad_id, message=r.message)
