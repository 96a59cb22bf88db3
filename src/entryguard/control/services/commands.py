"""The agents' command queue: claim in FIFO order, record results, list, retry.

Commands are queued by :mod:`entryguard.control.services.grants` in the same transaction
as the grant change. Here they are handed out and closed:

- **At most once.** A command is claimed (``pending`` → ``running``) in its own committed
  transaction before the agent sees it. A command claimed but never reported (the agent
  died mid-run, or the claim's response was lost) stays ``running``: running it again
  could undo a later command, so only an admin decides, by retrying it.
- **FIFO per agent.** Ids are allocated under the global write lock, so they follow commit
  order; an agent claims its lowest pending id and runs one command at a time. On
  PostgreSQL the claim takes the row with ``FOR UPDATE SKIP LOCKED``, so concurrent
  claimers (replicas, a duplicated agent) never get the same row and never wait on
  each other.
- **Retry appends.** A retried command becomes a new ``pending`` row at the end of the
  queue (the old row is marked ``retried``), and only while it is still the latest
  word on its CIDR: re-running an ``apply`` after a later ``revoke`` of the same CIDR
  would re-open access that was taken away.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard.control.db.clocked import clock_of
from entryguard.control.db.database import Database, tx_changes
from entryguard.control.db.models import AgentCommand, ApiKey
from entryguard.control.services.journal import audit, iso
from entryguard.control.services.views import View
from entryguard.errors import Conflict, Invalid, NotFound

OUTPUT_LIMIT = 64 * 1024
"""Bytes of script output (stdout and stderr together, UTF-8) kept per command."""
TRUNCATED = "\n[output truncated to 64 KiB]"
STATUSES = ("pending", "running", "done", "failed", "retried")


def clamp_output(text: str) -> str:
    """At most :data:`OUTPUT_LIMIT` bytes of UTF-8, marked when cut (never mid-character)."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= OUTPUT_LIMIT:
        return text
    keep = OUTPUT_LIMIT - len(TRUNCATED.encode())
    return raw[:keep].decode("utf-8", "ignore") + TRUNCATED


class AgentCommandView(View):
    """What the agent needs to run a command, nothing more."""

    id: int
    resource: str
    script_dir: str
    action: str
    cidr: str
    description: str


class CommandView(View):
    id: int
    agent: str | None
    resource: str
    script_dir: str
    action: str
    cidr: str
    description: str
    status: str
    created_at: str | None
    claimed_at: str | None
    finished_at: str | None
    exit_code: int | None
    duration_ms: int | None
    output: str | None
    attempts: int


def command_view(c: AgentCommand, agent: str | None = None) -> CommandView:
    return CommandView(
        id=c.id,
        agent=agent,
        resource=c.resource_name,
        script_dir=c.script_dir,
        action=c.action,
        cidr=c.cidr,
        description=c.description,
        status=c.status,
        created_at=iso(c.created_at),
        claimed_at=iso(c.claimed_at),
        finished_at=iso(c.finished_at),
        exit_code=c.exit_code,
        duration_ms=c.duration_ms,
        output=c.output,
        attempts=c.attempts,
    )


def agent_command_view(c: AgentCommand) -> AgentCommandView:
    return AgentCommandView(
        id=c.id,
        resource=c.resource_name,
        script_dir=c.script_dir,
        action=c.action,
        cidr=c.cidr,
        description=c.description,
    )


def _next_pending(key_id: int) -> Any:
    return (
        select(AgentCommand)
        .where(AgentCommand.agent_key_id == key_id, AgentCommand.status == "pending")
        .order_by(AgentCommand.id)
        .limit(1)
    )


async def claim_next(db: Database, key_id: int) -> AgentCommand | None:
    """Claim this agent's oldest pending command (committed before it is returned)."""
    # A cheap read first: long-polls wake on every change-log commit, most of which
    # queue nothing for this agent, and on SQLite a claim takes the single write lock.
    async with db.read() as s:
        if (
            await s.execute(_next_pending(key_id).with_only_columns(AgentCommand.id))
        ).first() is None:
            return None
    if db.is_postgres:
        # Claims write no audit event and no change row: they need not queue behind the
        # global write lock, only lock their own row.
        async with db.sessions() as s, s.begin():
            cmd = (
                await s.execute(_next_pending(key_id).with_for_update(skip_locked=True))
            ).scalar_one_or_none()
            _mark_claimed(cmd, db.clock.now())
    else:
        async with db.write() as s:
            cmd = (await s.execute(_next_pending(key_id))).scalar_one_or_none()
            _mark_claimed(cmd, db.clock.now())
    return cmd


def _mark_claimed(cmd: AgentCommand | None, now: datetime) -> None:
    if cmd is not None:
        cmd.status = "running"
        cmd.claimed_at = now
        cmd.attempts += 1


async def record_result(
    s: AsyncSession,
    key: ApiKey,
    command_id: int,
    *,
    exit_code: int | None,
    duration_ms: int,
    output: str,
    error: str | None,
    ip: str,
) -> AgentCommand:
    """Close a claimed command: ``done`` when the script exited 0, else ``failed``.

    ``error`` is the agent's own reason when the script did not run to completion
    (refused, timed out, not found); it heads the stored output so admins see it first.
    Reporting a finished command again (the agent retried after a lost response) is a
    no-op that returns the command.
    """
    cmd = await s.get(AgentCommand, command_id)
    if cmd is None or cmd.agent_key_id != key.id:
        raise NotFound(f"no command {command_id} for this agent", code="command_not_found")
    if cmd.finished_at is not None:
        return cmd
    if cmd.status not in ("running", "retried"):
        raise Conflict(
            f"command {command_id} is {cmd.status}, not claimed: claim it with "
            "GET /agent/commands/next first",
            code="command_not_claimed",
        )
    text = f"[eg-agent] {error}\n{output}" if error else output
    ok = exit_code == 0 and not error
    cmd.exit_code = exit_code
    cmd.duration_ms = max(0, duration_ms)
    cmd.output = clamp_output(text)
    cmd.finished_at = clock_of(s).now()
    if cmd.status == "running":  # a row an admin already retried keeps saying so
        cmd.status = "done" if ok else "failed"
    await audit(
        s,
        f"agent {key.name}",
        "command.done" if ok else "command.failed",
        cmd.resource_name,
        details={
            "command_id": cmd.id,
            "action": cmd.action,
            "cidr": cmd.cidr,
            "exit_code": exit_code,
            "duration_ms": cmd.duration_ms,
            **({"error": error} if error else {}),
        },
        ip=ip,
        org_id=key.org_id,
    )
    return cmd


async def list_commands(
    s: AsyncSession, *, status: str | None = None, agent: str | None = None, limit: int = 100
) -> list[CommandView]:
    """Newest first."""
    if status is not None and status not in STATUSES:
        raise Invalid(
            f"unknown status {status!r}: use one of {', '.join(STATUSES)}", code="invalid_status"
        )
    q = select(AgentCommand, ApiKey.name).join(ApiKey, ApiKey.id == AgentCommand.agent_key_id)
    if status is not None:
        q = q.where(AgentCommand.status == status)
    if agent is not None:
        q = q.where(ApiKey.name == agent)
    rows = (await s.execute(q.order_by(AgentCommand.id.desc()).limit(limit))).all()
    return [command_view(c, name) for c, name in rows]


async def get_command(s: AsyncSession, command_id: int) -> CommandView:
    row = (
        await s.execute(
            select(AgentCommand, ApiKey.name)
            .join(ApiKey, ApiKey.id == AgentCommand.agent_key_id)
            .where(AgentCommand.id == command_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"no command {command_id}", code="command_not_found")
    return command_view(row[0], row[1])


async def retry_command(s: AsyncSession, command_id: int, actor: str) -> AgentCommand:
    """Queue a failed (or stuck ``running``) command again, at the end of its agent's queue."""
    old = await s.get(AgentCommand, command_id)
    if old is None:
        raise NotFound(f"no command {command_id}", code="command_not_found")
    if old.status == "retried":
        raise Conflict(
            f"command {command_id} was already retried",
            code="command_already_retried",
        )
    if old.status not in ("failed", "running"):
        raise Conflict(
            f"command {command_id} is {old.status}: only failed commands, or commands stuck "
            "running after an agent crash, can be retried",
            code="command_not_retryable",
        )
    later = (
        await s.execute(
            select(AgentCommand.id, AgentCommand.action)
            .where(
                AgentCommand.agent_key_id == old.agent_key_id,
                AgentCommand.script_dir == old.script_dir,
                AgentCommand.cidr == old.cidr,
                AgentCommand.id > old.id,
            )
            .order_by(AgentCommand.id.desc())
            .limit(1)
        )
    ).first()
    if later is not None:
        raise Conflict(
            f"command {command_id} was superseded by command {later[0]} ({later[1]} of "
            f"{old.cidr}): running it again would undo that; nothing to retry",
            code="command_superseded",
        )
    new = AgentCommand(
        agent_key_id=old.agent_key_id,
        resource_id=old.resource_id,
        resource_name=old.resource_name,
        script_dir=old.script_dir,
        action=old.action,
        cidr=old.cidr,
        description=old.description,
        attempts=0,
    )
    s.add(new)
    old.status = "retried"
    await s.flush()
    key = await s.get(ApiKey, old.agent_key_id)
    await audit(
        s,
        actor,
        "command.retry",
        old.resource_name,
        details={
            "command_id": old.id,
            "new_command_id": new.id,
            "action": old.action,
            "cidr": old.cidr,
        },
        org_id=key.org_id if key else None,
    )
    # Wake the agents' long-polls, here and (through NOTIFY) on other replicas.
    tx_changes(s).wake = True
    return new
