"""Script mode's command queue: the agent claims and reports, admins list and retry."""

from __future__ import annotations

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from entryguard.control.api.admin_directory import Admin
from entryguard.control.api.agent import AgentKey
from entryguard.control.api.deps import ClientIp, CtxDep
from entryguard.control.api.models import CommandOut, CommandRetryOut, Items, NextCommandOut
from entryguard.control.services import commands
from entryguard.control.services.commands import CommandView
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
    c: CtxDep,
    p: AgentKey,
    wait: float = Query(default=25.0, ge=0, le=60),
) -> NextCommandOut:
    """Claim this agent's oldest pending command, waiting up to ``wait`` seconds for one."""
    assert p.api_key is not None
    db = c.db
    notifier: ChangeNotifier = request.app.state.notifier
    deadline = c.db.clock.monotonic() + wait
    while True:
        # Never claim for a caller that has gone: the command would be lost to it.
        if await request.is_disconnected():
            return NextCommandOut(command=None)
        seen = notifier.changes  # before the claim: a command queued after it wakes us
        cmd = await commands.claim_next(db, p.api_key.id)
        if cmd is not None:
            return NextCommandOut(command=commands.agent_command_view(cmd))
        left = deadline - c.db.clock.monotonic()
        if left <= 0 or notifier.closing:  # the server is stopping: answer now
            return NextCommandOut(command=None)
        await notifier.wait_change(seen, min(left, RECHECK_SECONDS))


@router.post("/agent/commands/{command_id}/result")
async def command_result(
    body: CommandResultIn,
    c: CtxDep,
    ip: ClientIp,
    p: AgentKey,
    command_id: int = Path(ge=1),
) -> CommandOut:
    assert p.api_key is not None
    async with c.db.write() as s:
        cmd = await commands.record_result(
            s,
            p.api_key,
            command_id,
            exit_code=body.exit_code,
            duration_ms=body.duration_ms,
            output=body.output,
            error=body.error,
            ip=ip,
        )
        return CommandOut(command=commands.command_view(cmd, p.api_key.name))


@router.get("/admin/commands")
async def list_commands(
    c: CtxDep,
    p: Admin,
    failed: bool = Query(default=False, description="Only failed commands"),
    status: str | None = Query(default=None, max_length=16),
    agent: str | None = Query(default=None, max_length=64),
    limit: int = Query(default=100, ge=1, le=1000),
) -> Items[CommandView]:
    async with c.db.read() as s:
        items = await commands.list_commands(
            s, status="failed" if failed else status, agent=agent, limit=limit
        )
    return Items(items=items)


@router.get("/admin/commands/{command_id}")
async def get_command(c: CtxDep, p: Admin, command_id: int = Path(ge=1)) -> CommandOut:
    async with c.db.read() as s:
        return CommandOut(command=await commands.get_command(s, command_id))


@router.post("/admin/commands/{command_id}/retry", status_code=201)
async def retry_command(c: CtxDep, p: Admin, command_id: int = Path(ge=1)) -> CommandRetryOut:
    async with c.db.write() as s:
        new = await commands.retry_command(s, command_id, p.actor)
        new_id = new.id
    async with c.db.read() as s:
        return CommandRetryOut(command=await commands.get_command(s, new_id), retry_of=command_id)
