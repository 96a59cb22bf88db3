"""What leaves the connection, in the order the protocol promises.

- Control frames (WINDOW, RESET, OPEN, OPENED, CONTROL, and a FIN with no DATA ahead
  of it) leave first, in the order queued, so a revocation or a credit update never
  waits behind bulk data.
- DATA is taken round-robin, one frame of at most ``CHUNK`` bytes per stream per turn,
  and about ``limit`` bytes per call, so one bulk stream cannot starve the others and
  a control frame queued meanwhile waits at most one batch.
- A FIN queued behind DATA follows its stream's last DATA frame at once.

Queued bytes are the application's own buffers (memoryviews); the only copy is the
``join`` that builds each message.
"""

from __future__ import annotations

from collections import deque

from entryguard.mux.codes import FrameType
from entryguard.mux.frames import HEADER
from entryguard.mux.stream import Stream

# Large frames because the WebSocket's per-message cost dominates (DESIGN.md, data-plane
# speed); still bounded, so other streams and control frames get their turn.
CHUNK = 256 * 1024  # largest DATA payload this side sends (= frames.MAX_DATA)
BATCH = 512 * 1024  # DATA bytes per take()


class Outbox:
    __slots__ = ("_ready", "control", "control_bytes")

    def __init__(self) -> None:
        self.control: list[bytes] = []  # encoded frames that overtake DATA
        # Their size: a peer can make this side queue control frames (RESETs for its
        # OPENs) while not reading, so the runtime watches it (docs/protocol.md).
        self.control_bytes = 0
        self._ready: deque[Stream] = deque()  # streams with queued DATA, each once

    def add_control(self, message: bytes) -> None:
        self.control.append(message)
        self.control_bytes += len(message)

    def push_data(self, st: Stream, view: memoryview) -> None:
        if not st.queued:
            self._ready.append(st)
        st.push(view)

    def drop_data(self) -> None:
        self._ready.clear()

    def take(self, limit: int = BATCH) -> tuple[list[bytes], list[Stream]]:
        """The messages to send now, and the streams whose queued FIN went out with them."""
        out = self.control
        self.control = []
        self.control_bytes = 0
        fins: list[Stream] = []
        budget = limit
        ready = self._ready
        pack = HEADER.pack
        while ready and budget > 0:
            st = ready.popleft()
            if not st.live or not st.queued:
                continue  # reset since it was queued
            before = st.queued
            pieces = st.pop_chunk(CHUNK)
            out.append(b"".join([pack(FrameType.DATA, 0, st.id), *pieces]))
            budget -= before - st.queued
            if st.queued:
                ready.append(st)
            elif st.fin_pending:
                st.fin_pending = False
                st.fin_sent = True
                out.append(pack(FrameType.FIN, 0, st.id))
                fins.append(st)
        return out, fins
