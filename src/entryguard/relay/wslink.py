"""The agent link's WebSocket, bytes owned here: an ``asyncio.Protocol`` driving the
websockets library's documented Sans-I/O layer (its "Integrate the Sans-I/O layer"
guide) for everything but the data.

- Handshake: the bytes up to the end of the HTTP head go to ``ServerProtocol`` /
  ``ClientProtocol`` and nothing more, so the library's parser ends exactly at the
  first frame boundary (a 101 response and a request carry no body).
- Data: once a consumer ``attach``-es, ``FrameSplitter`` cuts the socket's bytes into
  frames; a whole binary message goes straight to the consumer, every other frame
  (ping, pong, close, and anything the splitter will not judge) goes whole to the
  library through ``receive_data``. Binary messages are framed here (``binary_frames``);
  what the library has to send (a pong, a close frame, EOF) is written the moment it is
  produced, so it is never behind or mixed into ours.
- Keepalive on our own timer: a ping every ``ping_interval``; no pong within
  ``ping_timeout`` fails the link with 1011, as the library's own client and server do.
- Back-pressure is the transport's: ``pause_writing``/``resume_writing`` flip
  ``writing_paused`` and wake the consumer. Reading pauses in two places only: between
  the handshake and ``attach``, so nothing arrives before someone can take it; and
  while the consumer holds it (``hold_reading``: the mux has too many control frames
  queued behind a peer that does not read, see ``MuxLink``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl as ssl_lib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from entryguard.relay.tasks import TaskSet
from entryguard.relay.wsframes import FrameSplitter, MaskKeys, binary_frames
from entryguard.relay.wsoptions import LinkOptions

log = logging.getLogger("entryguard.relay")

_HEAD_END = b"\r\n\r\n"
_HEAD_MAX = 64 * 1024  # past this without an end, the library judges (and refuses) it
_OPEN = State.OPEN
_CONNECTING = State.CONNECTING


def _nothing() -> None:
    pass


class WsLink(asyncio.Protocol):
    """One WebSocket connection of the agent link (see the module docstring)."""

    masked_in = False  # frames from the peer carry a mask key (a server's side)

    def __init__(self, protocol: ServerProtocol | ClientProtocol, options: LinkOptions) -> None:
        self.protocol = protocol
        self.options = options
        self.transport: asyncio.Transport | None = None
        self.writing_paused = False
        # The library's state is OPEN: refreshed after every call into the library (it
        # changes nowhere else), read as a plain attribute on every write.
        self.is_open = False
        self.on_writable: Callable[[], None] = _nothing
        self.on_read_done: Callable[[], None] = _nothing
        self.splitter: FrameSplitter | None = None  # set by attach(): the data phase
        self._head = bytearray()  # handshake bytes until the end of the HTTP head
        self._head_fed = False  # the head went to the library: the rest follows it there
        self._early: list[bytes] = []  # after the handshake, before attach()
        self._mask_keys = MaskKeys() if not self.masked_in else None
        self._loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = self._loop.create_future()  # set when the socket is gone
        self._ping_payload: bytes | None = None
        self._ping_sent_at = 0.0
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None

    # --- what the link's owner uses -----------------------------------------------

    @property
    def close_reason(self) -> str | None:
        """The peer's or our close reason once the connection is closed."""
        return self.protocol.close_reason if self.protocol.state is State.CLOSED else None

    @property
    def close_code(self) -> int | None:
        return self.protocol.close_code if self.protocol.state is State.CLOSED else None

    @property
    def remote_address(self) -> Any:
        return None if self.transport is None else self.transport.get_extra_info("peername")

    def attach(
        self,
        on_binary: Callable[[bytes | memoryview], None],
        on_writable: Callable[[], None],
        on_read_done: Callable[[], None] = _nothing,
    ) -> None:
        """Start the data phase: binary messages go to ``on_binary`` (a ``bytes`` or a
        read-only view, valid for the call only), ``on_read_done`` runs after the
        messages of each socket read, ``on_writable`` when the transport takes writes
        again. What arrived since the handshake comes first."""
        self.on_writable = on_writable
        self.on_read_done = on_read_done
        self.splitter = FrameSplitter(
            masked=self.masked_in,
            max_size=self.options.max_size,
            on_binary=on_binary,
            on_other=self._library_frames,
        )
        if not self.is_open:
            self.splitter.passthrough = True
        early, self._early = self._early, []
        for data in early:
            self.splitter.feed(data)
        on_read_done()
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()

    def hold_reading(self, held: bool) -> None:
        """Stop taking the peer's bytes (``True``) or take them again (``False``). Only
        after ``attach``: before it, reading is paused until ``attach`` anyway."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.splitter is None:
            return
        with contextlib.suppress(RuntimeError):
            if held:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def write_messages(self, messages: list[bytes]) -> None:
        """Write binary messages, one frame each (the caller checked ``is_open``)."""
        assert self.transport is not None
        self.transport.writelines(binary_frames(messages, self._mask_keys))

    def start_close(self, code: int, reason: str = "") -> None:
        """Begin the closing handshake (nothing to do if it has begun); the connection
        is aborted if it is not closed ``close_timeout`` later."""
        if self.protocol.state is _OPEN:
            self.protocol.send_close(code, reason)
            self._after_library()
        elif self.protocol.state is _CONNECTING and self.transport is not None:
            self.transport.abort()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.start_close(code, reason)
        await asyncio.shield(self.lost)

    async def wait_closed(self) -> None:
        await asyncio.shield(self.lost)

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        limit = self.options.write_limit
        self.transport.set_write_buffer_limits(high=limit, low=limit // 4)

    def data_received(self, data: bytes) -> None:
        splitter = self.splitter
        if splitter is not None:
            splitter.feed(data)
            self.on_read_done()
        elif self.protocol.state is _OPEN:
            # Frames that came with the handshake's last read, or that a TLS transport
            # had decrypted before reading paused: kept for attach().
            self._early.append(data)
        elif self._head_fed:
            early, self._early = self._early, []  # closing before attach: all the library's
            for chunk in (*early, data):
                self._library_frames(chunk)
        else:
            self._head_received(data)

    def eof_received(self) -> None:
        self.protocol.receive_eof()
        self._write_library_output()
        # The closing handshake means neither end writes after EOF, and TLS cannot
        # half-close: let the transport close (None), as the library's client does.

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.receive_eof()  # idempotent: the state is CLOSED from here on
        self.is_open = False
        for timer in (self._ping_timer, self._pong_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = self._close_timer = None
        if self.writing_paused:
            self.writing_paused = False
        if not self.lost.done():
            self.lost.set_result(None)
        self.handshake_ended(exc)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.on_writable()

    # --- handshake ---------------------------------------------------------------------

    def _head_received(self, data: bytes) -> None:
        head = self._head
        head += data
        end = head.find(_HEAD_END)
        if end < 0 and len(head) <= _HEAD_MAX:
            return
        cut = len(head) if end < 0 else end + len(_HEAD_END)
        rest = bytes(head[cut:])
        self._head_fed = True
        self._library_frames(bytes(head[:cut]))
        self._head = bytearray()
        if rest:
            self.data_received(rest)

    def handshake_event(self, event: Request | Response) -> None:
        """The library parsed the peer's request or response (subclasses act on it)."""

    def handshake_ended(self, exc: Exception | None) -> None:
        """The connection ended (subclasses settle a handshake still waiting)."""

    def opened(self) -> None:
        """The handshake succeeded: pause reading until someone ``attach``-es."""
        assert self.transport is not None
        self.transport.pause_reading()
        self._arm_ping(self.options.ping_interval)

    # --- frames the library handles -------------------------------------------------------

    def _library_frames(self, data: bytes) -> None:
        protocol = self.protocol
        try:
            protocol.receive_data(data)
        except EOFError:  # after receive_eof (frames kept for an attach after the end)
            return
        events = protocol.events_received()
        self._after_library()
        for event in events:
            if isinstance(event, Frame):
                self._frame(event)
            else:
                self.handshake_event(event)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.PONG:
            if frame.data == self._ping_payload:
                self._pong_received()
        elif opcode is Opcode.TEXT or opcode is Opcode.CONT or opcode is Opcode.BINARY:
            # The link carries single-frame binary messages only (which never get here
            # while the link is healthy): anything else is a peer bug.
            log.warning("tunnel link: text or fragmented message: closing the link")
            self.start_close(1003, "binary single-frame messages only")

    def _after_library(self) -> None:
        """Write what the library produced; once it is no longer open, every byte is
        its own (closing handshake), and a close deadline is armed."""
        self._write_library_output()
        protocol = self.protocol
        if protocol.state is _OPEN:
            return
        if self.splitter is not None:
            self.splitter.passthrough = True
        if self._close_timer is None and protocol.close_expected() and self.transport is not None:
            self._close_timer = self._loop.call_later(
                self.options.close_timeout, self.transport.abort
            )

    def _write_library_output(self) -> None:
        self.is_open = self.protocol.state is _OPEN
        transport = self.transport
        if transport is None:
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                # write_eof() documents no exceptions; uvloop raises RuntimeError.
                with contextlib.suppress(Exception):
                    transport.write_eof()
            else:  # TLS cannot half-close
                transport.close()

    # --- keepalive --------------------------------------------------------------------------

    def _arm_ping(self, delay: float | None) -> None:
        if delay is None or self.options.ping_interval is None:
            return
        self._ping_timer = self._loop.call_later(max(0.0, delay), self._send_ping)

    def _send_ping(self) -> None:
        self._ping_timer = None
        if self.protocol.state is not _OPEN:
            return
        self._ping_payload = secrets.token_bytes(4)
        self._ping_sent_at = self._loop.time()
        self.protocol.send_ping(self._ping_payload)
        self._write_library_output()
        timeout = self.options.ping_timeout
        if timeout is not None:
            self._pong_timer = self._loop.call_later(timeout, self._pong_missing)
        else:
            self._arm_ping(self.options.ping_interval)

    def _pong_received(self) -> None:
        self._ping_payload = None
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
            interval = self.options.ping_interval
            if interval is not None:
                self._arm_ping(self._ping_sent_at + interval - self._loop.time())

    def _pong_missing(self) -> None:
        self._pong_timer = None
        log.warning("tunnel link: no pong within %g s: closing the link", self.options.ping_timeout)
        if self.protocol.state is _OPEN:
            self.protocol.fail(1011, "keepalive ping timeout")
            self._write_library_output()
        if self.transport is not None:
            self.transport.abort()  # a peer that does not answer will not close either


ProcessRequest = Callable[["ServerLink", Request], Response | None]


class ServerLink(WsLink):
    """The edge's side: ``process_request`` answers plain HTTP (``/health``) or refuses;
    ``None`` goes on with the WebSocket handshake, then ``on_open`` gets the link."""

    masked_in = True

    def __init__(
        self,
        options: LinkOptions,
        process_request: ProcessRequest | None = None,
        on_open: Callable[[ServerLink], None] | None = None,
    ) -> None:
        super().__init__(ServerProtocol(max_size=options.max_size), options)
        self._process_request = process_request
        self._on_open = on_open
        self._open_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self._open_timer = self._loop.call_later(self.options.open_timeout, self._open_late)

    def _open_late(self) -> None:
        self._open_timer = None
        if self.protocol.state is _CONNECTING and self.transport is not None:
            self.transport.abort()

    def handshake_event(self, event: Request | Response) -> None:
        if not isinstance(event, Request):
            return
        protocol = cast(ServerProtocol, self.protocol)
        try:
            response = None
            if self._process_request is not None:
                response = self._process_request(self, event)
            if response is None:
                response = protocol.accept(event)
        except Exception:
            log.exception("agent endpoint: request handling failed")
            response = protocol.reject(500, "Internal error.\n")
        protocol.send_response(response)
        self._after_library()
        if protocol.state is _OPEN:
            if self._open_timer is not None:
                self._open_timer.cancel()
                self._open_timer = None
            self.opened()
            if self._on_open is not None:
                self._on_open(self)

    def handshake_ended(self, exc: Exception | None) -> None:
        if self._open_timer is not None:
            self._open_timer.cancel()
            self._open_timer = None


class ClientLink(WsLink):
    """The agent's side: sends the handshake request at once; ``handshake`` settles
    with the response (``InvalidStatus`` and friends when refused)."""

    def __init__(self, url: str, options: LinkOptions, headers: Sequence[tuple[str, str]]) -> None:
        super().__init__(ClientProtocol(parse_uri(url), max_size=options.max_size), options)
        self._headers = headers
        self.handshake: asyncio.Future[None] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        protocol = cast(ClientProtocol, self.protocol)
        request = protocol.connect()
        for name, value in self._headers:
            request.headers[name] = value
        protocol.send_request(request)
        self._write_library_output()

    def handshake_event(self, event: Request | Response) -> None:
        self._settle(None)

    def handshake_ended(self, exc: Exception | None) -> None:
        self._settle(ConnectionError(f"connection closed during the handshake: {exc or 'EOF'}"))

    def _settle(self, lost: Exception | None) -> None:
        if self.handshake.done():
            return
        refused = cast(ClientProtocol, self.protocol).handshake_exc
        if refused is not None:
            self.handshake.set_exception(refused)
        elif lost is not None:
            self.handshake.set_exception(lost)
        elif self.protocol.state is _OPEN:
            self.opened()
            self.handshake.set_result(None)


async def connect(
    url: str,
    options: LinkOptions,
    *,
    headers: Sequence[tuple[str, str]] = (),
    ssl: Any = None,
    open_timeout: float = 15.0,
) -> ClientLink:
    """Open a link to ``url`` (``ws://`` or ``wss://``). Raises ``OSError``,
    ``TimeoutError`` or the library's ``InvalidHandshake`` (``InvalidStatus`` when the
    edge answered with an HTTP error)."""
    uri = parse_uri(url)
    loop = asyncio.get_running_loop()
    if uri.secure and ssl is None:
        ssl = ssl_lib.create_default_context()
    async with asyncio.timeout(open_timeout):
        transport, link = await loop.create_connection(
            lambda: ClientLink(url, options, headers),
            uri.host,
            uri.port,
            ssl=ssl if uri.secure else None,
        )
        try:
            await asyncio.shield(link.handshake)
        except BaseException:
            link.handshake.cancel()  # nobody will read what the abort would set on it
            transport.abort()
            raise
    return link


Handler = Callable[[ServerLink], Awaitable[None]]
LinkFactory = Callable[
    [LinkOptions, ProcessRequest | None, Callable[[ServerLink], None]], ServerLink
]


class LinkServer:
    """Serves links on one port: ``handler(link)`` runs for each open link, and the
    link is closed (1000, or 1011 if it raised) when it returns."""

    def __init__(
        self,
        handler: Handler,
        options: LinkOptions,
        *,
        process_request: ProcessRequest | None = None,
        link_factory: LinkFactory = ServerLink,
    ) -> None:
        self._handler = handler
        self._options = options
        self._process_request = process_request
        self._link_factory = link_factory
        self._server: asyncio.Server | None = None
        self._links: set[ServerLink] = set()
        self._handlers = TaskSet(log)

    async def start(
        self, *, host: str | None = None, port: int | None = None, sock: Any = None, ssl: Any = None
    ) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._new_link, host, port, sock=sock, ssl=ssl)

    @property
    def sockets(self) -> Sequence[Any]:
        return () if self._server is None else self._server.sockets

    def _new_link(self) -> ServerLink:
        link = self._link_factory(self._options, self._process_request, self._on_open)
        self._links.add(link)
        link.lost.add_done_callback(lambda _f: self._links.discard(link))
        return link

    def _on_open(self, link: ServerLink) -> None:
        self._handlers.spawn(self._run_handler(link), name="agent-link")

    async def _run_handler(self, link: ServerLink) -> None:
        code = 1000
        try:
            await self._handler(link)
        except Exception:
            log.exception("agent link handler failed")
            code = 1011
        finally:
            link.start_close(code)

    def close(self, code: int = 1001, reason: str = "") -> None:
        """Stop accepting; close every link (each aborted after ``close_timeout``)."""
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.start_close(code, reason)

    async def wait_closed(self) -> None:
        for link in list(self._links):
            await link.wait_closed()
        await self._handlers.close()
        if self._server is not None:
            await self._server.wait_closed()
