"""Agents: heartbeats, what each serves, and offline detection."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard.control.db.clocked import clock_of
from entryguard.control.db.database import Database
from entryguard.control.db.models import AgentStatus, ApiKey, Resource
from entryguard.control.services.journal import audit, iso
from entryguard.control.services.views import View, target


class AgentView(View):
    name: str
    key_name: str
    connected: bool
    last_heartbeat: str | None
    version: str | None
    hostname: str | None
    os: str | None
    modes: list[str]
    tunnel_connected: bool
    targets: list[str]
    resources: list[str]


async def heartbeat(s: AsyncSession, key: ApiKey, info: dict[str, Any], ip: str) -> None:
    st = await s.get(AgentStatus, key.id)
    was_offline = st is None or st.offline
    if st is None:
        st = AgentStatus(key_id=key.id, name=info["name"])
        s.add(st)
    st.name = info["name"]
    st.version = info.get("version", "")
    st.hostname = info.get("hostname", "")
    st.os = info.get("os", "")
    st.modes = ",".join(info.get("modes", []))
    st.tunnel_connected = bool(info.get("tunnel_connected"))
    st.last_heartbeat = clock_of(s).now()
    st.offline = False
    await s.flush()
    if was_offline:
        await audit(
            s,
            f"agent {st.name}",
            "agent.online",
            st.name,
            details={"key": key.name, "version": st.version, "hostname": st.hostname},
            ip=ip,
            org_id=key.org_id,
        )


async def agent_tunnels(s: AsyncSession, key_id: int) -> list[Resource]:
    return list(
        (
            await s.execute(
                select(Resource)
                .where(Resource.agent_key_id == key_id, Resource.type == "tunnel")
                .order_by(Resource.id)
            )
        ).scalars()
    )


async def list_agents(s: AsyncSession, offline_after: float) -> list[AgentView]:
    keys = (
        await s.execute(select(ApiKey).where(ApiKey.revoked_at.is_(None)).order_by(ApiKey.name))
    ).scalars()
    out = []
    now = clock_of(s).now()
    for k in keys:
        if "agent:connect" not in k.scope_list:
            continue
        st = await s.get(AgentStatus, k.id)
        res = list(
            (
                await s.execute(
                    select(Resource).where(Resource.agent_key_id == k.id).order_by(Resource.name)
                )
            ).scalars()
        )
        connected = (
            st is not None
            and not st.offline
            and (now - st.last_heartbeat).total_seconds() < offline_after
        )
        out.append(
            AgentView(
                name=st.name if st else k.name,
                key_name=k.name,
                connected=connected,
                last_heartbeat=iso(st.last_heartbeat) if st else None,
                version=st.version if st else None,
                hostname=st.hostname if st else None,
                os=st.os if st else None,
                modes=[m for m in (st.modes if st else "").split(",") if m],
                tunnel_connected=bool(st and st.tunnel_connected and connected),
                targets=[t for r in res if (t := target(r))],
                resources=[r.name for r in res],
            )
        )
    return out


async def mark_offline(db: Database, offline_after: float) -> int:
    cutoff = db.clock.now() - timedelta(seconds=offline_after)
    async with db.read() as s:
        due = (
            await s.execute(
                select(AgentStatus.key_id)
                .where(AgentStatus.offline.is_(False), AgentStatus.last_heartbeat < cutoff)
                .limit(1)
            )
        ).first()
    if due is None:
        return 0
    n = 0
    async with db.write() as s:
        rows = (
            await s.execute(
                select(AgentStatus).where(
                    AgentStatus.offline.is_(False), AgentStatus.last_heartbeat < cutoff
                )
            )
        ).scalars()
        for st in list(rows):
            st.offline = True
            n += 1
            await audit(
                s,
                "system",
                "agent.offline",
                st.name,
                details={"last_heartbeat": iso(st.last_heartbeat)},
            )
    return n


async def run_offline_watch(db: Database, offline_after: float) -> None:
    log = logging.getLogger("entryguard.agents")
    while True:
        try:
            await mark_offline(db, offline_after)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("offline check failed")
        await asyncio.sleep(min(5.0, offline_after / 3))
