"""Property-based tests of the mux: random streams, chunk sizes, interleavings, garbage."""

from __future__ import annotations

from collections import deque

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from entryguard.mux import (
    ConnectionTerminated,
    DataReceived,
    MuxConnection,
    ProtocolError,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)
from entryguard.mux import frames as F

WINDOW = 4096


class MuxMachine(RuleBasedStateMachine):
    """Both directions of many streams; wires deliver one message at a time in random order
    between directions (each direction stays FIFO, as on one WebSocket)."""

    def __init__(self) -> None:
        super().__init__()
        self.edge = MuxConnection("edge", initial_window=WINDOW)
        self.agent = MuxConnection("agent", initial_window=WINDOW)
        self.to_agent: deque[bytes] = deque()
        self.to_edge: deque[bytes] = deque()
        self.sids: list[int] = []
        # per (side, sid): bytes the app handed to the mux, bytes still waiting for window,
        # bytes received, and whether FIN was requested / seen.
        self.sent: dict[tuple[str, int], bytearray] = {}
        self.waiting: dict[tuple[str, int], bytearray] = {}
        self.got: dict[tuple[str, int], bytearray] = {}
        self.fin_wanted: set[tuple[str, int]] = set()
        self.fin_seen: set[tuple[str, int]] = set()
        self.errors: list[object] = []
        self.counter = 0
        self.inflight: dict[tuple[str, int], int] = {}

    def _conn(self, side: str) -> MuxConnection:
        return self.edge if side == "edge" else self.agent

    def _handle(self, side: str, events: list[object]) -> None:
        conn = self._conn(side)
        other = "agent" if side == "edge" else "edge"
        for ev in events:
            if isinstance(ev, (ProtocolError, ConnectionTerminated, StreamReset)):
                self.errors.append(ev)
            elif isinstance(ev, StreamOpened):
                conn.send_opened(ev.stream_id)
            elif isinstance(ev, DataReceived):
                key = (other, ev.stream_id)  # bytes sent by the other side
                assert key not in self.fin_seen, "DATA after FIN"
                self.got.setdefault(key, bytearray()).extend(ev.data)
                conn.consumed(ev.stream_id, len(ev.data))
            elif isinstance(ev, StreamEnded):
                self.fin_seen.add((other, ev.stream_id))
            elif isinstance(ev, WindowUpdated):
                self._flush(side, ev.stream_id)
            elif isinstance(ev, StreamAccepted):
                pass

    def _flush(self, side: str, sid: int) -> None:
        key = (side, sid)
        buf = self.waiting.get(key)
        conn = self._conn(side)
        if buf:
            n = conn.send_data(sid, bytes(buf))
            del buf[:n]
        if (
            key in self.fin_wanted
            and not buf
            and sid in conn.streams
            and not conn.streams[sid].local_fin
        ):
            conn.send_fin(sid)

    def _collect(self) -> None:
        for side, q in (("edge", self.to_agent), ("agent", self.to_edge)):
            other = "agent" if side == "edge" else "edge"
            for m in self._conn(side).messages_to_send(limit=3000):
                # Independent bookkeeping of bytes in flight: DATA adds, the receiver's
                # WINDOW credit subtracts; it must never exceed the window.
                f = F.parse_frame(m)
                if f.type == F.FrameType.DATA:
                    key = (side, f.stream_id)
                    self.inflight[key] = self.inflight.get(key, 0) + len(f.payload)
                    assert self.inflight[key] <= WINDOW, f"window exceeded on {key}"
                elif f.type == F.FrameType.WINDOW:
                    key = (other, f.stream_id)
                    self.inflight[key] = self.inflight.get(key, 0) - F.parse_window(f)
                q.append(m)

    @rule()
    def open_stream(self) -> None:
        if len(self.sids) < 6:
            sid = self.edge.open_stream(1, "127.0.0.2:1000", 0.0)
            self.sids.append(sid)
            self._collect()

    @precondition(lambda self: bool(self.sids))
    @rule(data=st.data(), side=st.sampled_from(["edge", "agent"]), size=st.integers(1, 9000))
    def send(self, data: st.DataObject, side: str, size: int) -> None:
        sid = data.draw(st.sampled_from(self.sids))
        key = (side, sid)
        conn = self._conn(side)
        if key in self.fin_wanted or sid not in conn.streams:
            return
        self.counter += 1
        payload = bytes([(self.counter + i) % 251 for i in range(size)])
        self.sent.setdefault(key, bytearray()).extend(payload)
        self.waiting.setdefault(key, bytearray()).extend(payload)
        self._flush(side, sid)
        self._collect()

    @precondition(lambda self: bool(self.sids))
    @rule(data=st.data(), side=st.sampled_from(["edge", "agent"]))
    def fin(self, data: st.DataObject, side: str) -> None:
        sid = data.draw(st.sampled_from(self.sids))
        if sid in self._conn(side).streams:
            self.fin_wanted.add((side, sid))
            self._flush(side, sid)
            self._collect()

    @rule(to_agent=st.booleans(), count=st.integers(1, 8))
    def deliver(self, to_agent: bool, count: int) -> None:
        q = self.to_agent if to_agent else self.to_edge
        side = "agent" if to_agent else "edge"
        for _ in range(min(count, len(q))):
            self._handle(side, self._conn(side).receive_message(q.popleft(), 0.0))
        self._collect()

    @invariant()
    def no_faults_and_prefixes_match(self) -> None:
        assert not self.errors, self.errors
        for key, got in self.got.items():
            assert self.sent[key].startswith(got), "bytes lost, repeated or reordered"

    def teardown(self) -> None:
        # Drain everything: every byte arrives exactly once, FIN after the last byte.
        for _ in range(10_000):
            if not self.to_agent and not self.to_edge:
                self._collect()
                if not self.to_agent and not self.to_edge:
                    break
            while self.to_agent:
                self._handle("agent", self.agent.receive_message(self.to_agent.popleft(), 0.0))
            while self.to_edge:
                self._handle("edge", self.edge.receive_message(self.to_edge.popleft(), 0.0))
        assert not self.errors, self.errors
        for key, sent in self.sent.items():
            assert bytes(self.got.get(key, b"")) == bytes(sent), key
        for key in self.fin_wanted:
            assert key in self.fin_seen, f"FIN lost for {key}"


TestMuxMachine = MuxMachine.TestCase
TestMuxMachine.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_never_raises(message: bytes) -> None:
    for role in ("edge", "agent"):
        conn = MuxConnection(role)  # type: ignore[arg-type]
        events = conn.receive_message(message, 0.0)
        for ev in events:
            assert (
                isinstance(
                    ev,
                    (
                        ProtocolError,
                        ConnectionTerminated,
                        StreamOpened,
                        StreamReset,
                        DataReceived,
                        WindowUpdated,
                        StreamEnded,
                        StreamAccepted,
                    ),
                )
                or type(ev).__name__ == "ControlReceived"
            )
        conn.messages_to_send()


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(F.FrameType)), st.integers(0, 2**32 - 1), st.binary(max_size=32))
def test_any_frame_on_a_live_connection_affects_at_most_its_stream(
    ftype: F.FrameType, sid: int, payload: bytes
) -> None:
    edge = MuxConnection("edge")
    agent = MuxConnection("agent")
    s1 = edge.open_stream(1, "a", 0.0)
    for m in edge.messages_to_send():
        agent.receive_message(m, 0.0)
    events = agent.receive_message(F.HEADER.pack(ftype, 0, sid) + payload, 0.0)
    if not any(isinstance(e, ConnectionTerminated) for e in events):
        touched = {getattr(e, "stream_id", None) for e in events} - {None}
        assert touched <= {sid}
        if sid != s1:
            assert s1 in agent.streams
