"""Tunnel mode: an outbound WebSocket to the edge; dial only configured targets.

OPEN names a tunnel id, never a host: the agent maps it to a target from the list it
fetched from the control plane and refuses anything outside ``tunnel.allowed_targets``
(checked against the *resolved* address, so a DNS name cannot smuggle a dial out of
the allowed networks). No frame can make it connect anywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import ssl
from typing import Any

import websockets

from entryguard import __version__
from entryguard.agent.config import AgentConfig
from entryguard.agent.control_client import ControlClient, ControlPlaneError, TunnelTarget
from entryguard.backoff import Backoff
from entryguard.mux import ResetCode, hello
from entryguard.net import IPNetwork, normalize_ip
from entryguard.relay.link import MuxLink
from entryguard.relay.stream import SocketStream
from entryguard.relay.tasks import TaskSet
from entryguard.relay.wslink import ClientLink, connect
from entryguard.relay.wsoptions import link_options

log = logging.getLogger("entryguard.agent")

BACKOFF_MAX = 30.0
REFRESH_INTERVAL = 30.0
DIAL_TIMEOUT = 10.0


@functools.lru_cache(maxsize=1024)
def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class TargetStream(SocketStream):
    """The target side of one stream: buffers early data until the dial completes."""

    def __init__(self, link: MuxLink, stream_id: int, agent: TunnelClient) -> None:
        super().__init__(link, stream_id)
        self.agent = agent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:  # reset by the edge while we were dialing
            transport.close()
            return
        super().connection_made(transport)
        # OPENED goes out before any byte the target sends (server-first protocols
        # greet at once), then the early data that waited for the dial is written.
        self.link.mux.send_opened(self.stream_id)
        self.link.kick()
        self.attach()

    def on_closed(self) -> None:
        self.agent.streams.discard(self)
        if not self.agent.streams:
            self.agent.idle.set()


class TunnelClient:
    def __init__(self, cfg: AgentConfig, control: ControlClient) -> None:
        self.cfg = cfg
        self.control = control
        assert cfg.tunnel.edge_url
        self.edge_url = cfg.tunnel.edge_url
        self.allowed: list[IPNetwork] | None = cfg.tunnel.target_networks()
        self.targets: dict[int, TunnelTarget] = {}
        self.link: MuxLink | None = None
        self.streams: set[TargetStream] = set()
        self.connected = asyncio.Event()
        self._refresh = asyncio.Event()
        self._draining = False
        self.idle = asyncio.Event()  # set whenever the last open stream closes
        self._dials = TaskSet(log)  # one per stream until its target answers

    # --- targets ---------------------------------------------------------------------

    async def refresh_targets(self) -> None:
        new = {t.id: t for t in await self.control.tunnels()}
        if new != self.targets or not self.targets:
            self.targets = new
            shown = ", ".join(str(t) for t in new.values())
            log.info("[tunnel] targets updated: [%s]", shown)

    async def _refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refresh.wait(), REFRESH_INTERVAL)
            self._refresh.clear()
            try:
                await self.refresh_targets()
            except ControlPlaneError as exc:
                log.warning("[tunnel] could not refresh targets: %s", exc)

    # --- dialing -----------------------------------------------------------------------

    async def _resolve_allowed(self, t: TunnelTarget) -> list[tuple[Any, ...]]:
        literal = _ip_literal(t.host)
        if literal is not None:
            # An IP target needs no resolver: getaddrinfo would cost a thread-pool
            # round trip on every connection.
            family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            infos: list[tuple[Any, ...]] = [
                (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (t.host, t.port))
            ]
        else:
            loop = asyncio.get_running_loop()
            infos = list(await loop.getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM))
        if self.allowed is None:
            return infos
        ok = []
        for info in infos:
            ip = normalize_ip(ipaddress.ip_address(info[4][0]))
            if any(ip.version == n.version and ip in n for n in self.allowed):
                ok.append(info)
        return ok

    def _on_open(self, stream_id: int, ev: Any) -> None:
        link = self.link
        assert link is not None
        if self._draining:
            link.reset(stream_id, ResetCode.REFUSED, "agent shutting down")
            return
        target = self.targets.get(int(ev.tunnel_id))
        if target is None:
            log.warning(
                "[tunnel] refused stream for tunnel %s from %s: not a tunnel this agent serves",
                ev.tunnel_id,
                getattr(ev, "client_addr", "?"),
            )
            link.reset(stream_id, ResetCode.NOT_ALLOWED, "tunnel not served by this agent")
            self._refresh.set()  # maybe our list is stale
            return
        stream = TargetStream(link, stream_id, self)
        link.register(stream_id, stream)
        self.streams.add(stream)
        self._dials.spawn(self._dial(stream, target), name=f"dial-{stream_id}")

    async def _dial(self, stream: TargetStream, target: TunnelTarget) -> None:
        try:
            infos = await self._resolve_allowed(target)
            if not infos:
                log.warning(
                    "[tunnel] refused dial to %s: not within tunnel.allowed_targets", target
                )
                stream.abort(ResetCode.NOT_ALLOWED, "target outside the agent's allowed_targets")
                return
            loop = asyncio.get_running_loop()
            task = asyncio.current_task()
            assert task is not None
            last: Exception | None = None
            for family, _type, proto, _, addr in infos:
                # A bare timer rather than asyncio.timeout(): a third of the cost, and a
                # dial is on every connection's critical path.
                expired = False

                def expire(task: asyncio.Task[Any] = task) -> None:
                    nonlocal expired
                    expired = True
                    task.cancel()

                timer = loop.call_later(DIAL_TIMEOUT, expire)
                try:
                    await loop.create_connection(
                        lambda: stream, host=addr[0], port=addr[1], family=family, proto=proto
                    )
                    break
                except asyncio.CancelledError:
                    # Only the timer's own cancel is swallowed: a shutdown's cancel
                    # landing in the same turn leaves the count above zero.
                    if not expired or task.uncancel():
                        raise
                    last = TimeoutError(f"no answer within {DIAL_TIMEOUT:g} s")
                except OSError as exc:
                    last = exc
                finally:
                    timer.cancel()
            else:
                raise last or OSError("no address")
        except (OSError, TimeoutError) as exc:
            if stream.closed:
                return
            refused = isinstance(exc, ConnectionRefusedError)
            log.warning("[tunnel] dial %s failed: %s", target, exc)
            stream.abort(
                ResetCode.REFUSED if refused else ResetCode.UNREACHABLE, f"dial {target}: {exc}"
            )
            return

    def _on_control(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "targets_changed":
            self._refresh.set()
        elif kind == "hello":
            log.debug("[tunnel] edge hello: %s", msg)
        elif kind == "goaway":
            log.info("[tunnel] edge is going away: %s", msg.get("reason", ""))

    # --- the connection loop -------------------------------------------------------------

    async def run(self) -> None:
        refresher = asyncio.create_task(self._refresh_loop())
        backoff = Backoff(0.5, BACKOFF_MAX)
        try:
            while True:
                try:
                    await self.refresh_targets()
                except ControlPlaneError as exc:
                    log.warning("[tunnel] could not fetch targets: %s", exc)
                log.info("[tunnel] connecting to edge at %s", self.edge_url)
                try:
                    ssl_ctx = None
                    if self.edge_url.startswith("wss://"):
                        ssl_ctx = ssl.create_default_context(cafile=self.cfg.tunnel.ca_file)
                    ws = await connect(
                        f"{self.edge_url}/agent/connect",
                        link_options(),
                        ssl=ssl_ctx,
                        open_timeout=15,
                        headers=[
                            ("Authorization", f"Bearer {self.cfg.server.api_key}"),
                            ("User-Agent", f"eg-agent/{__version__}"),
                        ],
                    )
                    try:
                        backoff.reset()
                        await self._serve(ws)
                    finally:
                        await ws.close(1000)
                    if self._draining:
                        log.info("[tunnel] disconnected from edge at %s", self.edge_url)
                    else:
                        log.warning("[tunnel] disconnected from edge at %s", self.edge_url)
                except websockets.InvalidStatus as exc:
                    log.error(
                        "[tunnel] edge refused the connection (HTTP %d): check server.api_key has the "
                        "agent:connect scope",
                        exc.response.status_code,
                    )
                except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                    log.warning("[tunnel] cannot reach edge at %s: %s", self.edge_url, exc)
                self.connected.clear()
                if self._draining:
                    return
                await asyncio.sleep(backoff.next())
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher

    async def _serve(self, ws: ClientLink) -> None:
        mux = self.cfg.tunnel.link_limits().new_mux("agent")
        link = MuxLink(ws, mux, "edge", on_open=self._on_open, on_control=self._on_control)
        self.link = link
        mux.send_control(hello(mux.initial_window, agent=__version__, name=self.cfg.agent.name))
        link.kick()
        log.info("[tunnel] connected to edge at %s", self.edge_url)
        self.connected.set()
        try:
            await link.run()
        finally:
            self.link = None
            # The link reset every stream as it closed: dials still running serve none.
            await self._dials.close()

    async def drain(self, timeout: float) -> None:
        """SIGTERM: accept no new streams, let open ones finish for up to ``timeout``,
        then reset the rest (their clients see the connection close, not a hang) and
        close the link."""
        self._draining = True
        if self.streams:
            self.idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), timeout)
        if self.streams:
            log.info("[tunnel] closing %d open stream(s)", len(self.streams))
            for stream in list(self.streams):
                stream.abort(ResetCode.REFUSED, "agent shutting down")
            self.streams.clear()
        link = self.link
        if link is not None:
            link.kick()  # the RESETs go out before the close frame
            await link.ws.close(1001, "agent shutting down")
