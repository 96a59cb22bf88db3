"""Request context as FastAPI dependencies: settings and database, the caller, the caller's IP.

Routes take them as parameters (``c: CtxDep``, ``ip: ClientIp``); plain helpers that
only hold the request call :func:`get_ctx` directly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import update

from entryguard.control.auth.principal import Principal, authenticate
from entryguard.control.db.database import Database
from entryguard.control.db.models import ApiKey
from entryguard.control.settings import Settings
from entryguard.errors import Unauthorized
from entryguard.net import CidrError, normalize_ip, parse_ip

log = logging.getLogger("entryguard.control")


@dataclass
class Ctx:
    settings: Settings
    db: Database


def get_ctx(request: Request) -> Ctx:
    """The app's settings and database (set by ``create_app``)."""
    c: Ctx = request.app.state.ctx
    return c


ctx = get_ctx  # the name web/auth.py and web/render.py still import


def bearer(request: Request) -> str | None:
    return bearer_value(request.headers.get("authorization"))


def bearer_value(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header (HTTP or WebSocket)."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def principal(request: Request) -> Principal:
    c = get_ctx(request)
    secret = bearer(request)
    if secret is None:
        cookie_auth = getattr(request.app.state, "cookie_principal", None)
        if cookie_auth is not None:
            p: Principal | None = await cookie_auth(request)
            if p is not None:
                return p
        raise Unauthorized(
            "missing credentials: send Authorization: Bearer <key>",
            code="unauthorized",
        )
    async with c.db.read() as s:
        p = await authenticate(s, secret)
    if p.api_key is not None:
        await _touch_key(c.db, p.api_key)
    return p


async def _touch_key(db: Database, key: ApiKey) -> None:
    # last_used_at is informational: updated at most once a minute, outside the
    # serialised write path (it changes no access and writes no audit event).
    now = db.clock.now()
    if key.last_used_at is None or now - key.last_used_at > timedelta(seconds=60):
        async with db.sessions() as s, s.begin():
            await s.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))


def client_ip(request: Request) -> str:
    """The socket peer; ``X-Forwarded-For`` only when the peer is a trusted proxy.

    The header is read right to left, skipping trusted proxies; the first address that
    is not one is the client. Anything to its left was written by the client and is
    ignored, so a spoofed header cannot choose the granted IP.
    """
    settings: Settings = get_ctx(request).settings
    peer = request.client.host if request.client else "0.0.0.0"
    try:
        ip = normalize_ip(ipaddress.ip_address(peer.split("%", 1)[0]))
    except ValueError:
        return peer

    def trusted(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(a.version == n.version and a in n for n in settings.trusted_proxies)

    peer_ip = ip
    if not trusted(ip):
        return str(ip)
    hops = [
        h.strip()
        for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",")
        if h.strip()
    ]
    for hop in reversed(hops):
        try:
            # Strict: a plain address only. A zone id (fe80::1%eth0), brackets, a port or
            # garbage would otherwise become a session's grant that no edge can parse.
            addr = parse_ip(hop)
        except CidrError:
            log.warning(
                "ignoring X-Forwarded-For from %s: %r is not a plain IP address; "
                "using the socket peer",
                peer,
                hop[:64],
            )
            return str(peer_ip)
        if not trusted(addr):
            return str(addr)
        ip = addr
    return str(ip)


async def edges_apply(request: Request, revision: int | None, timeout: float = 1.0) -> None:
    """After an access change commits, give the edges a moment to apply it."""
    if revision is not None:
        state = request.app.state
        loop = asyncio.get_running_loop()
        start = loop.time()
        # Edges on the pushed stream (every replica's), then any on the older long-poll.
        await state.hub.caught_up(revision, timeout)
        left = timeout - (loop.time() - start)
        if left > 0:
            await state.notifier.edges_caught_up(revision, left)


CtxDep = Annotated[Ctx, Depends(get_ctx)]
ClientIp = Annotated[str, Depends(client_ip)]
Caller = Annotated[Principal, Depends(principal)]
