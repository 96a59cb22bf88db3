"""Property-based tests of the mux: random streams, chunk sizes, interleavings, garbage.

The state machine plays both applications: the edge opens streams and may send early
data at once; the agent accepts them later; either side sends random-sized chunks,
consumes what it received at random moments, half-closes or resets. Messages travel
FIFO per direction (one WebSocket) but the two directions and the send batches
interleave at random. Checked throughout: no window is ever exceeded, bytes arrive in
order without loss or repetition, FIN only after the last byte, and no protocol fault.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from entryguard.mux import (
    ConnectionTerminated,
    ControlReceived,
    DataReceived,
    Event,
    FrameType,
    MuxConnection,
    MuxError,
    ProtocolError,
    ResetCode,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamReset,
    StreamState,
    WindowUpdated,
)
from entryguard.mux import frames as F

EDGE_WINDOW = 4096
Key = tuple[str, int]  # (sending side, stream id)


def other(side: str) -> str:
    return "agent" if side == "edge" else "edge"


class MuxMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.conns: dict[str, MuxConnection] = {}
        self.wire: dict[str, deque[bytes]] = {"edge": deque(), "agent": deque()}  # to side
        self.window: dict[str, int] = {}  # what each side grants
        self.sids: list[int] = []
        self.awaiting_accept: list[int] = []  # StreamOpened seen by the agent, not answered
        self.accepted: set[int] = set()  # the agent sent OPENED
        self.reset: set[int] = set()
        self.sent: dict[Key, bytearray] = {}  # what the application asked to send
        self.waiting: dict[Key, bytearray] = {}  # not yet taken by send_data
        self.got: dict[Key, bytearray] = {}  # what the other side received
        self.unconsumed: dict[Key, int] = {}  # received, not yet consumed (by the receiver)
        self.inflight: dict[Key, int] = {}  # sent as DATA minus credit returned
        self.fin_wanted: set[Key] = set()
        self.fin_done: set[Key] = set()
        self.fin_seen: set[Key] = set()
        self.draining = False
        self.counter = 0

    @initialize(agent_window=st.sampled_from([EDGE_WINDOW, 2 * EDGE_WINDOW, 5000]))
    def connect(self, agent_window: int) -> None:
        # An agent must grant at least what the edge assumes before the hello arrives.
        self.window = {"edge": EDGE_WINDOW, "agent": agent_window}
        for side in ("edge", "agent"):
            role: Literal["edge", "agent"] = "edge" if side == "edge" else "agent"
            conn = MuxConnection(role, initial_window=self.window[side])
            conn.send_control({"type": "hello", "version": 1, "window": self.window[side]})
            self.conns[side] = conn

    # --- the two applications ------------------------------------------------------------

    def _handle(self, side: str, events: list[Event]) -> None:
        conn = self.conns[side]
        for ev in events:
            assert not isinstance(ev, (ProtocolError, ConnectionTerminated)), ev
            if isinstance(ev, StreamReset):
                assert ev.remote and ev.code == ResetCode.REVOKED, ev
                self._mark_reset(ev.stream_id)
            elif isinstance(ev, StreamOpened):
                self.awaiting_accept.append(ev.stream_id)
                if self.draining:
                    self._accept(ev.stream_id)
            elif isinstance(ev, DataReceived):
                key = (other(side), ev.stream_id)
                assert key not in self.fin_seen, "DATA after FIN"
                self.got.setdefault(key, bytearray()).extend(ev.data)
                self.unconsumed[key] = self.unconsumed.get(key, 0) + len(ev.data)
                if self.draining:
                    self._consume(side, ev.stream_id, len(ev.data))
            elif isinstance(ev, StreamEnded):
                key = (other(side), ev.stream_id)
                assert self.got.get(key, b"") == self.sent.get(key, b""), "FIN before last byte"
                self.fin_seen.add(key)
            elif isinstance(ev, WindowUpdated):
                self._flush(side, ev.stream_id)
            else:
                assert isinstance(ev, (StreamAccepted, ControlReceived)), ev
        assert not conn.closed

    def _mark_reset(self, sid: int) -> None:
        self.reset.add(sid)
        if sid in self.awaiting_accept:
            self.awaiting_accept.remove(sid)

    def _can_send(self, side: str, sid: int) -> bool:
        if sid in self.reset or (side, sid) in self.fin_done:
            return False
        return side == "edge" or sid in self.accepted

    def _flush(self, side: str, sid: int) -> None:
        if not self._can_send(side, sid):
            return
        key = (side, sid)
        buf = self.waiting.get(key)
        conn = self.conns[side]
        if buf:
            n = conn.send_data(sid, bytes(buf))
            assert 0 <= n <= len(buf)
            del buf[:n]
        if key in self.fin_wanted and not buf:
            conn.send_fin(sid)
            self.fin_done.add(key)

    def _consume(self, side: str, sid: int, n: int) -> None:
        key = (other(side), sid)
        self.unconsumed[key] -= n
        self.conns[side].consumed(sid, n)

    def _collect(self, side: str, limit: int) -> None:
        for m in self.conns[side].messages_to_send(limit=limit):
            f = F.parse_frame(m)
            # Independent bookkeeping: DATA adds, the receiver's WINDOW credit subtracts.
            if f.type is FrameType.DATA:
                key = (side, f.stream_id)
                self.inflight[key] = self.inflight.get(key, 0) + len(f.payload)
                assert self.inflight[key] <= self.window[other(side)], f"window exceeded {key}"
            elif f.type is FrameType.WINDOW:
                key = (other(side), f.stream_id)
                self.inflight[key] -= F.parse_window(f)
            self.wire[other(side)].append(m)

    def _deliver(self, to: str, count: int) -> None:
        q = self.wire[to]
        for _ in range(min(count, len(q))):
            self._handle(to, self.conns[to].receive_message(q.popleft(), 0.0))

    # --- rules ---------------------------------------------------------------------------

    @precondition(lambda self: len(self.sids) < 6)
    @rule(early=st.integers(0, 6000))
    def open_stream(self, early: int) -> None:
        sid = self.conns["edge"].open_stream(1, "127.0.0.2:1000", 0.0)
        self.sids.append(sid)
        if early:
            self._send("edge", sid, early)

    @precondition(lambda self: bool(self.awaiting_accept))
    @rule(data=st.data())
    def accept(self, data: st.DataObject) -> None:
        self._accept(data.draw(st.sampled_from(self.awaiting_accept)))

    def _accept(self, sid: int) -> None:
        self.awaiting_accept.remove(sid)
        self.conns["agent"].send_opened(sid)
        self.accepted.add(sid)
        self._flush("agent", sid)

    def _send(self, side: str, sid: int, size: int) -> None:
        key = (side, sid)
        if not self._can_send(side, sid) or key in self.fin_wanted:
            return
        self.counter += 1
        payload = (self.counter.to_bytes(3, "big") * (size // 3 + 1))[:size]
        self.sent.setdefault(key, bytearray()).extend(payload)
        self.waiting.setdefault(key, bytearray()).extend(payload)
        if len(self.waiting[key]) == size:  # nothing older is waiting for credit
            self._flush(side, sid)

    @precondition(lambda self: bool(self.sids))
    @rule(data=st.data(), side=st.sampled_from(["edge", "agent"]), size=st.integers(1, 9000))
    def send(self, data: st.DataObject, side: str, size: int) -> None:
        self._send(side, data.draw(st.sampled_from(self.sids)), size)

    @precondition(lambda self: bool(self.sids))
    @rule(data=st.data(), side=st.sampled_from(["edge", "agent"]), part=st.floats(0, 1))
    def consume(self, data: st.DataObject, side: str, part: float) -> None:
        sid = data.draw(st.sampled_from(self.sids))
        have = self.unconsumed.get((other(side), sid), 0)
        if have and sid not in self.reset:
            self._consume(side, sid, max(1, int(have * part)))

    @precondition(lambda self: bool(self.sids))
    @rule(data=st.data(), side=st.sampled_from(["edge", "agent"]))
    def fin(self, data: st.DataObject, side: str) -> None:
        sid = data.draw(st.sampled_from(self.sids))
        self.fin_wanted.add((side, sid))
        self._flush(side, sid)

    @precondition(lambda self: bool(self.sids))
    @rule(data=st.data(), side=st.sampled_from(["edge", "agent"]))
    def reset_stream(self, data: st.DataObject, side: str) -> None:
        sid = data.draw(st.sampled_from(self.sids))
        if data.draw(st.integers(0, 3)) == 0 and sid not in self.reset:  # rare
            conn = self.conns[side]
            live = conn.stream_state(sid) is not StreamState.CLOSED
            conn.send_reset(sid, ResetCode.REVOKED, "revoked")
            if live:
                self._mark_reset(sid)

    @rule(side=st.sampled_from(["edge", "agent"]), limit=st.integers(1, 20_000))
    def collect(self, side: str, limit: int) -> None:
        self._collect(side, limit)

    @rule(to=st.sampled_from(["edge", "agent"]), count=st.integers(1, 8))
    def deliver(self, to: str, count: int) -> None:
        self._deliver(to, count)

    @invariant()
    def bytes_arrive_in_order_without_loss_or_repetition(self) -> None:
        for key, got in self.got.items():
            assert self.sent[key].startswith(got), f"bytes lost, repeated or reordered on {key}"

    def teardown(self) -> None:
        if not self.conns:
            return
        # Consume everything and drain: every byte of a stream not reset arrives exactly once.
        self.draining = True
        for key, n in list(self.unconsumed.items()):
            if n and key[1] not in self.reset:
                self._consume(other(key[0]), key[1], n)
        for sid in list(self.awaiting_accept):
            self._accept(sid)
        for _ in range(10_000):
            for side in ("edge", "agent"):
                self._collect(side, 1 << 30)
            if not self.wire["edge"] and not self.wire["agent"]:
                break
            for to in ("edge", "agent"):
                self._deliver(to, len(self.wire[to]))
        for key, sent in self.sent.items():
            if key[1] not in self.reset:
                assert bytes(self.got.get(key, b"")) == bytes(sent), key
        for key in self.fin_wanted:
            if key[1] not in self.reset:
                assert key in self.fin_seen, f"FIN lost for {key}"
        for conn in self.conns.values():
            assert not conn.closed


TestMuxMachine = MuxMachine.TestCase
TestMuxMachine.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- fuzzing ----------------------------------------------------------------------------------


def live_pair() -> tuple[MuxConnection, MuxConnection, list[int]]:
    """An edge and an agent with two accepted streams carrying a little data."""
    edge, agent = MuxConnection("edge"), MuxConnection("agent")
    sids = [edge.open_stream(1, "10.0.0.1:1", 0.0) for _ in range(2)]
    for m in edge.messages_to_send():
        agent.receive_message(m, 0.0)
    for sid in sids:
        agent.send_opened(sid)
        agent.send_data(sid, b"banner")
        edge.send_data(sid, b"hello")
    for m in agent.messages_to_send():
        edge.receive_message(m, 0.0)
    for m in edge.messages_to_send():
        agent.receive_message(m, 0.0)
    return edge, agent, sids


def check_clean(conn: MuxConnection, events: list[Event]) -> None:
    """A connection fault closes cleanly: events say so and an error frame is queued."""
    terminated = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert bool(terminated) == conn.closed
    out = conn.messages_to_send()
    if terminated:
        assert events[-1] is terminated[0] and conn.stream_count == 0
        assert F.parse_control(F.parse_frame(out[-1]))["type"] == "error"
        assert conn.receive_message(b"\x05\x00\x00\x00\x00\x01", 0.0) == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_never_raises(message: bytes) -> None:
    for conn in (MuxConnection("edge"), MuxConnection("agent"), *live_pair()[:2]):
        check_clean(conn, conn.receive_message(message, 0.0))


frame_types = st.one_of(st.sampled_from(list(FrameType)), st.integers(0, 255))
stream_ids = st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1))
payloads = st.one_of(
    st.binary(max_size=40),
    st.integers(0, 2**32 - 1).map(lambda n: n.to_bytes(4, "big")),
    st.integers(0, F.MAX_DATA + 10).map(lambda n: b"x" * n),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["edge", "agent"]), frame_types, stream_ids, payloads)
def test_any_frame_affects_at_most_its_stream_or_closes_cleanly(
    side: str, ftype: int, sid: int, payload: bytes
) -> None:
    edge, agent, sids = live_pair()
    conn = edge if side == "edge" else agent
    events = conn.receive_message(F.HEADER.pack(ftype, 0, sid) + payload, 0.0)
    check_clean(conn, events)
    if not conn.closed:
        touched = {getattr(e, "stream_id", None) for e in events} - {None}
        assert touched <= {sid}
        for s in sids:
            if s != sid:
                assert conn.stream_state(s) is StreamState.OPEN
                assert conn.send_data(s, b"still works") == 11


mutations = st.lists(
    st.tuples(
        st.sampled_from(["truncate", "flip", "drop", "duplicate", "insert", "extend"]),
        st.integers(0, 10_000),
        st.binary(min_size=1, max_size=12),
    ),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(mutations, st.booleans())
def test_mutated_conversations_only_raise_nothing(ops: list[Any], to_agent: bool) -> None:
    """A real exchange, cut and corrupted: the receiver never raises, whatever arrives."""
    edge = MuxConnection("edge")
    agent = MuxConnection("agent")
    sid = edge.open_stream(3, "192.0.2.1:9", 0.0)
    edge.send_data(sid, bytes(range(200)) * 20)
    edge.send_fin(sid)
    edge.send_control({"type": "targets_changed"})
    wire = edge.messages_to_send()
    for m in wire:
        agent.receive_message(m, 0.0)
    agent.send_opened(sid)
    agent.consumed(sid, 4000)
    agent.send_data(sid, b"reply" * 100)
    agent.send_reset(sid + 0, ResetCode.INTERNAL, "bye")
    if not to_agent:
        wire = agent.messages_to_send()
    messages = [bytearray(m) for m in wire]
    for op, at, blob in ops:
        if not messages:
            break
        i = at % len(messages)
        m = messages[i]
        if op == "truncate":
            del m[at % (len(m) + 1) :]
        elif op == "flip" and m:
            m[at % len(m)] ^= blob[0] or 1
        elif op == "drop":
            del messages[i]
        elif op == "duplicate":
            messages.insert(i, bytearray(m))
        elif op == "insert":
            messages.insert(i, bytearray(blob))
        elif op == "extend":
            m.extend(blob)
    receiver = MuxConnection("agent" if to_agent else "edge")
    if not to_agent:
        receiver.open_stream(3, "192.0.2.1:9", 0.0)
    for message in messages:
        was_closed = receiver.closed
        try:
            events = receiver.receive_message(bytes(message), 0.0)
        except MuxError as exc:  # pragma: no cover - the contract is: never raises
            raise AssertionError(f"receive_message raised {exc!r}") from exc
        if was_closed:
            assert events == []
        else:
            check_clean(receiver, events)
