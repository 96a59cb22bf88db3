"""Resources and the permanent allocation of tunnel ports."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard.control.db.models import ApiKey, Resource, RoleResource, RoleUser
from entryguard.control.services.apikeys import get_key
from entryguard.control.services.grants import reconcile_users, remove_grant
from entryguard.control.services.journal import audit, log_change
from entryguard.control.services.validation import check_name, check_text
from entryguard.control.services.views import AdminResourceView, admin_resource_view
from entryguard.control.settings import PortRange, Settings
from entryguard.errors import Conflict, Invalid, NotFound
from entryguard.sync.changes import TunnelRemove, TunnelUpsert


def tunnel_data(r: Resource) -> TunnelUpsert:
    assert r.port is not None and r.agent_key_id is not None, "a tunnel has a port and an agent"
    return TunnelUpsert(r.id, r.name, r.port, r.agent_key_id, r.target_host, r.target_port)


async def get_resource(s: AsyncSession, name: str) -> Resource:
    r = (await s.execute(select(Resource).where(Resource.name == name))).scalar_one_or_none()
    if r is None:
        raise NotFound(f"no resource {name!r}", code="resource_not_found")
    return r


async def agent_names(s: AsyncSession) -> dict[int, str]:
    """API key id -> name: the agent credential each resource is served by."""
    return {k.id: k.name for k in (await s.execute(select(ApiKey))).scalars()}


async def admin_view(s: AsyncSession, r: Resource, settings: Settings) -> AdminResourceView:
    return admin_resource_view(r, settings, (await agent_names(s)).get(r.agent_key_id, "?"))


async def list_resources(s: AsyncSession, settings: Settings) -> list[AdminResourceView]:
    names = await agent_names(s)
    rs = (await s.execute(select(Resource).order_by(Resource.name))).scalars()
    return [admin_resource_view(r, settings, names.get(r.agent_key_id, "?")) for r in rs]


async def allocate_port(s: AsyncSession, ports: PortRange) -> int:
    """The lowest free port of the range; the caller holds the write lock."""
    used = set((await s.execute(select(Resource.port).where(Resource.port.is_not(None)))).scalars())
    for p in range(ports.first, ports.last + 1):
        if p not in used:
            return p
    raise Conflict(
        f"the tunnel port range {ports} is exhausted ({ports.last - ports.first + 1} tunnels): "
        "delete unused tunnels or widen the range with `entryguard settings set tunnel-ports FIRST-LAST`",
        code="port_range_exhausted",
    )


def _check_host(host: str | None) -> str:
    host = (host or "").strip()
    if not host or len(host) > 253 or any(c.isspace() or c in "/@?#" for c in host):
        raise Invalid(
            "target host must be a host name or IP address, e.g. 10.0.1.50", code="invalid_target"
        )
    return host


async def create_resource(
    s: AsyncSession,
    org_id: int,
    *,
    name: str,
    type_: str,
    agent: str,
    target_host: str | None,
    target_port: int | None,
    script_dir: str | None,
    ports: PortRange,
    actor: str,
) -> Resource:
    check_name(name, "resource name")
    if type_ not in ("tunnel", "script"):
        raise Invalid("resource type must be 'tunnel' or 'script'", code="invalid_type")
    key: ApiKey = await get_key(s, agent)
    if "agent:connect" not in key.scope_list or key.revoked_at is not None:
        raise Invalid(
            f"API key {agent!r} is not a live agent credential (scope agent:connect)",
            code="invalid_agent",
        )
    if (await s.execute(select(Resource.id).where(Resource.name == name))).first():
        raise Conflict(f"a resource named {name!r} already exists", code="resource_exists")
    r = Resource(org_id=org_id, name=name, type=type_, agent_key_id=key.id)
    if type_ == "tunnel":
        r.target_host = _check_host(target_host)
        if target_port is None or not (1 <= target_port <= 65535):
            raise Invalid("target port must be 1..65535", code="invalid_target")
        r.target_port = target_port
        r.port = await allocate_port(s, ports)
    else:
        d = check_text(script_dir, "script directory", 1024).strip()
        if not d.startswith("/") and not (len(d) > 2 and d[1] == ":"):
            raise Invalid(
                "script directory must be an absolute path on the agent's host",
                code="invalid_script_dir",
            )
        r.script_dir = d
    s.add(r)
    await s.flush()
    if type_ == "tunnel":
        await log_change(s, tunnel_data(r))
    await audit(
        s,
        actor,
        "resource.create",
        name,
        details={
            "type": type_,
            "agent": agent,
            "port": r.port,
            "target_host": r.target_host,
            "target_port": r.target_port,
            "script_dir": r.script_dir,
        },
        org_id=org_id,
    )
    return r


async def delete_resource(s: AsyncSession, r: Resource, actor: str) -> None:
    from entryguard.control.db.models import Grant

    grants = (
        await s.execute(select(Grant).where(Grant.resource_id == r.id).order_by(Grant.id))
    ).scalars()
    for g in list(grants):
        await remove_grant(s, g, r, "resource_deleted", f"resource {r.name} deleted")
    user_ids = list(
        (
            await s.execute(
                select(RoleUser.user_id)
                .join(RoleResource, RoleResource.role_id == RoleUser.role_id)
                .where(RoleResource.resource_id == r.id)
            )
        ).scalars()
    )
    if r.type == "tunnel":
        await log_change(s, TunnelRemove(r.id))
    await audit(s, actor, "resource.delete", r.name, details={"port": r.port}, org_id=r.org_id)
    await s.delete(r)
    await s.flush()
    await reconcile_users(s, user_ids, "resource_deleted")
