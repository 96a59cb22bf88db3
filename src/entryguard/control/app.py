"""The control plane's ASGI app: REST API under /api/v1 (and the dashboard at /)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from entryguard import __version__
from entryguard.clock import SYSTEM, Clock
from entryguard.control.api import (
    admin_access,
    admin_directory,
    agent,
    agent_commands,
    auth,
    edge,
    me,
)
from entryguard.control.api.deps import Ctx
from entryguard.control.body_limit import BodyLimit
from entryguard.control.db.database import Database
from entryguard.control.http_errors import error_body, error_status
from entryguard.control.services.agents import run_offline_watch
from entryguard.control.services.edge_sync import ChangeNotifier, prune_changes
from entryguard.control.services.expiry import run_expiry
from entryguard.control.settings import Settings
from entryguard.control.web import mount_dashboard
from entryguard.errors import EntryGuardError

log = logging.getLogger("entryguard.control")
API = "/api/v1"


async def _prune_loop(db: Database, retention: int) -> None:
    while True:
        await asyncio.sleep(3600)
        with contextlib.suppress(Exception):
            await prune_changes(db, retention)


def create_app(
    settings: Settings,
    db: Database | None = None,
    *,
    background: bool = True,
    clock: Clock = SYSTEM,
) -> FastAPI:
    """The app on ``db`` (its clock), or on a Database of its own reading ``clock``."""
    database = db or Database(settings.database_url, clock=clock)
    notifier = ChangeNotifier(database)
    expiry_wake = asyncio.Event()  # a commit may have added an earlier expiry
    database.on_commit_changes.append(expiry_wake.set)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await notifier.start()
        tasks = []
        if background:
            tasks = [
                asyncio.create_task(
                    run_expiry(database, settings.expiry_interval, expiry_wake), name="expiry"
                ),
                asyncio.create_task(
                    run_offline_watch(database, settings.agent_offline_after), name="offline"
                ),
                asyncio.create_task(
                    _prune_loop(database, settings.change_retention_seconds), name="prune"
                ),
            ]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await notifier.stop()
            if db is None:
                await database.dispose()

    app = FastAPI(
        title="EntryGuard",
        version=__version__,
        openapi_url=f"{API}/openapi.json",
        docs_url=f"{API}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ctx = Ctx(settings=settings, db=database)
    app.state.notifier = notifier

    @app.exception_handler(EntryGuardError)
    async def _api_error(_: Request, exc: EntryGuardError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=error_status(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = (
            f"{where}: {first.get('msg', 'invalid request')}"
            if where
            else str(first.get("msg", "invalid request"))
        )
        return JSONResponse(error_body("invalid_request", msg), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = (
                f"no such endpoint: {request.method} {request.url.path} (see {API}/openapi.json)"
            )
        return JSONResponse(error_body(code, message), status_code=exc.status_code)

    @app.get(f"{API}/health", tags=["health"])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    for r in (
        auth.router,
        me.router,
        admin_directory.router,
        admin_access.router,
        agent.router,
        agent_commands.router,
        edge.router,
    ):
        app.include_router(r, prefix=API)
    mount_dashboard(app)  # pages at /, assets at /static, cookie sign-in
    app.add_middleware(BodyLimit)
    return app
