"""Admin: static IP rules and guest access, per resource."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard.control.api.deps import edges_apply, get_ctx
from entryguard.control.auth.principal import Principal
from entryguard.control.http_errors import error_status
from entryguard.control.services import access_rules, resources
from entryguard.control.services.views import GuestView, RuleView
from entryguard.control.web.auth import admin, checked_form
from entryguard.control.web.render import (
    Flash,
    FormState,
    field_errors,
    redirect,
    render_page,
    text_values,
)
from entryguard.durations import DurationError, parse_duration
from entryguard.errors import EntryGuardError
from entryguard.net import CidrError, parse_cidr

router = APIRouter(prefix="/admin", include_in_schema=False)

RULE_FIELDS = {
    "resource_not_found": "resource",
    "invalid_cidr": "cidr",
    "too_long": "description",
    "invalid_text": "description",
}
GUEST_FIELDS = {**RULE_FIELDS, "too_long": "note", "invalid_text": "note"}


def opens_everything(cidr: str) -> bool:
    """True for ``0.0.0.0/0`` and ``::/0``: the form shows its warning for them."""
    try:
        return parse_cidr(cidr.strip(), allow_any=True).prefixlen == 0
    except CidrError:
        return False


def _check_any(form: FormState) -> None:
    """A /0 rule needs the explicit "allow any address" tick, said in the dashboard's words."""
    if opens_everything(form.values.get("cidr", "")) and not form.values.get("allow_any"):
        form.errors["allow_any"] = (
            f"{form.values['cidr'].strip()} opens the resource to every address on the "
            "internet. Tick “Allow any address” to confirm."
        )


async def _items(
    s: AsyncSession, kind: str, resource: str | None
) -> Sequence[RuleView | GuestView]:
    if kind == "rules":
        return await access_rules.list_rules(s, resource)
    guests = await access_rules.list_guests(s)
    mine = [g for g in guests if resource is None or g.resource == resource]
    return sorted(mine, key=lambda g: (not g.active, -g.id))


async def _page(
    request: Request,
    p: Principal,
    kind: str,
    form: FormState,
    status: int = 200,
) -> HTMLResponse:
    resource = _filter(request)
    filter_error = None
    c = get_ctx(request)
    async with c.db.read() as s:
        items: Sequence[RuleView | GuestView] = []
        try:
            items = await _items(s, kind, resource)
        except EntryGuardError as exc:  # a filter naming a resource that is gone
            filter_error = exc.message
        all_resources = await resources.list_resources(s, c.settings)
    return render_page(
        request,
        f"admin/{kind}.html",
        p=p,
        title="Static rules" if kind == "rules" else "Guest access",
        nav=kind,
        status=status,
        items=items,
        resources=all_resources,
        resource_options=[(r.name, f"{r.name} ({r.type})") for r in all_resources],
        resource=resource,
        filter_error=filter_error,
        form=form,
        any_warning=opens_everything(form.values.get("cidr", "")),
    )


def _filter(request: Request) -> str | None:
    value = request.query_params.get("resource")
    return value[:256] if value else None


def _back(kind: str, request: Request) -> str:
    resource = _filter(request)
    path = f"/admin/{kind}"
    return path if resource is None else f"{path}?{urlencode({'resource': resource})}"


Write = Callable[[AsyncSession], Awaitable[str]]
"""One access change inside the write transaction; returns the message to show."""


async def _commit(request: Request, write: Write) -> str:
    async with (tx := get_ctx(request).db.write()) as s:
        done = await write(s)
    await edges_apply(request, tx.revision)  # the edges admit/cut before we answer
    return done


async def _submit(
    request: Request, p: Principal, kind: str, form: FormState, write: Write
) -> Response:
    try:
        done = await _commit(request, write)
    except EntryGuardError as exc:
        form.errors = field_errors(exc, RULE_FIELDS if kind == "rules" else GUEST_FIELDS)
        return await _page(request, p, kind, form, error_status(exc))
    return redirect(request, _back(kind, request), Flash("success", done))


async def _remove(request: Request, p: Principal, kind: str, write: Write) -> Response:
    await checked_form(request, p)
    try:
        done = await _commit(request, write)
    except EntryGuardError as exc:
        return redirect(request, _back(kind, request), Flash("error", exc.message))
    return redirect(request, _back(kind, request), Flash("success", done))


async def _access_form(request: Request, p: Principal) -> FormState:
    form = FormState(values=text_values(await checked_form(request, p)))
    _check_any(form)
    return form


@router.get("/rules")
async def rules(request: Request, p: Principal = Depends(admin)) -> Response:
    values = {"resource": _filter(request) or ""}
    return await _page(request, p, "rules", FormState(values=values))


@router.post("/rules")
async def add_rule(request: Request, p: Principal = Depends(admin)) -> Response:
    form = await _access_form(request, p)
    if form.failed:
        return await _page(request, p, "rules", form, 400)
    v = form.values

    async def write(s: AsyncSession) -> str:
        r = await resources.get_resource(s, v.get("resource", "")[:256])
        cidr, description = v.get("cidr", "")[:100], v.get("description", "")[:300]
        rule = await access_rules.add_rule(
            s, r, cidr, description, bool(v.get("allow_any")), p.actor
        )
        return f"Static rule {rule.cidr} added to {r.name}."

    return await _submit(request, p, "rules", form, write)


@router.post("/rules/{rule_id}/delete")
async def remove_rule(rule_id: int, request: Request, p: Principal = Depends(admin)) -> Response:
    async def write(s: AsyncSession) -> str:
        rule, r = await access_rules.remove_rule(s, rule_id, p.actor)
        return f"Static rule {rule.cidr} removed from {r.name}."

    return await _remove(request, p, "rules", write)


@router.get("/guests")
async def guests(request: Request, p: Principal = Depends(admin)) -> Response:
    values = {"resource": _filter(request) or "", "duration": "24h"}
    return await _page(request, p, "guests", FormState(values=values))


@router.post("/guests")
async def grant_guest(request: Request, p: Principal = Depends(admin)) -> Response:
    form = await _access_form(request, p)
    v = form.values
    seconds = 0
    try:
        seconds = parse_duration(v.get("duration", "")[:32])
    except DurationError as exc:
        form.errors["duration"] = str(exc)
    if form.failed:
        return await _page(request, p, "guests", form, 400)

    async def write(s: AsyncSession) -> str:
        r = await resources.get_resource(s, v.get("resource", "")[:256])
        cidr, note = v.get("cidr", "")[:100], v.get("note", "")[:300]
        g = await access_rules.grant_guest(
            s, r, cidr, seconds, note, bool(v.get("allow_any")), p.actor
        )
        return f"Guest access for {g.cidr} on {r.name} granted."

    return await _submit(request, p, "guests", form, write)


@router.post("/guests/{guest_id}/delete")
async def revoke_guest(guest_id: int, request: Request, p: Principal = Depends(admin)) -> Response:
    async def write(s: AsyncSession) -> str:
        out = await access_rules.revoke_guest(s, guest_id, p.actor)
        return f"Guest access for {out.guest.cidr} on {out.resource.name} ended."

    return await _remove(request, p, "guests", write)
