"""The web dashboard: server-rendered pages at ``/`` on the services the REST API uses.

Writes and lists go through the same services as the REST API (writes in
``Database.write`` transactions), and pages render the same typed views the API
answers with, so a page shows exactly what ``eg … --json`` shows. Sign-in reuses login
tokens (an HttpOnly cookie), every form carries a CSRF token, and admin pages are
refused by the server to everyone else.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from entryguard.control.http_errors import error_status
from entryguard.control.web import (
    auth,
    routes_admin_access,
    routes_admin_audit,
    routes_admin_directory,
    routes_admin_ops,
    routes_admin_resources,
    routes_user,
)
from entryguard.control.web.render import STATIC, render_page
from entryguard.errors import EntryGuardError

router = APIRouter(include_in_schema=False)
for _r in (
    auth.router,
    routes_user.router,
    routes_admin_resources.router,
    routes_admin_access.router,
    routes_admin_directory.router,
    routes_admin_ops.router,
    routes_admin_audit.router,
):
    router.include_router(_r)

TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 405: "Not allowed"}


def _is_dashboard(request: Request) -> bool:
    """A browser asking for a page: anything else (the API, scripts) gets the JSON errors."""
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get(
        "accept", ""
    )


def error_page(
    request: Request, status: int, message: str, p: Any = None, title: str | None = None
) -> Response:
    return render_page(
        request,
        "error.html",
        p=p,
        title=title or TITLES.get(status, "Something went wrong"),
        status=status,
        status_code=status,
        message=message,
    )


async def _delegate(handler: Any, request: Request, exc: Exception) -> Response:
    """Hand an error back to the API's own handler (which may be sync or async)."""
    result = handler(request, exc)
    if inspect.isawaitable(result):
        result = await result
    assert isinstance(result, Response)
    return result


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard from ``app``: pages at ``/``, assets at ``/static``, cookie auth.

    Error handlers for the dashboard's paths render pages; ``/api/…`` keeps the API's
    JSON error handlers, which are wrapped, not replaced.
    """
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(router)
    app.state.cookie_principal = auth.cookie_principal

    async def sign_in_required(request: Request, exc: Exception) -> Response:
        return auth.signin_redirect(request)

    async def admin_required(request: Request, exc: Exception) -> Response:
        p = exc.principal if isinstance(exc, auth.AdminRequired) else None
        message = "This page is for EntryGuard admins. Ask an admin for access."
        return error_page(request, 403, message, p, title="Admins only")

    async def csrf_failed(request: Request, exc: Exception) -> Response:
        p = exc.principal if isinstance(exc, auth.CsrfFailed) else None
        return error_page(
            request,
            403,
            "This form expired or did not come from this dashboard: nothing was changed. "
            "Go back, reload the page and try again.",
            p,
            title="Form expired",
        )

    api_error = app.exception_handlers.get(EntryGuardError)
    http_error = app.exception_handlers.get(StarletteHTTPException)

    async def dashboard_api_error(request: Request, exc: Exception) -> Response:
        if _is_dashboard(request) and isinstance(exc, EntryGuardError):
            p = await auth.session_principal(request)
            return error_page(request, error_status(exc), exc.message, p)
        return await _delegate(api_error, request, exc)

    async def dashboard_http_error(request: Request, exc: Exception) -> Response:
        if _is_dashboard(request) and isinstance(exc, StarletteHTTPException):
            message = "There is no such page." if exc.status_code == 404 else str(exc.detail)
            p = await auth.session_principal(request)
            return error_page(request, exc.status_code, message, p)
        return await _delegate(http_error, request, exc)

    app.add_exception_handler(auth.SignInRequired, sign_in_required)
    app.add_exception_handler(auth.AdminRequired, admin_required)
    app.add_exception_handler(auth.CsrfFailed, csrf_failed)
    if api_error is not None:
        app.add_exception_handler(EntryGuardError, dashboard_api_error)
    if http_error is not None:
        app.add_exception_handler(StarletteHTTPException, dashboard_http_error)
