"""The edge: follows the control plane, serves agents' WebSockets and tunnel ports.

It never talks to the database. Grants are enforced here on the edge's own clock,
so an expired grant stops admitting (and its connections are cut) even while the
control plane is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from collections.abc import Coroutine, Sequence
from http import HTTPStatus
from typing import Any, Literal

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from entryguard import __version__
from entryguard.clock import SYSTEM, Clock
from entryguard.edge.follower import ControlPlaneFollower
from entryguard.edge.listeners import ClientStream, TunnelListener
from entryguard.edge.metrics import EdgeMetrics
from entryguard.edge.state import AgentCredential, EdgeState, Tunnel
from entryguard.mux import ResetCode, hello
from entryguard.net.allowlist import ip_of

# Re-exported for `entryguard edge` (server_cli does not import relay).
from entryguard.relay.limits import LinkLimits as LinkLimits
from entryguard.relay.limits import SizeError as SizeError
from entryguard.relay.limits import format_size as format_size
from entryguard.relay.limits import parse_size as parse_size
from entryguard.relay.link import MuxLink
from entryguard.relay.wslink import LinkServer, ServerLink
from entryguard.relay.wsoptions import PING_INTERVAL, PING_TIMEOUT, link_options
from entryguard.sync.stream import Health

log = logging.getLogger("entryguard.edge")

MAX_EXPIRY_SLEEP = 30.0


def ping_interval_from_env() -> float:
    """The environment may shorten the pings (tests, or links through proxies with short
    idle timers). Read when an edge is built, never at import."""
    return float(os.environ.get("EG_EDGE_PING_INTERVAL", str(PING_INTERVAL)))


def ping_timeout_from_env() -> float:
    """See :func:`ping_interval_from_env`."""
    return float(os.environ.get("EG_EDGE_PING_TIMEOUT", str(PING_TIMEOUT)))


class AgentConnection(ServerLink):
    """An agent's WebSocket, carrying the credential its handshake was admitted with
    (set in ``Edge.process_request``, read by the handler once the link is open)."""

    credential: AgentCredential | None = None


def _plain(status: int, body: str, content_type: str = "application/json") -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body.encode()))),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status, HTTPStatus(status).phrase, headers, body.encode())


class Edge:
    def __init__(
        self,
        control_url: str | Sequence[str],
        edge_token: str,
        *,
        tunnel_host: str = "127.0.0.1",
        verify: ssl.SSLContext | str | bool = True,
        poll_wait: float = 25.0,
        clock: Clock = SYSTEM,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        offline_grace: float = 120.0,
        name: str = "edge",
        delivery: Literal["stream", "poll"] = "stream",
        link_limits: LinkLimits = LinkLimits(),
    ) -> None:
        self.clock = clock
        # Per agent link: the memory budget and the stream cap (--link-memory, --max-streams).
        self.link_limits = link_limits
        self.name = name
        # Fail closed after this long without the control plane: session and guest
        # grants stop admitting, static rules stay. 0 keeps everything (fail-static).
        self.offline_grace = offline_grace
        self.fail_closed = False
        self._fail_closed_since = 0.0
        self._grace_timer: asyncio.TimerHandle | None = None
        self._bind_timer: asyncio.TimerHandle | None = None
        self.ping_interval = ping_interval_from_env() if ping_interval is None else ping_interval
        self.ping_timeout = ping_timeout_from_env() if ping_timeout is None else ping_timeout
        self.state = EdgeState()
        self.metrics = EdgeMetrics()
        self.follower = ControlPlaneFollower(
            self.state,
            control_url,
            edge_token,
            verify=verify,
            poll_wait=poll_wait,
            clock=clock,
            name=name or "edge",
            delivery=delivery,
        )
        self.follower.health = self._stream_health
        self.tunnel_host = tunnel_host
        self.listeners: dict[int, TunnelListener] = {}
        self.links: dict[int, MuxLink] = {}  # agent key id -> link
        self.conns: dict[int, set[ClientStream]] = {}  # tunnel id -> live client connections
        self._tasks: set[asyncio.Task[Any]] = set()
        self._starting: list[asyncio.Task[bool]] = []
        self.follower.after_apply = self._settle
        self.follower.on_synced = self._synced
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._expiry_rearm: asyncio.Handle | None = None
        self.server: LinkServer | None = None
        self.started_at = clock.time()
        st = self.state
        st.on_tunnel_added = self._tunnel_added
        st.on_tunnel_removed = self._tunnel_removed
        st.on_grant_removed = self._enforce
        st.on_agent_removed = self._agent_removed
        st.on_tunnels_changed = self._tunnels_changed

    # --- state callbacks ----------------------------------------------------------

    def _tunnel_added(self, t: Tunnel) -> None:
        lst = TunnelListener(self, t)
        self.listeners[t.id] = lst
        self._starting.append(asyncio.get_running_loop().create_task(lst.start(self.tunnel_host)))
        self._schedule_expiry()

    async def _settle(self) -> None:
        """Wait for listeners opened by the changes just applied (see follower.after_apply),
        then reconcile the listeners with the tunnels the state holds."""
        starting, self._starting = self._starting, []
        if starting:
            await asyncio.gather(*starting, return_exceptions=True)
        await self.reconcile_listeners()

    async def reconcile_listeners(self) -> None:
        """Open what is missing, close what is gone, retry the unbound ones that are due;
        then arm the retry timer for the next one due."""
        for tid in [tid for tid in self.listeners if tid not in self.state.tunnels]:
            await self.listeners.pop(tid).stop()
        now = self.clock.monotonic()
        for t in self.state.tunnels.values():
            lst = self.listeners.get(t.id)
            if lst is None or lst.tunnel is not t:
                if lst is not None:
                    await lst.stop()
                lst = self.listeners[t.id] = TunnelListener(self, t)
                await lst.start(self.tunnel_host)
            elif not lst.bound and lst.retry_at <= now:
                await lst.start(self.tunnel_host)
        self._arm_bind_retry()

    def _arm_bind_retry(self) -> None:
        if self._bind_timer is not None:
            self._bind_timer.cancel()
            self._bind_timer = None
        due = [lst.retry_at for lst in self.listeners.values() if not lst.bound]
        if not due:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, min(due) - self.clock.monotonic())
        self._bind_timer = loop.call_at(
            loop.time() + delay,
            lambda: self._spawn(self.reconcile_listeners(), "bind-retry"),
        )

    def _tunnel_removed(self, t: Tunnel) -> None:
        lst = self.listeners.pop(t.id, None)
        for c in list(self.conns.pop(t.id, ())):
            c.revoke()
        if lst is not None:
            self._spawn(lst.stop(), f"stop-listener-{t.port}")

    def _enforce(self, t: Tunnel) -> None:
        """Cut every live connection on this tunnel that no remaining grant covers."""
        now, static_only = self.clock.time(), self.fail_closed
        for c in list(self.conns.get(t.id, ())):
            if not t.allow.covers(ip_of(c.ip), now, static_only=static_only):
                c.revoke()
        self._schedule_expiry()

    def _agent_removed(self, key_id: int) -> None:
        link = self.links.get(key_id)
        if link is not None:
            log.info("agent key %d was revoked: closing its link", key_id)
            self._spawn(link.ws.close(4003, "credential revoked"), f"close-agent-{key_id}")

    def _tunnels_changed(self, key_id: int) -> None:
        link = self.links.get(key_id)
        if link is not None:
            link.mux.send_control({"type": "targets_changed"})
            link.kick()

    # --- expiry on the edge's clock ------------------------------------------------

    def expire_due(self) -> None:
        """Drop every grant past its expiry on the edge's clock and cut what they
        covered; then arm the timer for the next expiry. The timer calls this; tests
        call it after moving a fake clock."""
        now = self.clock.time()
        for t in self.state.tunnels.values():
            gone = t.allow.expired(now)
            if gone:
                for e in gone:
                    t.allow.remove(e.grant_id)
                self._enforce(t)
        self._arm_expiry()

    def _schedule_expiry(self) -> None:
        """Re-arm once per loop iteration, however many tunnels a batch touched."""
        if self._expiry_rearm is None:
            self._expiry_rearm = asyncio.get_running_loop().call_soon(self._arm_expiry)

    def _arm_expiry(self) -> None:
        self._expiry_rearm = None
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        due = [n for t in self.state.tunnels.values() if (n := t.allow.next_expiry()) is not None]
        if not due:
            return
        loop = asyncio.get_running_loop()
        # The loop's timer runs on monotonic time and expiry is wall time: re-check at
        # least every MAX_EXPIRY_SLEEP so a stepped wall clock cannot delay a cut long.
        delay = min(max(0.0, min(due) - self.clock.time()), MAX_EXPIRY_SLEEP)
        self._expiry_timer = loop.call_at(loop.time() + delay, self.expire_due)

    # --- offline grace: fail closed without the control plane -----------------------

    def _synced(self) -> None:
        """The follower holds the control plane's current state again."""
        if self.fail_closed:
            since, now = self._fail_closed_since, self.clock.time()
            self.fail_closed = False
            log.warning(
                "control plane back after %.0f s fail-closed: session and guest grants "
                "admitted again",
                now - since,
            )
            self.follower.outbox = [
                *self.follower.outbox[-99:],
                {"type": "fail_closed", "since": since, "until": now},
            ]
        self._arm_grace()

    def _arm_grace(self) -> None:
        if self.offline_grace <= 0:
            return
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        last = self.follower.last_contact or self.started_at
        delay = max(0.0, last + self.offline_grace - self.clock.time())
        loop = asyncio.get_running_loop()
        self._grace_timer = loop.call_at(loop.time() + delay, self.check_grace)

    def check_grace(self) -> None:
        """Fail closed when the control plane has been away longer than the grace (the
        timer calls this; tests call it after moving a fake clock)."""
        self._grace_timer = None
        if self.offline_grace <= 0 or self.fail_closed:
            return
        last = self.follower.last_contact or self.started_at
        if self.clock.time() - last < self.offline_grace:
            self._arm_grace()  # contact came in meanwhile (health probes)
            return
        self.fail_closed = True
        self._fail_closed_since = self.clock.time()
        log.error(
            "no confirmed change stream for %.0f s (--offline-grace): failing closed; "
            "session and guest grants are refused and their connections reset, static "
            "rules still admit",
            self.clock.time() - last,
        )
        for t in self.state.tunnels.values():
            self._enforce(t)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """A background task the edge owns: kept until done, cancelled by close()."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("edge task %s failed: %r", task.get_name(), task.exception())

    # --- HTTP: /health, /metrics, and the agent endpoint's checks ----------------------

    def _stream_health(self) -> Health:
        """What the edge reports with each acknowledgement (shown by `eg admin edges`):
        the sync problems, fail-closed and unbound ports, as on /health."""
        if self.fail_closed:
            return "fail-closed"
        if self.follower.problems or any(not lst.bound for lst in self.listeners.values()):
            return "degraded"
        return "ok"

    def health(self) -> tuple[int, dict[str, Any]]:
        unbound = sorted(
            (lst.tunnel.port, lst.error or "not bound")
            for lst in self.listeners.values()
            if not lst.bound
        )
        degraded = self.follower.degraded or self.fail_closed or bool(unbound)
        status = "fail-closed" if self.fail_closed else "degraded" if degraded else "ok"
        body = {
            "status": status,
            "name": self.name,
            "fail_closed": self.fail_closed,
            "unbound_ports": [{"port": p, "error": e} for p, e in unbound],
            "version": __version__,
            # Why it is degraded, in the edge's own words (details are in its log).
            "problems": list(self.follower.problems),
            "control_plane": {
                "connected": self.follower.connected,
                "last_contact": self.follower.last_contact or None,
                "error": self.follower.last_error,
                "revision": self.state.revision,
            },
            "tunnels": len(self.state.tunnels),
            "agents_connected": len(self.links),
            "connections": sum(len(c) for c in self.conns.values()),
        }
        return (503 if degraded else 200), body

    def metrics_text(self) -> str:
        live = [c for conns in self.conns.values() for c in conns]
        self.metrics.bad_changes_total = self.follower.bad_changes
        return self.metrics.render(
            {
                "agents_connected": ("Agents with a live WebSocket", float(len(self.links))),
                "streams_open": (
                    "Open relayed streams",
                    float(sum(len(c) for c in self.conns.values())),
                ),
                "tunnels": ("Tunnel listeners", float(len(self.listeners))),
                "control_plane_connected": (
                    "1 when following the control plane",
                    0.0 if self.follower.degraded else 1.0,
                ),
                "revision": ("Applied change-log revision", float(self.state.revision)),
                "tunnels_unbound": (
                    "Tunnel ports that could not be bound (retried with backoff)",
                    float(sum(1 for lst in self.listeners.values() if not lst.bound)),
                ),
                "fail_closed": (
                    "1 while session and guest grants are refused (no control plane)",
                    1.0 if self.fail_closed else 0.0,
                ),
                "sync_problems": (
                    "Unapplied changes or skipped snapshot rows standing now",
                    float(len(self.follower.problems)),
                ),
            },
            live={
                "bytes_to_agent_total": sum(c.bytes_up for c in live),
                "bytes_from_agent_total": sum(c.bytes_down for c in live),
            },
        )

    def _authenticate(self, request: Request) -> AgentCredential | Response:
        auth = request.headers.get("Authorization", "")
        scheme, _, secret = auth.partition(" ")
        if scheme.lower() != "bearer" or not secret:
            log.warning("agent connection refused: no API key (send Authorization: Bearer eg_…)")
            return _plain(
                401, json.dumps({"error": {"code": "unauthorized", "message": "missing API key"}})
            )
        cred = self.state.verify_agent(secret.strip(), self.clock.time())
        if cred is None:
            log.warning(
                "agent connection refused: API key %s… is unknown, revoked, expired or lacks agent:connect",
                secret.strip()[:11],
            )
            return _plain(
                403,
                json.dumps(
                    {
                        "error": {
                            "code": "forbidden",
                            "message": "API key unknown or without the agent:connect scope",
                        }
                    }
                ),
            )
        return cred

    def process_request(self, connection: ServerLink, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/health":
            status, body = self.health()
            return _plain(status, json.dumps(body))
        if path == "/metrics":
            return _plain(200, self.metrics_text(), "text/plain; version=0.0.4")
        if path != "/agent/connect":
            return _plain(
                404, json.dumps({"error": {"code": "not_found", "message": "no such path"}})
            )
        if request.headers.get("Origin") is not None:
            # Browsers always send Origin; agents never do. Refusing it stops a web page
            # from driving the tunnel endpoint with a user's ambient credentials.
            log.warning(
                "agent connection refused: Origin header present (%s)",
                request.headers.get("Origin"),
            )
            return _plain(
                403, json.dumps({"error": {"code": "forbidden", "message": "Origin not allowed"}})
            )
        if not self.follower.synced.is_set():
            return _plain(
                503, json.dumps({"error": {"code": "starting", "message": "edge is starting"}})
            )
        result = self._authenticate(request)
        if isinstance(result, Response):
            return result
        assert isinstance(connection, AgentConnection)  # create_connection=AgentConnection
        connection.credential = result
        return None

    async def _agent_handler(self, ws: ServerLink) -> None:
        assert isinstance(ws, AgentConnection) and ws.credential is not None
        cred = ws.credential
        peer = ws.remote_address[0] if ws.remote_address else "?"
        old = self.links.get(cred.key_id)
        if old is not None:
            log.info("agent %s reconnected from %s: replacing its previous link", cred.name, peer)
            await old.ws.close(4000, "replaced by a new connection")
        mux = self.link_limits.new_mux("edge")
        link = MuxLink(ws, mux, f"agent {cred.name}", clock=self.clock)
        link.mux.send_control(hello(mux.initial_window, edge=__version__))
        link.kick()
        self.links[cred.key_id] = link
        log.info("agent %s connected from %s", cred.name, peer)
        try:
            await link.run()
        finally:
            if self.links.get(cred.key_id) is link:
                del self.links[cred.key_id]
            log.info("agent %s disconnected (%s)", cred.name, ws.close_reason or "connection lost")

    # --- lifecycle ---------------------------------------------------------------------

    async def start(
        self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None, sock: Any = None
    ) -> None:
        self._spawn(self.follower.run(), "edge-follower")
        self._arm_grace()  # counts from start-up until the first snapshot
        self.server = LinkServer(
            self._agent_handler,
            link_options(ping_interval=self.ping_interval, ping_timeout=self.ping_timeout),
            process_request=self.process_request,
            link_factory=AgentConnection,
        )
        if sock is not None:
            await self.server.start(sock=sock, ssl=ssl_context)
        else:
            await self.server.start(host=host, port=port, ssl=ssl_context)

    async def wait_synced(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.follower.synced.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        """Stop: live tunnel connections are reset (the client sees a TCP RST, not a
        connection left hanging), agent links get close code 1001 (going away)."""
        # Following the control plane first: no tunnel opens or closes from here on.
        for h in (self._expiry_timer, self._expiry_rearm, self._grace_timer, self._bind_timer):
            if h is not None:
                h.cancel()
        tasks = [*self._tasks, *self._starting]  # listener starts still in flight too
        self._starting = []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for lst in list(self.listeners.values()):
            if lst.server is not None:
                lst.server.close()  # no new tunnel connections from here on
        for conns in list(self.conns.values()):
            for c in list(conns):
                c.abort(ResetCode.INTERNAL, "edge shutting down")
        if self.server is not None:
            # Closes every agent link with 1001 at once, each waiting at most
            # close_timeout for its agent's answer.
            self.server.close(code=1001, reason="edge shutting down")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 3)
        for lst in list(self.listeners.values()):
            await lst.stop()
        await self.follower.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(next(iter(self.server.sockets)).getsockname()[1])
