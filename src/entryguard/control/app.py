"""The control plane's ASGI app: REST API under /api/v1 (and the dashboard at /)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
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
from entryguard.control.db.database import DATABASE_ERRORS, Database, unavailable_reason
from entryguard.control.http_errors import error_body, error_status
from entryguard.control.services.agents import run_offline_watch
from entryguard.control.services.change_tail import ChangeTail
from entryguard.control.services.edge_hub import EdgeHub
from entryguard.control.services.edge_sync import ChangeNotifier, prune_changes
from entryguard.control.services.expiry import run_expiry
from entryguard.control.settings import Settings
from entryguard.control.web import mount_dashboard
from entryguard.errors import EntryGuardError, Unavailable

log = logging.getLogger("entryguard.control")
API = "/api/v1"


async def _prune_loop(db: Database, retention: int) -> None:
    while True:
        await asyncio.sleep(3600)
        with contextlib.suppress(Exception):
            await prune_changes(db, retention)


class Readiness:
    """``GET /health``'s answer: can this replica serve, i.e. does its database answer?

    A probe runs ``SELECT 1`` through the pool within :attr:`PROBE_TIMEOUT`; one probe
    at a time (concurrent health requests share it), and a good answer is reused for
    :attr:`GOOD_FOR` so health stays cheap under load. A request that meets a database
    outage (:meth:`failed`) also marks the replica not ready. Changes of state are
    logged once each (ready → not ready, and back), not on every probe.
    """

    PROBE_TIMEOUT = 2.0
    GOOD_FOR = 1.0

    def __init__(self, db: Database) -> None:
        self.db = db
        self.reason: str | None = None
        """Why the replica is not ready (None: ready, or not probed yet)."""
        self._ready: bool | None = None
        self._good_until = float("-inf")
        self._probe: asyncio.Task[str | None] | None = None
        self._query: asyncio.Task[None] | None = None

    async def check(self) -> str | None:
        """None when ready, else a short reason."""
        if self._ready and self.db.clock.monotonic() < self._good_until:
            return None
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._run(), name="readiness-probe")
        return await asyncio.shield(self._probe)

    async def _run(self) -> str | None:
        # Not asyncio.wait_for: cancelling a query on a hung connection waits for its
        # clean-up (up to the statement timeout). A query that does not answer in time
        # is left to end by the database timeouts (and return its connection); until it
        # has, the next probes wait on it rather than start another.
        query = self._query
        if query is None or query.done():
            query = self._query = asyncio.create_task(self._select_one(), name="readiness-select-1")
            query.add_done_callback(_consume)
        done, _ = await asyncio.wait({query}, timeout=self.PROBE_TIMEOUT)
        exc = None if not done else query.exception()
        if not done:
            reason: str | None = f"SELECT 1 did not answer within {self.PROBE_TIMEOUT:g} s"
        elif exc is not None:
            reason = unavailable_reason(exc) or f"{type(exc).__name__}: {exc}"[:200]
        else:
            self._set(None)
            self._good_until = self.db.clock.monotonic() + self.GOOD_FOR
            return None
        self._set(reason)
        return reason

    async def _select_one(self) -> None:
        async with self.db.engine.connect() as c:
            await c.execute(text("SELECT 1"))

    def failed(self, reason: str) -> None:
        """A request met a database outage: not ready until a probe succeeds."""
        self._good_until = float("-inf")
        self._set(reason)

    def _set(self, reason: str | None) -> None:
        ready = reason is None
        if ready != self._ready:
            if ready and self._ready is not None:
                log.info("ready: the database answers again")
            elif not ready:
                log.warning("not ready: the database cannot serve (%s)", reason)
        self._ready, self.reason = ready, reason


def _consume(task: asyncio.Task[Any]) -> None:
    """Retrieve an abandoned task's outcome (no "exception was never retrieved")."""
    if not task.cancelled():
        task.exception()


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
    tail = ChangeTail(database)
    notifier.on_change.append(tail.poke)
    hub = EdgeHub(database, notifier, interval=settings.stream_interval)
    expiry_wake = asyncio.Event()  # a commit may have added an earlier expiry
    database.on_commit_changes.append(expiry_wake.set)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await notifier.start()
        await tail.start()
        await hub.start()
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
            await hub.stop()
            await tail.stop()
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
    app.state.tail = tail
    app.state.hub = hub
    readiness = app.state.readiness = Readiness(database)

    @app.exception_handler(EntryGuardError)
    async def _api_error(_: Request, exc: EntryGuardError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=error_status(exc))

    async def _database_error(request: Request, exc: Exception) -> Response:
        reason = unavailable_reason(exc)
        if reason is None:
            raise exc  # a bug, not an outage: the usual 500 and traceback
        readiness.failed(reason)
        err = Unavailable(
            f"the database is unavailable ({reason}); try again shortly",
            code="database_unavailable",
        )
        # Through the EntryGuardError handler in place (the dashboard renders a page,
        # unless drawing it needs the database too).
        handler = request.app.exception_handlers.get(EntryGuardError, _api_error)
        try:
            result = handler(request, err)
            response = await result if asyncio.iscoroutine(result) else result
        except DATABASE_ERRORS:
            return await _api_error(request, err)
        assert isinstance(response, Response)
        return response

    for cls in DATABASE_ERRORS:
        app.add_exception_handler(cls, _database_error)

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
    async def health() -> JSONResponse:
        """Readiness: 200 when the database answers ``SELECT 1`` within 2 s, else 503."""
        reason = await readiness.check()
        stream = {
            "revision": tail.head,
            "edges": len(hub.local),
            # PostgreSQL: other replicas' commits arrive by NOTIFY; without the LISTEN
            # connection they arrive by the tail's 2 s re-read (slower, still correct).
            "listening": notifier.listening if database.is_postgres else None,
        }
        if reason is None:
            return JSONResponse({"status": "ok", "version": __version__, "stream": stream})
        body: dict[str, Any] = {
            "status": "not ready",
            "version": __version__,
            "database": reason,
            "stream": stream,
        }
        return JSONResponse(body, status_code=503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus text: readiness, the change tail, the edges streaming here."""
        ready = 1 if readiness.reason is None else 0
        lines = [
            "# HELP entryguard_ready 1 when this replica's database answers.",
            "# TYPE entryguard_ready gauge",
            f"entryguard_ready {ready}",
            "# HELP entryguard_change_revision Newest change-log revision read by this replica.",
            "# TYPE entryguard_change_revision gauge",
            f"entryguard_change_revision {tail.head}",
            "# HELP entryguard_change_reads_total Change-log queries run by the tail.",
            "# TYPE entryguard_change_reads_total counter",
            f"entryguard_change_reads_total {tail.reads}",
            "# HELP entryguard_edges_streaming Edges streaming from this replica.",
            "# TYPE entryguard_edges_streaming gauge",
            f"entryguard_edges_streaming {len(hub.local)}",
            "# HELP entryguard_edges_known Live edges of the cluster this replica knows of.",
            "# TYPE entryguard_edges_known gauge",
            f"entryguard_edges_known {len(hub.local) + len(hub.remote)}",
            "# HELP entryguard_edge_notifies_total NOTIFYs sent about edge positions.",
            "# TYPE entryguard_edge_notifies_total counter",
            f"entryguard_edge_notifies_total {hub.notifies}",
        ]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

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
