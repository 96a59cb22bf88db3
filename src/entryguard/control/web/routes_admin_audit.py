"""Admin: the audit log (filter by actor, action and time; CSV and JSON-lines export; chain check)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import Select, func, select

from entryguard.control.api.deps import get_ctx
from entryguard.control.auth.principal import Principal
from entryguard.control.db.models import AuditEvent
from entryguard.control.services.journal import ChainCheck, verify_chain
from entryguard.control.services.views import AuditView, audit_view
from entryguard.control.web.auth import admin
from entryguard.control.web.render import FormState, render_page

router = APIRouter(prefix="/admin/audit", include_in_schema=False)

PAGE = 100
EXPORT_BATCH = 1000
CSV_COLUMNS = ("id", "ts", "actor", "action", "target", "ip", "details", "hash")
PRESETS = (("Last hour", 1), ("Last 24 hours", 24), ("Last 7 days", 24 * 7))


@dataclass
class AuditFilter:
    actor: str = ""
    action: str = ""
    start: datetime | None = None
    end: datetime | None = None

    def where(self, q: Select[Any]) -> Select[Any]:
        # The same meaning as `eg admin audit --actor/--action`: actor contains, action prefix.
        if self.actor:
            q = q.where(AuditEvent.actor.contains(self.actor))
        if self.action:
            q = q.where(AuditEvent.action.startswith(self.action))
        if self.start is not None:
            q = q.where(AuditEvent.ts >= self.start)
        if self.end is not None:
            q = q.where(AuditEvent.ts <= self.end)
        return q

    def query(self) -> dict[str, str]:
        out = {"actor": self.actor, "action": self.action}
        out["from"] = _local(self.start)
        out["to"] = _local(self.end)
        return {k: v for k, v in out.items() if v}


def _local(dt: datetime | None) -> str:
    """The value of a ``datetime-local`` input (UTC, as every time on these pages)."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M") if dt else ""


def _parse_time(text: str, key: str, form: FormState) -> datetime | None:
    if not text.strip():
        return None
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        form.errors[key] = "Enter a date and time like 2026-11-22T21:00 (UTC)."
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def read_filter(request: Request) -> tuple[AuditFilter, FormState]:
    q = request.query_params
    form = FormState(values={k: q.get(k, "")[:254] for k in ("actor", "action", "from", "to")})
    f = AuditFilter(actor=form.values["actor"].strip(), action=form.values["action"].strip())
    f.start = _parse_time(form.values["from"], "from", form)
    f.end = _parse_time(form.values["to"], "to", form)
    if f.start and f.end and f.start > f.end:
        form.errors["to"] = "“To” must be after “From”."
    return f, form


async def _action_options(request: Request) -> list[tuple[str, str]]:
    """Each action recorded so far, under its group (``session.`` matches them all)."""
    async with get_ctx(request).db.read() as s:
        rows = await s.execute(select(AuditEvent.action).distinct().order_by(AuditEvent.action))
        actions = list(rows.scalars())
    options: list[tuple[str, str]] = []
    for action in actions:
        group = action.split(".", 1)[0] + "."
        if (group, f"{group}* (all)") not in options:
            options.append((group, f"{group}* (all)"))
        options.append((action, "\u00a0\u00a0" + action))
    return options


@router.get("")
async def audit_page(request: Request, p: Principal = Depends(admin)) -> Response:
    f, form = read_filter(request)
    before = request.query_params.get("before", "")
    items: list[AuditView] = []
    total = 0
    if not form.failed:
        q = f.where(select(AuditEvent))
        if before.isdigit():
            q = q.where(AuditEvent.id < int(before))
        async with get_ctx(request).db.read() as s:
            rows = (await s.execute(q.order_by(AuditEvent.id.desc()).limit(PAGE))).scalars()
            items = [audit_view(e) for e in rows]
            total = (
                await s.execute(f.where(select(func.count()).select_from(AuditEvent)))
            ).scalar_one()
    query = f.query()
    older = None
    if len(items) == PAGE:
        older = "?" + urlencode({**query, "before": items[-1].id})
    now = get_ctx(request).db.clock.now()
    presets = [
        (label, "?" + urlencode({**query, "from": _local(now - timedelta(hours=h)), "to": ""}))
        for label, h in PRESETS
    ]
    return render_page(
        request,
        "admin/audit.html",
        p=p,
        title="Audit log",
        nav="audit",
        status=400 if form.failed else 200,
        items=items,
        total=total,
        paged=before.isdigit(),
        older=older,
        presets=presets,
        action_options=await _action_options(request),
        chain=await _verify(request),
        form=form,
        export_query=urlencode(query),
    )


async def _verify(request: Request) -> ChainCheck:
    async with get_ctx(request).db.read() as s:
        return await verify_chain(s)


def _csv_row(view: dict[str, Any]) -> list[str]:
    row = [
        json.dumps(view[c], sort_keys=True) if c == "details" else str(view[c] or "")
        for c in CSV_COLUMNS
    ]
    # A cell starting with = + - @ is a formula to a spreadsheet (CSV injection); the
    # actor of a failed sign-in is whatever the visitor typed.
    return ["'" + v if v[:1] in ("=", "+", "-", "@", "\t", "\r") else v for v in row]


async def _export(request: Request, f: AuditFilter, fmt: str) -> AsyncIterator[str]:
    db = get_ctx(request).db
    async with db.read() as s:
        last = (await s.execute(select(func.max(AuditEvent.id)))).scalar_one() or 0
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerow(CSV_COLUMNS)
        yield buf.getvalue()
    after = 0
    while True:
        async with db.read() as s:
            q = f.where(select(AuditEvent).where(AuditEvent.id > after, AuditEvent.id <= last))
            rows = list((await s.execute(q.order_by(AuditEvent.id).limit(EXPORT_BATCH))).scalars())
        if not rows:
            return
        after = rows[-1].id
        buf = io.StringIO()
        writer = csv.writer(buf)
        for e in rows:
            view = audit_view(e).model_dump()
            if fmt == "csv":
                writer.writerow(_csv_row(view))
            else:
                buf.write(json.dumps(view, sort_keys=True) + "\n")
        yield buf.getvalue()


@router.get("/export")
async def export(request: Request, p: Principal = Depends(admin)) -> Response:
    """All matching events, oldest first, as CSV or JSON lines (the REST API's audit_event)."""
    f, form = read_filter(request)
    fmt = request.query_params.get("format", "csv")
    if form.failed or fmt not in ("csv", "jsonl"):
        problem = "; ".join(form.errors.values()) or "format must be csv or jsonl"
        return Response(problem + "\n", status_code=400, media_type="text/plain")
    stamp = get_ctx(request).db.clock.now().strftime("%Y%m%dT%H%M%SZ")
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    return StreamingResponse(
        _export(request, f, fmt),
        media_type=media,
        headers={
            "Content-Disposition": f'attachment; filename="entryguard-audit-{stamp}.{fmt}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )
