"""The agent's endpoints (API key with ``agent:connect``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from entryguard.control.api.deps import client_ip, ctx
from entryguard.control.api.deps import principal as get_principal
from entryguard.control.api.schemas import HeartbeatIn
from entryguard.control.auth.principal import Principal
from entryguard.control.services import agents
from entryguard.errors import Forbidden

router = APIRouter(prefix="/agent", tags=["agent"])


def agent_key(p: Principal = Depends(get_principal)) -> Principal:
    p.require("agent:connect")
    if p.api_key is None:
        raise Forbidden(
            "agents authenticate with an API key that has the agent:connect scope",
            code="missing_scope",
        )
    return p


@router.get("/tunnels")
async def tunnels(request: Request, p: Principal = Depends(agent_key)) -> dict[str, Any]:
    assert p.api_key is not None
    async with ctx(request).db.read() as s:
        rs = await agents.agent_tunnels(s, p.api_key.id)
    return {
        "items": [
            {
                "id": r.id,
                "name": r.name,
                "port": r.port,
                "target_host": r.target_host,
                "target_port": r.target_port,
            }
            for r in rs
        ]
    }


@router.post("/heartbeat")
async def heartbeat(
    body: HeartbeatIn, request: Request, p: Principal = Depends(agent_key)
) -> dict[str, Any]:
    assert p.api_key is not None
    async with ctx(request).db.write() as s:
        await agents.heartbeat(s, p.api_key, body.model_dump(), client_ip(request))
    return {"ok": True}
