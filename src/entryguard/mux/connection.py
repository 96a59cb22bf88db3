"""The mux state machine: streams, credit flow control, priorities, timers. No I/O.

Feed each WebSocket binary message to :meth:`MuxConnection.receive_message` and act on
the events; send what :meth:`~MuxConnection.messages_to_send` returns, in order. Time is
passed in (``now``, any monotonic clock), so open timeouts are tested without sleeping:
call :meth:`~MuxConnection.handle_timer` once :meth:`~MuxConnection.get_timer` is due.

Ordering and batching of what leaves: see :mod:`entryguard.mux.outbox`.

Flow control: each side grants the other ``initial_window`` bytes per stream (its own,
announced in its ``hello``). Until the peer's hello arrives a sender assumes the peer
grants what it grants itself; the hello then corrects every open stream's window.
Credit is returned once a quarter of the window has been consumed, so a sender always
holds most of a window and never stalls on a full one.

Memory per link: what the peer may make this side hold (credit granted and not yet
used, plus bytes received and not yet consumed) is bounded by ``link_memory``. A
stream's window grows from ``initial_window`` towards ``max_window`` while the budget
allows and shrinks (to no less than ``window_floor``, so every stream progresses) when
it is tight; credit already granted is never taken back (docs/protocol.md).
"""

from __future__ import annotations

import heapq
from typing import Any, Literal

from entryguard.mux import frames as F
from entryguard.mux.codes import PROTOCOL_VERSION, FrameType, ResetCode
from entryguard.mux.errors import (
    ConnectionProtocolError,
    LocalProtocolError,
    StreamProtocolError,
)
from entryguard.mux.events import (
    ConnectionTerminated,
    ControlReceived,
    DataReceived,
    Event,
    ProtocolError,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)
from entryguard.mux.outbox import BATCH, CHUNK, Outbox
from entryguard.mux.stream import Ended, RecentlyClosed, Stream, StreamState

__all__ = [
    "BATCH",
    "CHUNK",
    "DEFAULT_LINK_MEMORY",
    "DEFAULT_MAX_STREAMS",
    "DEFAULT_WINDOW",
    "INITIAL_WINDOW",
    "RECENTLY_CLOSED",
    "WINDOW_FLOOR",
    "MuxConnection",
]

DEFAULT_WINDOW = 1024 * 1024  # measured: smaller windows cap a single stream's throughput
# What the relay grants every new stream before any WINDOW (HTTP/2's default): small,
# because it is granted whatever the budget says; credit then grows it to DEFAULT_WINDOW.
INITIAL_WINDOW = 64 * 1024
WINDOW_FLOOR = 16 * 1024  # the least window a stream is let down to: every stream progresses
DEFAULT_LINK_MEMORY = 64 * 1024 * 1024
DEFAULT_MAX_STREAMS = 16384
RECENTLY_CLOSED = 4096  # closed stream ids remembered, so late frames are told from faults

_DATA, _WINDOW, _OPEN, _OPENED = FrameType.DATA, FrameType.WINDOW, FrameType.OPEN, FrameType.OPENED
_FIN, _RESET, _CONTROL = FrameType.FIN, FrameType.RESET, FrameType.CONTROL


class MuxConnection:
    def __init__(
        self,
        role: Literal["edge", "agent"],
        *,
        initial_window: int = DEFAULT_WINDOW,
        max_window: int | None = None,
        link_memory: int = DEFAULT_LINK_MEMORY,
        window_floor: int = WINDOW_FLOOR,
        max_streams: int = DEFAULT_MAX_STREAMS,
        max_pending_opens: int = 1024,
        open_timeout: float = 15.0,
    ) -> None:
        if role not in ("edge", "agent"):
            raise ValueError("role must be 'edge' or 'agent'")
        if not 1 <= initial_window <= F.MAX_WINDOW:
            raise ValueError(f"initial_window must be 1 … {F.MAX_WINDOW}")
        if max_window is None:
            max_window = initial_window  # a fixed window: what the relay used to run
        if not 1 <= max_window <= F.MAX_WINDOW:
            raise ValueError(f"max_window must be 1 … {F.MAX_WINDOW}")
        if link_memory < 1 or window_floor < 1:
            raise ValueError("link_memory and window_floor must be positive")
        self.role = role
        self.initial_window = initial_window
        self.peer_window = initial_window  # until the peer's hello says otherwise
        # A window never grows past this: max(max_window, initial_window).
        self.max_window = max(max_window, initial_window)
        self.link_memory = link_memory
        self.window_floor = min(window_floor, self.max_window)
        # Credit granted and unused plus bytes received and unconsumed, all streams:
        # the memory the peer may make this side hold, kept under link_memory.
        self.memory_committed = 0
        self._credit_at = max(1, initial_window // 4)  # a new stream's first credit
        self.max_streams = max_streams
        self.max_pending_opens = max_pending_opens
        self.open_timeout = open_timeout
        self.closed = False
        self.goaway_received = False
        self.last_receive = 0.0  # ``now`` of the last message, for idle checks by the runtime
        self._peer_hello = False
        self._goaway_sent = False
        self._streams: dict[int, Stream] = {}
        self._highest = 0  # highest stream id opened: ids only grow, never reused
        self._ended = RecentlyClosed(RECENTLY_CLOSED)
        self._out = Outbox()
        self._unanswered: dict[int, float] = {}  # OPEN without OPENED/RESET -> deadline
        self._timers: list[tuple[float, int]] = []

    # --- queries -----------------------------------------------------------------------

    def stream_state(self, stream_id: int) -> StreamState:
        st = self._streams.get(stream_id)
        return StreamState.CLOSED if st is None else st.state

    def send_room(self, stream_id: int) -> int:
        """Bytes ``send_data`` would take now on this stream (0 if it is not open)."""
        st = self._streams.get(stream_id)
        if st is None or st.local_fin:
            return 0
        room = st.send_window
        return room if room > 0 else 0  # below 0 after a hello with a smaller window

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def control_backlog(self) -> int:
        """Bytes of control frames queued and not yet taken by ``messages_to_send``."""
        return self._out.control_bytes

    # --- sending (the application's calls) ------------------------------------------------

    def open_stream(self, tunnel_id: int, client_addr: str, now: float) -> int:
        """Edge: open a stream to ``tunnel_id``; DATA may follow at once (early data)."""
        self._check_open()
        if self.role != "edge":
            raise LocalProtocolError("only the edge opens streams")
        if self.goaway_received:
            raise LocalProtocolError("the agent is going away", code=ResetCode.REFUSED)
        if len(self._streams) >= self.max_streams:
            raise LocalProtocolError(
                f"too many streams ({self.max_streams})", code=ResetCode.REFUSED
            )
        if len(self._unanswered) >= self.max_pending_opens:
            raise LocalProtocolError(
                f"too many unanswered OPENs ({self.max_pending_opens}): the agent is not keeping up",
                code=ResetCode.REFUSED,
            )
        if self._highest >= F.MAX_STREAM_ID:
            raise LocalProtocolError("stream ids exhausted: reconnect", code=ResetCode.REFUSED)
        sid = self._highest + 1
        message = F.encode_open(sid, tunnel_id, client_addr)  # checks before any change
        self._highest = sid
        self._streams[sid] = Stream(sid, self.initial_window, self.peer_window, self._credit_at)
        self.memory_committed += self.initial_window
        self._out.add_control(message)
        deadline = now + self.open_timeout
        self._unanswered[sid] = deadline
        heapq.heappush(self._timers, (deadline, sid))
        return sid

    def send_opened(self, stream_id: int) -> None:
        """Agent: the target is dialed; the stream may now carry DATA both ways."""
        st = self._stream(stream_id)
        if self.role != "agent" or st.accepted:
            raise LocalProtocolError(f"stream {stream_id}: OPENED is the agent's answer, sent once")
        st.accepted = True
        self._unanswered.pop(stream_id, None)
        self._out.add_control(F.encode(_OPENED, stream_id))

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue what the peer's window allows; returns how many bytes were taken.

        Keep the rest and offer it again after ``WindowUpdated``. The bytes are queued
        without a copy: do not change a buffer after handing it over.
        """
        st = self._stream(stream_id)
        if st.local_fin:
            raise LocalProtocolError(f"stream {stream_id}: DATA after FIN", stream_id=stream_id)
        if not st.accepted and self.role == "agent":
            raise LocalProtocolError(f"stream {stream_id}: DATA before OPENED", stream_id=stream_id)
        n = min(len(data), st.send_window)
        if n <= 0:
            return 0
        view = data if isinstance(data, memoryview) else memoryview(data)
        self._out.push_data(st, view[:n] if n < len(view) else view)
        st.send_window -= n
        return n

    def consumed(self, stream_id: int, n: int) -> None:
        """The application passed on ``n`` received bytes: give the peer credit back.

        A no-op for a stream that is already gone, so it is safe in clean-up paths.
        """
        if n < 0:
            raise LocalProtocolError(f"consumed({n}): a negative count")
        st = self._streams.get(stream_id)
        if st is None or n == 0 or self.closed:
            return
        if n > st.recv_buffered:
            # Credit for bytes never received would let the peer overrun our buffers.
            raise LocalProtocolError(
                f"stream {stream_id}: consumed {n} bytes, only {st.recv_buffered} were received",
                stream_id=stream_id,
            )
        st.recv_buffered -= n
        self.memory_committed -= n
        if st.remote_fin:
            return  # the peer sends nothing more: credit would be noise
        st.recv_unacked += n
        if st.recv_unacked < st.credit_at:
            return  # the hot path: the window is recomputed once a quarter is consumed
        st.recv_unacked = 0
        # The stream's window: its fair share of the budget (no more than is left),
        # between window_floor and max_window. Credit tops the stream up to it once a
        # quarter is missing, so a sender holds most of a window and never stalls.
        held = st.recv_window + st.recv_buffered
        target = self.max_window
        committed = self.memory_committed
        budget = self.link_memory
        if committed + target - held > budget or target * len(self._streams) > budget:
            share = min(budget // len(self._streams), budget - committed + held)
            target = min(target, max(share, self.window_floor))
        st.credit_at = max(1, target >> 2)
        credit = target - held
        if credit >= st.credit_at:
            st.recv_window += credit
            self.memory_committed = committed + credit
            self._out.add_control(F.encode_window(stream_id, credit))

    def send_fin(self, stream_id: int) -> None:
        """Half-close: FIN goes out right after the bytes already taken. Idempotent."""
        st = self._stream(stream_id)
        if st.local_fin:
            return
        if not st.accepted and self.role == "agent":
            raise LocalProtocolError(f"stream {stream_id}: FIN before OPENED", stream_id=stream_id)
        st.local_fin = True
        if st.queued:
            st.fin_pending = True
        else:
            self._emit_fin(st)

    def send_reset(self, stream_id: int, code: ResetCode, text: str = "") -> None:
        """Abort the stream; queued DATA is dropped. A no-op for a stream already gone."""
        st = self._streams.get(stream_id)
        if st is None or self.closed:
            return
        self._forget(st, Ended.RESET_SENT)
        self._out.add_control(F.encode_reset(stream_id, code, text))

    def send_control(self, obj: dict[str, Any]) -> None:
        """Queue a CONTROL message; ``{"type": "goaway"}`` also refuses the peer's new OPENs."""
        self._check_open()
        self._out.add_control(F.encode_control(obj))
        if obj["type"] == "goaway":
            self._goaway_sent = True

    def messages_to_send(self, limit: int = BATCH) -> list[bytes]:
        """Everything that may go now, in order: control frames, then DATA round-robin."""
        out, fins = self._out.take(limit)
        for st in fins:
            if st.finished:
                self._forget(st, Ended.FINISHED)
        return out

    # --- receiving ------------------------------------------------------------------------

    def receive_message(self, message: bytes | memoryview, now: float = 0.0) -> list[Event]:
        """One WebSocket message in; never raises for the peer's faults.

        ``DataReceived.data`` is a view into ``message``: pass an immutable ``bytes``.
        """
        if self.closed:
            return []
        self.last_receive = now
        events: list[Event] = []
        try:
            frame = F.parse_frame(message)
            if frame.type is _DATA:  # the hot path first
                self._receive_data(frame, events)
            else:
                self._receive_other(frame, events)
        except StreamProtocolError as exc:
            self._stream_fault(exc, message[0] == _RESET, events)
        except ConnectionProtocolError as exc:
            self._connection_fault(str(exc), events)
        return events

    def _receive_data(self, frame: F.Frame, events: list[Event]) -> None:
        sid = frame.stream_id
        st = self._streams.get(sid)
        if st is None:
            return self._not_live(frame)
        n = len(frame.payload)
        if st.remote_fin:
            raise StreamProtocolError(sid, "DATA after FIN")
        if not st.accepted and self.role == "edge":
            raise StreamProtocolError(sid, "DATA before OPENED")
        if n > st.recv_window:
            raise StreamProtocolError(
                sid, f"window overflow: {n} bytes sent, {st.recv_window} allowed"
            )
        if n:
            st.recv_window -= n
            st.recv_buffered += n
            events.append(DataReceived(sid, frame.payload))
        return None

    def _receive_other(self, frame: F.Frame, events: list[Event]) -> None:
        t, sid = frame.type, frame.stream_id
        if t is _CONTROL:
            return self._receive_control(F.parse_control(frame), events)
        if t is _OPEN:
            return self._receive_open(frame, events)
        if t is _OPENED and self.role != "edge":
            raise ConnectionProtocolError("OPENED sent to the agent: only the agent answers OPEN")
        st = self._streams.get(sid)
        if st is None:
            return self._not_live(frame)
        if t is _WINDOW:
            credit = F.parse_window(frame)
            if st.send_window + credit > F.MAX_WINDOW:
                raise StreamProtocolError(sid, "WINDOW credit overflows 2^31-1")
            st.send_window += credit
            events.append(WindowUpdated(sid))
        elif t is _RESET:
            code, text = F.parse_reset(frame)
            self._forget(st, Ended.RESET_RECEIVED)
            events.append(StreamReset(sid, code, text, remote=True))
        elif t is _OPENED:
            if st.accepted:
                raise StreamProtocolError(sid, "second OPENED")
            st.accepted = True
            self._unanswered.pop(sid, None)
            events.append(StreamAccepted(sid))
        else:  # FIN
            if st.remote_fin:
                raise StreamProtocolError(sid, "second FIN")
            if not st.accepted and self.role == "edge":
                raise StreamProtocolError(sid, "FIN before OPENED")
            st.remote_fin = True
            # Credit the peer can no longer use is no longer memory it can make us hold.
            self.memory_committed -= st.recv_window
            st.recv_window = 0
            events.append(StreamEnded(sid))
            if st.finished:
                self._forget(st, Ended.FINISHED)
        return None

    def _receive_open(self, frame: F.Frame, events: list[Event]) -> None:
        sid = frame.stream_id
        if self.role != "agent":
            raise ConnectionProtocolError("OPEN sent to the edge: only the edge opens streams")
        if sid <= self._highest:
            raise ConnectionProtocolError(
                f"OPEN for stream {sid}: ids must grow (the last was {self._highest})"
            )
        self._highest = sid
        # From here a fault costs this stream only; its early DATA is ignored.
        self._ended.add(sid, Ended.RESET_SENT)
        tunnel_id, addr = F.parse_open(frame)
        if self._goaway_sent:
            self._out.add_control(F.encode_reset(sid, ResetCode.REFUSED, "going away"))
            return
        if len(self._streams) >= self.max_streams:
            raise StreamProtocolError(
                sid, f"too many streams ({self.max_streams}): OPEN refused", code=ResetCode.REFUSED
            )
        if len(self._unanswered) >= self.max_pending_opens:
            raise StreamProtocolError(
                sid,
                f"too many unanswered OPENs ({self.max_pending_opens}): OPEN refused",
                code=ResetCode.REFUSED,
            )
        self._ended.discard(sid)
        self._streams[sid] = Stream(sid, self.initial_window, self.peer_window, self._credit_at)
        self.memory_committed += self.initial_window
        self._unanswered[sid] = float("inf")  # counted, never timed out here
        events.append(StreamOpened(sid, tunnel_id, addr))

    def _receive_control(self, obj: dict[str, Any], events: list[Event]) -> None:
        kind = obj["type"]
        if kind == "hello" and not self._peer_hello:
            self._peer_hello = True
            if obj.get("version") != PROTOCOL_VERSION:
                raise ConnectionProtocolError(
                    f"the peer speaks protocol version {obj.get('version')!r}, "
                    f"this side {PROTOCOL_VERSION}"
                )
            window = obj.get("window", self.peer_window)
            if type(window) is not int or not 1 <= window <= F.MAX_WINDOW:
                raise ConnectionProtocolError(f"hello announces an invalid window {window!r}")
            # Streams opened before the hello assumed our own window: correct them.
            delta = window - self.peer_window
            self.peer_window = window
            for st in self._streams.values():
                st.send_window += delta
        elif kind == "goaway":
            self.goaway_received = True
        events.append(ControlReceived(obj))

    def _not_live(self, frame: F.Frame) -> None:
        """A frame for a stream that is not open: a harmless late frame, or a fault."""
        t, sid = frame.type, frame.stream_id
        if sid > self._highest:
            raise StreamProtocolError(sid, f"{t.name} for unknown stream {sid}")
        fault = self._ended.late_frame_fault(sid, t)
        if fault is not None:
            raise StreamProtocolError(sid, fault)

    def _stream_fault(self, exc: StreamProtocolError, on_reset: bool, events: list[Event]) -> None:
        sid, code, message = exc.stream_id, exc.reset_code, str(exc)
        events.append(ProtocolError(sid, message, code))
        st = self._streams.get(sid)
        if st is not None:
            # A malformed RESET still ends the stream; answering it would risk a loop.
            self._forget(st, Ended.RESET_RECEIVED if on_reset else Ended.RESET_SENT)
            events.append(StreamReset(sid, code, message, remote=False))
        if not on_reset:  # never answer a RESET with a RESET (RFC 9113 §5.4.2)
            self._out.add_control(F.encode_reset(sid, code, message))

    def _connection_fault(self, message: str, events: list[Event]) -> None:
        self.closed = True
        for st in self._streams.values():
            st.live = False
        self._streams.clear()
        self.memory_committed = 0
        self._out.drop_data()
        self._unanswered.clear()
        self._timers.clear()
        self._out.add_control(
            F.encode_control({"type": "error", "code": "protocol", "message": message[:1000]})
        )
        events.append(ProtocolError(None, message))
        events.append(ConnectionTerminated(message))

    # --- time -----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``handle_timer`` is next due, or None."""
        timers = self._timers
        while timers and timers[0][1] not in self._unanswered:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def handle_timer(self, now: float) -> list[Event]:
        """Reset (TIMEOUT) every OPEN still unanswered at ``now``."""
        events: list[Event] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, sid = heapq.heappop(timers)
            st = self._streams.get(sid)
            if sid in self._unanswered and st is not None:
                text = f"no answer to OPEN within {self.open_timeout:g} s"
                self.send_reset(sid, ResetCode.TIMEOUT, text)
                events.append(StreamReset(sid, ResetCode.TIMEOUT, text, remote=False))
        return events

    # --- helpers --------------------------------------------------------------------------

    def _stream(self, stream_id: int) -> Stream:
        self._check_open()
        st = self._streams.get(stream_id)
        if st is None:
            raise LocalProtocolError(f"stream {stream_id} is not open", stream_id=stream_id)
        return st

    def _check_open(self) -> None:
        if self.closed:
            raise LocalProtocolError("the connection is closed")

    def _emit_fin(self, st: Stream) -> None:
        self._out.add_control(F.encode(_FIN, st.id))
        st.fin_sent = True
        if st.finished:
            self._forget(st, Ended.FINISHED)

    def _forget(self, st: Stream, how: Ended) -> None:
        st.live = False
        self.memory_committed -= st.recv_window + st.recv_buffered
        st.drop_queue()
        del self._streams[st.id]
        self._unanswered.pop(st.id, None)
        self._ended.add(st.id, how)
