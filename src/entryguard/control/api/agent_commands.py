"""Script mode's command queue: the agent claims and reports, admins list and retry."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from entryguard.control.api.admin_directory import admin
from entryguard.control.api.agent import agent_key
from entryguard.control.api.deps import client_ip, ctx
from entryguard.control.auth.principal import Principal
from entryguard.control.services import commands
from entryguard.control.services.edge_sync import ChangeNotifier

router = APIRouter(tags=["agent commands"])

# How often a waiting long-poll looks at the queue even without a wake-up: bounds the
# delay when a commit's wake-up lands between our last look and the wait.
RECHECK_SECONDS = 1.0


class CommandResultIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exit_code: int | None = Field(
        default=None, description="The script's exit code; null when it did not run to the end"
    )
    duration_ms: int = Field(ge=0, le=2**31 - 1)
    # Agents send at most 64 KiB; the bound here only stops a runaway body.
    output: str = Field(default="", max_length=1024 * 1024)
    error: str | None = Field(
        default=None,
        max_length=2000,
        description="Why the script did not run to completion (refused, timed out…)",
    )


@router.get("/agent/commands/next")
async def next_command(
    request: Request,
    wait: float = Query(default=25.0, ge=0, le=60),
    p: Principal = Depends(agent_key),
) -> dict[str, Any]:
    """Claim this agent's oldest pending command, waiting up to ``wait`` seconds for one."""
    assert p.api_key is not None
    db = ctx(request).db
    notifier: ChangeNotifier = request.app.state.notifier
    deadline = time.monotonic() + wait
    while True:
        # Never claim for a caller that has gone: the command would be lost to it.
        if await request.is_disconnected():
            return {"command": None}
        cmd = await commands.claim_next(db, p.api_key.id)
        if cmd is not None:
            return {"command": commands.agent_command_view(cmd)}
        left = deadline - time.monotonic()
        if left <= 0 or notifier.closing:  # the server is stopping: answer now
            return {"command": None}
        await notifier.wait(min(left, RECHECK_SECONDS))


@router.post("/agent/commands/{command_id}/result")
async def command_result(
    body: CommandResultIn,
    request: Request,
    command_id: int = Path(ge=1),
    p: Principal = Depends(agent_key),
) -> dict[str, Any]:
    assert p.api_key is not None
    async with ctx(request).db.write() as s:
        cmd = await commands.record_result(
            s,
            p.api_key,
            command_id,
            exit_code=body.exit_code,
            duration_ms=body.duration_ms,
            output=body.output,
            error=body.error,
            ip=client_ip(request),
        )
        return {"command": commands.command_view(cmd, p.api_key.name)}


@router.get("/admin/commands")
async def list_commands(
    request: Request,
    failed: bool = Query(default=False, description="Only failed commands"),
    status: str | None = Query(default=None, max_length=16),
    agent: str | None = Query(default=None, max_length=64),
    limit: int = Query(default=100, ge=1, le=1000),
    p: Principal = Depends(admin),
) -> dict[str, Any]:
    async with ctx(request).db.read() as s:
        items = await commands.list_commands(
            s, status="failed" if failed else status, agent=agent, limit=limit
        )
    return {"items": items}


@router.get("/admin/commands/{command_id}")
async def get_command(
    request: Request, command_id: int = Path(ge=1), p: Principal = Depends(admin)
) -> dict[str, Any]:
    async with ctx(request).db.read() as s:
        return {"command": await commands.get_command(s, command_id)}


@router.post("/admin/commands/{command_id}/retry", status_code=201)
async def retry_command(
    request: Request, command_id: int = Path(ge=1), p: Principal = Depends(admin)
) -> dict[str, Any]:
    async with ctx(request).db.write() as s:
        new = await commands.retry_command(s, command_id, p.actor)
        new_id = new.id
    async with ctx(request).db.read() as s:
        return {"command": await commands.get_command(s, new_id), "retry_of": command_id}
