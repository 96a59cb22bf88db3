"""Rendering dashboard pages: templates, flash messages, form input and errors beside fields."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape

from entryguard import __version__
from entryguard.control.api.deps import ctx
from entryguard.control.auth.principal import Principal
from entryguard.control.web import csrf
from entryguard.durations import format_duration
from entryguard.errors import EntryGuardError

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
FLASH_COOKIE = "eg_flash"
FORM = "_form"
"""Key of an error that belongs to the form as a whole rather than to one field."""

# Everything the dashboard loads comes from this origin: no CDN, no inline script or
# style, no framing (clickjacking on the revoke buttons), no posting forms elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _parse_iso(value: str | datetime | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def when(value: str | datetime | None) -> str:
    """``2026-11-22 21:04:05 UTC``: the server's times, unambiguous for every admin."""
    dt = _parse_iso(value)
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if dt else "—"


def remaining(value: str | datetime | None) -> str:
    """Time left until ``value`` as ``eg`` prints it (``3h 59m``); the page's script ticks it."""
    dt = _parse_iso(value)
    if dt is None:
        return "—"
    return format_duration(max(0.0, (dt - datetime.now(UTC)).total_seconds()))


def plain(value: Any) -> str:
    """An audit detail as text: strings as they are, anything else as JSON (true, [..])."""
    return value if isinstance(value, str) else json.dumps(value)


_BREAK_AFTER = re.compile(r"([./:@])")


def breaks(value: Any) -> Markup:
    """Host names, addresses and paths that may wrap after ``. / : @`` (a ``<wbr>`` there),
    so a long connection string wraps between its parts rather than mid-word."""
    return Markup(_BREAK_AFTER.sub(r"\1<wbr>", str(escape(value))))


def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["remaining"] = remaining
    env.filters["duration"] = format_duration
    env.filters["plain"] = plain
    env.filters["breaks"] = breaks
    env.globals["version"] = __version__
    return env


templates = _env()


@dataclass
class Flash:
    kind: str  # success | info | warning | error
    text: str


@dataclass
class FormState:
    """What a form shows again after a failed submit: the values typed and the errors."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return bool(self.errors)


def render_page(
    request: Request,
    template: str,
    *,
    p: Principal | None,
    title: str,
    nav: str = "",
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    flash = take_flash(request)
    body = templates.get_template(template).render(
        request=request,
        user=p.user if p else None,
        is_admin=bool(p and "admin" in p.scopes),
        csrf_token=getattr(request.state, "csrf_token", ""),
        csrf_field=csrf.FIELD,
        title=title,
        nav=nav,
        flashes=[flash] if flash else [],
        **context,
    )
    response = HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def set_cookie(
    response: Response, request: Request, name: str, value: str, max_age: int, path: str = "/"
) -> None:
    """Every dashboard cookie: HttpOnly, SameSite=Lax, Secure when served over TLS."""
    secure = bool(ctx(request).settings.secure_cookies) or request.url.scheme == "https"
    response.set_cookie(
        name, value, max_age=max_age, path=path, httponly=True, samesite="lax", secure=secure
    )


def redirect(request: Request, url: str, flash: Flash | None = None) -> RedirectResponse:
    """303 See Other after a successful POST, so a reload never submits twice."""
    response = RedirectResponse(url, status_code=303)
    if flash is not None:
        # Cookies hold about 4 KB; 300 characters stay under it even fully percent-encoded.
        value = quote(f"{flash.kind}:{flash.text[:300]}")
        set_cookie(response, request, FLASH_COOKIE, value, 120)
    return response


def take_flash(request: Request) -> Flash | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    kind, _, text = unquote(raw).partition(":")
    if kind not in ("success", "info", "warning", "error") or not text:
        return None
    return Flash(kind, text)


def field_errors(exc: EntryGuardError, fields: Mapping[str, str]) -> dict[str, str]:
    """Place a service's error beside the field it is about (by error code), else on the form."""
    return {fields.get(exc.code, FORM): exc.message}


def text_values(form: Mapping[str, Any]) -> dict[str, str]:
    """A form's text fields (file uploads are not expected anywhere and are ignored)."""
    return {k: v for k, v in form.items() if isinstance(v, str) and k != csrf.FIELD}
