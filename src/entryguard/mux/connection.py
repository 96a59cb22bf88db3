"""The mux state machine: streams, credit flow control, priorities, timers. No I/O.

Feed each WebSocket message to :meth:`MuxConnection.receive_message` and act on the
events; send what :meth:`messages_to_send` returns. Time is passed in (``now``), so
open timeouts are tested without sleeping.

Ordering rules:
- Control frames (OPEN, OPENED, WINDOW, RESET, CONTROL) leave before any queued DATA,
  so a revocation or a credit update is never stuck behind megabytes of bulk data.
- FIN rides on its stream's own queue, after that stream's last DATA byte.
- DATA is taken round-robin across streams, one chunk each, in bounded batches.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any, Literal

from entryguard.mux import frames as F
from entryguard.mux.errors import FramingError, LocalProtocolError, StreamProtocolError
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
from entryguard.mux.frames import FrameType, ResetCode

DEFAULT_WINDOW = 1024 * 1024
CHUNK = 256 * 1024
BATCH = 512 * 1024
_FIN = object()  # queue marker: send FIN here, after the bytes before it


class _Stream:
    __slots__ = (
        "accepted",
        "id",
        "local_fin",
        "out",
        "recv_unacked",
        "recv_window",
        "remote_fin",
        "send_window",
    )

    def __init__(self, stream_id: int, window: int, peer_window: int) -> None:
        self.id = stream_id
        self.send_window = peer_window  # bytes we may still send
        self.recv_window = window  # bytes the peer may still send us
        self.recv_unacked = 0  # consumed by the application, credit not yet returned
        self.out: deque[Any] = deque()  # memoryview chunks (within window) and _FIN
        self.local_fin = False
        self.remote_fin = False
        self.accepted = False


class MuxConnection:
    def __init__(
        self,
        role: Literal["edge", "agent"],
        *,
        initial_window: int = DEFAULT_WINDOW,
        max_streams: int = 16384,
        max_pending_opens: int = 1024,
        open_timeout: float = 15.0,
    ) -> None:
        if role not in ("edge", "agent"):
            raise ValueError("role must be 'edge' or 'agent'")
        self.role = role
        self.initial_window = initial_window
        self.peer_window = initial_window
        self.max_streams = max_streams
        self.max_pending_opens = max_pending_opens
        self.open_timeout = open_timeout
        self.streams: dict[int, _Stream] = {}
        self.closed = False
        self._last_id = 0  # highest stream id seen or allocated: ids are never reused
        self._control: list[bytes] = []
        self._ready: deque[_Stream] = deque()  # streams with queued DATA/FIN
        self._pending_opens: dict[int, float] = {}  # stream id -> deadline (edge side)
        self._timers: list[tuple[float, int]] = []

    # --- sending (the application's calls) --------------------------------------------

    def open_stream(self, tunnel_id: int, client_addr: str, now: float) -> int:
        if self.role != "edge":
            raise LocalProtocolError("only the edge opens streams")
        self._check_open()
        if len(self.streams) >= self.max_streams:
            raise LocalProtocolError(f"too many streams ({self.max_streams})")
        if len(self._pending_opens) >= self.max_pending_opens:
            raise LocalProtocolError(
                f"too many unanswered OPENs ({self.max_pending_opens}): the agent is not keeping up"
            )
        if self._last_id >= 0xFFFFFFFF:
            raise LocalProtocolError("stream ids exhausted: reconnect")
        self._last_id += 1
        sid = self._last_id
        self.streams[sid] = _Stream(sid, self.initial_window, self.peer_window)
        self._control.append(F.encode_open(sid, tunnel_id, client_addr))
        deadline = now + self.open_timeout
        self._pending_opens[sid] = deadline
        heapq.heappush(self._timers, (deadline, sid))
        return sid

    def send_opened(self, stream_id: int) -> None:
        st = self._stream(stream_id)
        if self.role != "agent" or st.accepted:
            raise LocalProtocolError(f"stream {stream_id}: OPENED is the agent's answer, sent once")
        st.accepted = True
        self._control.append(F.encode(FrameType.OPENED, stream_id))

    def send_data(self, stream_id: int, data: bytes | memoryview) -> int:
        """Queue what the peer's window allows; returns how many bytes were taken."""
        st = self._stream(stream_id)
        if st.local_fin:
            raise LocalProtocolError(f"stream {stream_id}: DATA after FIN")
        n = min(len(data), st.send_window)
        if n <= 0:
            return 0
        view = data if isinstance(data, memoryview) else memoryview(data)
        if not st.out:
            self._ready.append(st)
        for i in range(0, n, CHUNK):
            st.out.append(view[i : min(i + CHUNK, n)])
        st.send_window -= n
        return n

    def consumed(self, stream_id: int, n: int) -> None:
        """The application passed ``n`` received bytes on: return credit, early and in bulk."""
        st = self.streams.get(stream_id)
        if st is None:
            return  # stream already gone: nothing to credit
        st.recv_unacked += n
        # Return credit once a quarter of the window is consumed, so the sender
        # always has most of a window in flight and never stalls on it.
        if st.recv_unacked >= self.initial_window // 4:
            credit, st.recv_unacked = st.recv_unacked, 0
            st.recv_window += credit
            self._control.append(F.encode_window(stream_id, credit))

    def send_fin(self, stream_id: int) -> None:
        st = self._stream(stream_id)
        if st.local_fin:
            return
        st.local_fin = True
        if not st.out:
            self._ready.append(st)
        st.out.append(_FIN)

    def send_reset(self, stream_id: int, code: ResetCode, text: str = "") -> None:
        st = self.streams.pop(stream_id, None)
        if st is None:
            return
        st.out.clear()
        self._pending_opens.pop(stream_id, None)
        self._control.append(F.encode_reset(stream_id, code, text))

    def send_control(self, obj: dict[str, Any]) -> None:
        self._control.append(F.encode_control(obj))

    def messages_to_send(self, limit: int = BATCH) -> list[bytes]:
        """Control frames first, then DATA round-robin; at most ~``limit`` bytes of DATA."""
        out = self._control
        self._control = []
        budget = limit
        ready = self._ready
        while ready and budget > 0:
            st = ready.popleft()
            if self.streams.get(st.id) is not st or not st.out:
                continue  # reset meanwhile
            item = st.out.popleft()
            if item is _FIN:
                out.append(F.encode(FrameType.FIN, st.id))
                self._maybe_close(st)
            else:
                out.append(F.encode(FrameType.DATA, st.id, item))
                budget -= len(item)
            if st.out:
                ready.append(st)
        return out

    # --- receiving -----------------------------------------------------------------------

    def receive_message(self, message: bytes | memoryview, now: float = 0.0) -> list[Event]:
        if self.closed:
            return []
        events: list[Event] = []
        try:
            frame = F.parse_frame(message)
            self._handle(frame, events)
        except StreamProtocolError as exc:
            self._stream_fault(exc.stream_id, str(exc), events)
        except FramingError as exc:
            self.closed = True
            self._control.append(F.encode_control({"type": "error", "message": str(exc)}))
            events.append(ProtocolError(None, str(exc)))
            events.append(ConnectionTerminated(str(exc)))
        return events

    def _handle(self, frame: F.Frame, events: list[Event]) -> None:
        t, sid = frame.type, frame.stream_id
        if t is FrameType.DATA:
            st = self.streams.get(sid)
            if st is None:
                return self._unknown(sid, "DATA", events)
            n = len(frame.payload)
            if st.remote_fin:
                raise StreamProtocolError(sid, "DATA after FIN")
            if self.role == "edge" and not st.accepted:
                raise StreamProtocolError(sid, "DATA before OPENED")
            if n > st.recv_window:
                raise StreamProtocolError(
                    sid, f"window overflow: {n} bytes sent, {st.recv_window} allowed"
                )
            st.recv_window -= n
            events.append(DataReceived(sid, frame.payload))
        elif t is FrameType.WINDOW:
            st = self.streams.get(sid)
            if st is None:
                return self._unknown(sid, "WINDOW", events)
            credit = F.parse_window(frame)
            if st.send_window + credit > F.MAX_WINDOW:
                raise StreamProtocolError(sid, "WINDOW credit overflows 2^31-1")
            st.send_window += credit
            events.append(WindowUpdated(sid))
        elif t is FrameType.OPEN:
            self._receive_open(frame, events)
        elif t is FrameType.OPENED:
            F.expect_empty(frame)
            st = self.streams.get(sid)
            if st is None:
                return self._unknown(sid, "OPENED", events)
            if self.role != "edge" or st.accepted:
                raise StreamProtocolError(sid, "unexpected OPENED")
            st.accepted = True
            self._pending_opens.pop(sid, None)
            events.append(StreamAccepted(sid))
        elif t is FrameType.FIN:
            F.expect_empty(frame)
            st = self.streams.get(sid)
            if st is None:
                return self._unknown(sid, "FIN", events)
            if st.remote_fin:
                raise StreamProtocolError(sid, "second FIN")
            st.remote_fin = True
            events.append(StreamEnded(sid))
            self._maybe_close(st)
        elif t is FrameType.RESET:
            code, text = F.parse_reset(frame)
            st = self.streams.pop(sid, None)
            self._pending_opens.pop(sid, None)
            if st is not None:
                events.append(StreamReset(sid, code, text, remote=True))
        elif t is FrameType.CONTROL:
            events.append(ControlReceived(F.parse_control(frame)))
        return None

    def _receive_open(self, frame: F.Frame, events: list[Event]) -> None:
        sid = frame.stream_id
        if self.role != "agent":
            raise FramingError("OPEN sent to the edge: only the edge opens streams")
        if sid <= self._last_id:
            raise FramingError(f"OPEN reuses stream id {sid} (last was {self._last_id})")
        self._last_id = sid
        tunnel_id, addr = F.parse_open(frame)
        unanswered = sum(1 for s in self.streams.values() if not s.accepted)
        if len(self.streams) >= self.max_streams or unanswered >= self.max_pending_opens:
            self._control.append(F.encode_reset(sid, ResetCode.REFUSED, "too many streams"))
            events.append(ProtocolError(sid, "stream limit reached: OPEN refused"))
            return
        self.streams[sid] = _Stream(sid, self.initial_window, self.peer_window)
        events.append(StreamOpened(sid, tunnel_id, addr))

    def _unknown(self, sid: int, what: str, events: list[Event]) -> None:
        if sid <= self._last_id:
            return  # late frame on a stream we already closed or reset: harmless
        self._control.append(F.encode_reset(sid, ResetCode.PROTOCOL, f"unknown stream {sid}"))
        events.append(ProtocolError(sid, f"{what} for unknown stream {sid}"))

    def _stream_fault(self, sid: int, message: str, events: list[Event]) -> None:
        events.append(ProtocolError(sid, message))
        if sid in self.streams:
            self.send_reset(sid, ResetCode.PROTOCOL, message)
            events.append(StreamReset(sid, int(ResetCode.PROTOCOL), message, remote=False))

    # --- time ------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        timers = self._timers
        while timers and timers[0][1] not in self._pending_opens:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def handle_timer(self, now: float) -> list[Event]:
        events: list[Event] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, sid = heapq.heappop(timers)
            if self._pending_opens.pop(sid, None) is not None and sid in self.streams:
                msg = f"no answer to OPEN within {self.open_timeout:g} s"
                self.send_reset(sid, ResetCode.TIMEOUT, msg)
                events.append(StreamReset(sid, int(ResetCode.TIMEOUT), msg, remote=False))
        return events

    # --- helpers ---------------------------------------------------------------------------

    def _stream(self, stream_id: int) -> _Stream:
        self._check_open()
        st = self.streams.get(stream_id)
        if st is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        return st

    def _check_open(self) -> None:
        if self.closed:
            raise LocalProtocolError("the connection is closed")

    def _maybe_close(self, st: _Stream) -> None:
        if st.remote_fin and st.local_fin and not st.out and self.streams.get(st.id) is st:
            del self.streams[st.id]
