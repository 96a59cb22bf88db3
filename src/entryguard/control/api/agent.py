"""The agent's endpoints (API key with ``agent:connect``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from entryguard.control.api.deps import Caller, ClientIp, CtxDep
from entryguard.control.api.models import AgentTunnel, Items, Ok
from entryguard.control.api.schemas import HeartbeatIn
from entryguard.control.auth.principal import Principal
from entryguard.control.services import agents
from entryguard.errors import Forbidden

router = APIRouter(prefix="/agent", tags=["agent"])


def agent_key(p: Caller) -> Principal:
    p.require("agent:connect")
    if p.api_key is None:
        raise Forbidden(
            "agents authenticate with an API key that has the agent:connect scope",
            code="missing_scope",
        )
    return p


AgentKey = Annotated[Principal, Depends(agent_key)]


@router.get("/tunnels")
async def tunnels(c: CtxDep, p: AgentKey) -> Items[AgentTunnel]:
    assert p.api_key is not None
    async with c.db.read() as s:
        rs = await agents.agent_tunnels(s, p.api_key.id)
    return Items(
        items=[
            AgentTunnel(
                id=r.id,
                name=r.name,
                port=r.port,
                target_host=r.target_host,
                target_port=r.target_port,
            )
            for r in rs
        ]
    )


@router.post("/heartbeat")
async def heartbeat(body: HeartbeatIn, c: CtxDep, ip: ClientIp, p: AgentKey) -> Ok:
    assert p.api_key is not None
    async with c.db.write() as s:
        await agents.heartbeat(s, p.api_key, body.model_dump(), ip)
    return Ok(ok=True)
