"""One stream's bookkeeping: its state, both windows and its queue of outgoing bytes.

Outgoing bytes are held as the caller's own buffers (memoryviews, no copy) until
:meth:`Stream.pop_chunk` cuts the next DATA payload from them; the only copy is the
``join`` that builds the message.
"""

from __future__ import annotations

from collections import deque
from enum import Enum

from entryguard.mux.codes import FrameType


class StreamState(Enum):
    """RFC 9113 §5.1 without the idle and reserved states."""

    OPEN = "open"
    HALF_CLOSED_LOCAL = "half-closed (local)"  # this side sent FIN
    HALF_CLOSED_REMOTE = "half-closed (remote)"  # the peer sent FIN
    CLOSED = "closed"


class Ended(Enum):
    """How a stream closed, which decides whether a late frame for it is harmless."""

    RESET_SENT = "reset here"  # the peer may not know yet: ignore whatever it still sends
    RESET_RECEIVED = "reset by the peer"  # the peer sends nothing more
    FINISHED = "finished"  # both FINs: only late WINDOW or RESET may still come


class RecentlyClosed:
    """The last ``size`` closed stream ids and how each closed (oldest dropped first).

    RFC 9113 §5.1 lets an endpoint ignore frames on a stream it reset only for a while;
    this bound is that while, counted in streams rather than seconds.
    """

    __slots__ = ("_ended", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._ended: dict[int, Ended] = {}

    def __len__(self) -> int:
        return len(self._ended)

    def add(self, sid: int, how: Ended) -> None:
        ended = self._ended
        ended[sid] = how
        if len(ended) > self.size:
            del ended[next(iter(ended))]

    def discard(self, sid: int) -> None:
        self._ended.pop(sid, None)

    def late_frame_fault(self, sid: int, ftype: FrameType) -> str | None:
        """None when a frame for this closed stream is a harmless straggler, else the fault."""
        ended = self._ended.get(sid)
        if ended is Ended.RESET_SENT:
            return None  # sent before the peer saw our RESET
        if ftype in (FrameType.WINDOW, FrameType.RESET) and ended is not Ended.RESET_RECEIVED:
            return None  # credit or an abort racing our last frames
        return f"{ftype.name} on a closed stream ({ended.value if ended else 'long ago'})"


class Stream:
    __slots__ = (
        "accepted",
        "credit_at",
        "fin_pending",
        "fin_sent",
        "id",
        "live",
        "local_fin",
        "out",
        "queued",
        "recv_buffered",
        "recv_unacked",
        "recv_window",
        "remote_fin",
        "send_window",
    )

    def __init__(self, stream_id: int, recv_window: int, send_window: int, credit_at: int) -> None:
        self.id = stream_id
        self.live = True  # False once removed from the connection; stale queue entries skip it
        self.accepted = False  # OPENED sent (agent) or received (edge)
        self.send_window = send_window  # bytes the peer lets us send (may dip below 0
        # when its hello announces a smaller window than was assumed)
        self.recv_window = recv_window  # bytes we let the peer send
        self.recv_buffered = 0  # received, not yet consumed by the application
        self.recv_unacked = 0  # consumed since the window was last recomputed
        self.credit_at = credit_at  # consumed bytes that call for a new look at the window
        self.out: deque[memoryview] = deque()  # accepted by send_data, not yet framed
        self.queued = 0  # bytes in ``out``
        self.local_fin = False  # send_fin was called
        self.fin_pending = False  # FIN waits behind ``out``
        self.fin_sent = False
        self.remote_fin = False

    @property
    def state(self) -> StreamState:
        if not self.live or (self.local_fin and self.remote_fin):
            return StreamState.CLOSED
        if self.local_fin:
            return StreamState.HALF_CLOSED_LOCAL
        if self.remote_fin:
            return StreamState.HALF_CLOSED_REMOTE
        return StreamState.OPEN

    @property
    def finished(self) -> bool:
        """Both FINs are on the wire: the stream can be forgotten."""
        return self.fin_sent and self.remote_fin

    def push(self, view: memoryview) -> None:
        self.out.append(view)
        self.queued += len(view)

    def pop_chunk(self, size: int) -> list[memoryview]:
        """Up to ``size`` queued bytes, oldest first, coalescing small writes into one frame."""
        out = self.out
        pieces: list[memoryview] = []
        room = size
        while out and room > 0:
            view = out[0]
            if len(view) <= room:
                out.popleft()
                pieces.append(view)
                room -= len(view)
            else:
                pieces.append(view[:room])
                out[0] = view[room:]
                room = 0
        self.queued -= size - room
        return pieces

    def drop_queue(self) -> None:
        self.out.clear()
        self.queued = 0
        self.fin_pending = False
