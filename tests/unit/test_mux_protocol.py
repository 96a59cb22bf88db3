"""The sans-I/O mux, driven through a pair of in-memory peers (no sockets, no sleeping)."""

from __future__ import annotations

from typing import Any

import pytest

from entryguard.mux import (
    ConnectionTerminated,
    ControlReceived,
    DataReceived,
    Event,
    FrameType,
    LocalProtocolError,
    MuxConnection,
    ProtocolError,
    ResetCode,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamReset,
    StreamState,
    WindowUpdated,
)
from entryguard.mux import connection as C
from entryguard.mux import frames as F

W = 64 * 1024
ADDR = "203.0.113.5:50000"


class Pair:
    """An edge and an agent wired back to back (h11's ConnectionPair)."""

    def __init__(self, window: int = W, **kw: Any) -> None:
        self.edge = MuxConnection("edge", initial_window=window, **kw)
        self.agent = MuxConnection("agent", initial_window=window, **kw)
        self.now = 0.0

    def pump(self) -> tuple[list[Event], list[Event]]:
        """Deliver until quiet; returns (events at the edge, events at the agent)."""
        at_edge: list[Event] = []
        at_agent: list[Event] = []
        for _ in range(10_000):
            a = self.edge.messages_to_send()
            b = self.agent.messages_to_send()
            if not a and not b:
                return at_edge, at_agent
            for m in a:
                at_agent += self.agent.receive_message(m, self.now)
            for m in b:
                at_edge += self.edge.receive_message(m, self.now)
        raise AssertionError("did not settle")

    def open(self) -> int:
        sid = self.edge.open_stream(7, ADDR, self.now)
        _, at_agent = self.pump()
        assert at_agent == [StreamOpened(sid, 7, ADDR)]
        self.agent.send_opened(sid)
        at_edge, _ = self.pump()
        assert at_edge == [StreamAccepted(sid)]
        return sid


def data_of(events: list[Event], sid: int) -> bytes:
    return b"".join(
        bytes(e.data) for e in events if isinstance(e, DataReceived) and e.stream_id == sid
    )


def types(messages: list[bytes]) -> list[tuple[FrameType, int]]:
    return [(f.type, f.stream_id) for f in map(F.parse_frame, messages)]


def faults(events: list[Event]) -> list[str]:
    return [e.message for e in events if isinstance(e, ProtocolError)]


# --- opening, early data ---------------------------------------------------------------------


def test_early_data_and_fin_before_opened_arrive_in_order() -> None:
    p = Pair()
    sid = p.edge.open_stream(1, "1.2.3.4:5", 0.0)
    assert p.edge.send_data(sid, b"GET / HTTP/1.0\r\n") == 16
    assert p.edge.send_data(sid, b"\r\n") == 2
    p.edge.send_fin(sid)
    first = p.edge.messages_to_send()
    # Two small writes coalesce into one DATA frame; the FIN follows its last byte.
    assert types(first) == [(FrameType.OPEN, sid), (FrameType.DATA, sid), (FrameType.FIN, sid)]
    events = [e for m in first for e in p.agent.receive_message(m, 0.0)]
    assert [type(e) for e in events] == [StreamOpened, DataReceived, StreamEnded]
    assert events[0] == StreamOpened(sid, 1, "1.2.3.4:5")
    assert data_of(events, sid) == b"GET / HTTP/1.0\r\n\r\n"
    # The agent's dial completes later; the stream answers normally.
    p.agent.send_opened(sid)
    p.agent.send_data(sid, b"HTTP/1.0 200 OK\r\n\r\n")
    p.agent.send_fin(sid)
    at_edge, _ = p.pump()
    assert isinstance(at_edge[0], StreamAccepted) and at_edge[-1] == StreamEnded(sid)
    assert p.edge.stream_state(sid) is StreamState.CLOSED and p.edge.stream_count == 0


def test_agent_refusing_an_open_ignores_its_early_data() -> None:
    p = Pair()
    sid = p.edge.open_stream(99, "1.2.3.4:5", 0.0)
    p.edge.send_data(sid, b"early")
    in_flight = p.edge.messages_to_send()
    p.agent.receive_message(in_flight[0], 0.0)  # OPEN
    p.agent.send_reset(sid, ResetCode.NOT_ALLOWED, "tunnel 99 is not served here")
    assert p.agent.receive_message(in_flight[1], 0.0) == []  # DATA for a stream it reset
    at_edge, _ = p.pump()
    assert at_edge == [StreamReset(sid, ResetCode.NOT_ALLOWED, "tunnel 99 is not served here")]


def test_stream_ids_grow_and_are_never_reused() -> None:
    p = Pair()
    ids = [p.open() for _ in range(3)]
    for sid in ids:
        p.edge.send_reset(sid, ResetCode.REFUSED, "")
    assert ids == [1, 2, 3] and p.edge.open_stream(1, "a:1", 0.0) == 4


# --- flow control -------------------------------------------------------------------------------


def test_flow_control_never_exceeds_the_window_and_credit_returns() -> None:
    p = Pair()
    sid = p.open()
    blob = bytes(range(256)) * 1024  # 256 KiB, four windows
    sent = p.edge.send_data(sid, blob)
    assert sent == W  # partial acceptance: the rest waits for credit
    assert p.edge.send_data(sid, blob[sent:]) == 0
    got = b""
    for _ in range(100):
        _, at_agent = p.pump()
        chunk = data_of(at_agent, sid)
        got += chunk
        if chunk:
            p.agent.consumed(sid, len(chunk))
        at_edge, _ = p.pump()
        if WindowUpdated(sid) in at_edge:
            sent += p.edge.send_data(sid, blob[sent:])
        if len(got) == len(blob):
            break
    assert got == blob


def test_credit_is_returned_before_the_window_is_spent() -> None:
    p = Pair()
    sid = p.open()
    p.edge.send_data(sid, b"x" * (W // 4 - 1))
    p.pump()
    p.agent.consumed(sid, W // 4 - 1)
    assert p.agent.messages_to_send() == []  # a few bytes are not worth a frame
    p.edge.send_data(sid, b"x")
    p.pump()
    p.agent.consumed(sid, 1)
    assert types(p.agent.messages_to_send()) == [(FrameType.WINDOW, sid)]


def test_consuming_more_than_received_is_a_local_error() -> None:
    p = Pair()
    sid = p.open()
    p.edge.send_data(sid, b"abc")
    p.pump()
    with pytest.raises(LocalProtocolError, match="only 3 were received"):
        p.agent.consumed(sid, 4)
    with pytest.raises(LocalProtocolError, match="negative"):
        p.agent.consumed(sid, -1)
    p.agent.consumed(12345, 10)  # a stream that is gone: nothing to credit, no error


def test_no_credit_after_the_peer_finished() -> None:
    p = Pair()
    sid = p.open()
    p.edge.send_data(sid, b"x" * W)
    p.edge.send_fin(sid)
    p.pump()
    p.agent.consumed(sid, W)
    assert p.agent.messages_to_send() == []


def test_hello_corrects_the_assumed_peer_window() -> None:
    edge = MuxConnection("edge", initial_window=W)
    agent = MuxConnection("agent", initial_window=W // 2)
    sid = edge.open_stream(1, "a:1", 0.0)  # before the hello: assumes W
    agent.send_control({"type": "hello", "version": 1, "window": W // 2})
    for m in agent.messages_to_send():
        edge.receive_message(m, 0.0)
    assert edge.peer_window == W // 2
    assert edge.send_data(sid, b"x" * W) == W // 2
    later = edge.open_stream(1, "a:1", 0.0)
    assert edge.send_data(later, b"x" * W) == W // 2
    for m in edge.messages_to_send():
        assert not faults(agent.receive_message(m, 0.0))


@pytest.mark.parametrize(
    ("hello", "needle"),
    [
        ({"type": "hello", "version": 2, "window": W}, "protocol version 2"),
        ({"type": "hello", "window": W}, "protocol version None"),
        ({"type": "hello", "version": 1, "window": 0}, "invalid window 0"),
        ({"type": "hello", "version": 1, "window": "big"}, "invalid window"),
    ],
)
def test_bad_hello_closes_the_connection(hello: dict[str, Any], needle: str) -> None:
    edge = MuxConnection("edge")
    events = edge.receive_message(F.encode_control(hello), 0.0)
    assert isinstance(events[-1], ConnectionTerminated) and needle in events[-1].reason


# --- ordering -------------------------------------------------------------------------------------


def test_fin_comes_after_the_last_byte_and_half_close_keeps_the_other_way() -> None:
    p = Pair()
    sid = p.open()
    p.edge.send_data(sid, b"last bytes")
    p.edge.send_fin(sid)
    p.edge.send_fin(sid)  # idempotent
    assert p.edge.stream_state(sid) is StreamState.HALF_CLOSED_LOCAL
    msgs = p.edge.messages_to_send()
    assert types(msgs) == [(FrameType.DATA, sid), (FrameType.FIN, sid)]
    events = [e for m in msgs for e in p.agent.receive_message(m, 0.0)]
    assert events[-1] == StreamEnded(sid)
    assert p.agent.stream_state(sid) is StreamState.HALF_CLOSED_REMOTE
    with pytest.raises(LocalProtocolError, match="DATA after FIN"):
        p.edge.send_data(sid, b"after fin")
    p.agent.send_data(sid, b"reply")  # the other way stays open
    p.agent.send_fin(sid)
    at_edge, _ = p.pump()
    assert data_of(at_edge, sid) == b"reply" and at_edge[-1] == StreamEnded(sid)
    assert p.edge.stream_count == 0 and p.agent.stream_count == 0


def test_reset_overtakes_a_megabyte_of_queued_data() -> None:
    p = Pair(window=2 * 1024 * 1024)
    a, b = p.open(), p.open()
    assert p.edge.send_data(a, b"A" * (1024 * 1024)) == 1024 * 1024
    p.edge.send_reset(b, ResetCode.REVOKED, "access revoked")
    first = p.edge.messages_to_send()
    assert types(first)[0] == (FrameType.RESET, b)
    assert sum(len(m) for m in first) <= C.BATCH + C.CHUNK  # bulk leaves in bounded batches
    assert all(len(m) <= F.HEADER_SIZE + C.CHUNK for m in first)


def test_window_and_fin_never_wait_behind_other_streams_data() -> None:
    p = Pair(window=2 * 1024 * 1024)
    a, b = p.open(), p.open()
    p.agent.send_data(b, b"r" * (600 * 1024))
    at_edge, _ = p.pump()
    p.edge.send_data(a, b"A" * (1024 * 1024))
    p.edge.consumed(b, len(data_of(at_edge, b)))
    p.edge.send_fin(b)
    first = p.edge.messages_to_send()
    assert types(first)[:2] == [(FrameType.WINDOW, b), (FrameType.FIN, b)]


def test_data_is_interleaved_fairly_across_streams() -> None:
    p = Pair(window=2 * 1024 * 1024)
    a, b, c = p.open(), p.open(), p.open()
    p.edge.send_data(a, b"a" * (1024 * 1024))
    p.edge.send_data(b, b"b" * (1024 * 1024))
    p.edge.send_data(c, b"c" * 10)
    first, second = p.edge.messages_to_send(), p.edge.messages_to_send()
    assert [sid for _, sid in types(first + second)][:4] == [a, b, c, a]  # round-robin
    assert sum(map(len, first)) <= C.BATCH + C.CHUNK  # bounded batches


def test_queued_data_of_a_reset_stream_is_dropped() -> None:
    p = Pair()
    sid = p.open()
    p.edge.send_data(sid, b"x" * 1000)
    p.edge.send_reset(sid, ResetCode.REVOKED, "")
    assert types(p.edge.messages_to_send()) == [(FrameType.RESET, sid)]
    p.edge.send_reset(sid, ResetCode.REVOKED, "")  # already gone: a no-op
    assert p.edge.messages_to_send() == []


# --- reset and late frames --------------------------------------------------------------------


def test_reset_is_delivered_and_late_frames_are_ignored() -> None:
    p = Pair()
    sid = p.open()
    p.edge.send_data(sid, b"x" * 20_000)
    p.pump()
    p.agent.send_data(sid, b"in flight")
    p.agent.consumed(sid, 20_000)
    p.agent.send_fin(sid)
    in_flight = p.agent.messages_to_send()
    assert {t for t, _ in types(in_flight)} == {FrameType.DATA, FrameType.WINDOW, FrameType.FIN}
    p.edge.send_reset(sid, ResetCode.REVOKED, "revoked")
    _, at_agent = p.pump()
    assert at_agent == [StreamReset(sid, ResetCode.REVOKED, "revoked", remote=True)]
    # What the agent sent before it saw the RESET is dropped silently, as in HTTP/2.
    assert [e for m in in_flight for e in p.edge.receive_message(m, 0.0)] == []
    assert p.edge.messages_to_send() == []


def test_frames_after_the_peers_reset_are_faults() -> None:
    p = Pair()
    sid = p.open()
    p.agent.send_reset(sid, ResetCode.UNREACHABLE, "connection refused")
    at_edge, _ = p.pump()
    assert at_edge == [StreamReset(sid, ResetCode.UNREACHABLE, "connection refused")]
    events = p.edge.receive_message(F.encode(FrameType.DATA, sid, b"zombie"), 0.0)
    assert faults(events) == [f"stream {sid}: DATA on a closed stream (reset by the peer)"]


def test_late_window_on_a_finished_stream_is_harmless_but_data_is_not() -> None:
    p = Pair()
    sid = p.open()
    for side in (p.edge, p.agent):
        side.send_fin(sid)
    p.pump()
    assert p.edge.stream_state(sid) is StreamState.CLOSED
    assert p.edge.receive_message(F.encode_window(sid, 100), 0.0) == []
    assert p.edge.receive_message(F.encode_reset(sid, ResetCode.INTERNAL, ""), 0.0) == []
    events = p.edge.receive_message(F.encode(FrameType.DATA, sid, b"x"), 0.0)
    assert faults(events) == [f"stream {sid}: DATA on a closed stream (finished)"]


def test_recently_closed_ids_are_bounded() -> None:
    p = Pair(max_pending_opens=10**6, max_streams=10**6)
    for _ in range(C.RECENTLY_CLOSED + 10):
        sid = p.edge.open_stream(1, "a:1", 0.0)
        p.edge.send_reset(sid, ResetCode.REFUSED, "")
    assert len(p.edge._ended) == C.RECENTLY_CLOSED
    assert p.edge.receive_message(F.encode(FrameType.DATA, sid, b"late"), 0.0) == []
    # Forgotten long ago: a late DATA is now reported, credit and RESET still pass quietly.
    assert faults(p.edge.receive_message(F.encode(FrameType.DATA, 1, b"x"), 0.0))
    assert p.edge.receive_message(F.encode_window(1, 5), 0.0) == []


# --- time ------------------------------------------------------------------------------------


def test_open_timeout_uses_passed_in_time() -> None:
    p = Pair()
    sid = p.edge.open_stream(1, "1.2.3.4:5", 100.0)
    deadline = 100.0 + p.edge.open_timeout
    assert p.edge.get_timer() == deadline
    assert p.edge.handle_timer(deadline - 0.001) == []
    events = p.edge.handle_timer(deadline)
    assert events == [StreamReset(sid, ResetCode.TIMEOUT, "no answer to OPEN within 15 s", False)]
    assert p.edge.get_timer() is None
    assert types(p.edge.messages_to_send())[-1] == (FrameType.RESET, sid)
    # The agent's answer arrives too late: ignored, not a fault.
    assert p.edge.receive_message(F.encode(FrameType.OPENED, sid), deadline + 1) == []


def test_answered_opens_need_no_timer() -> None:
    p = Pair()
    p.open()
    assert p.edge.get_timer() is None and p.edge.handle_timer(1e9) == []


# --- faults from the peer -------------------------------------------------------------------


def test_window_overflow_resets_only_that_stream() -> None:
    p = Pair()
    a, b = p.open(), p.open()
    events = p.edge.receive_message(F.encode(FrameType.DATA, a, b"x" * (W + 1)), 0.0)
    message = f"stream {a}: window overflow: {W + 1} bytes sent, {W} allowed"
    assert events == [
        ProtocolError(a, message, ResetCode.PROTOCOL),
        StreamReset(a, ResetCode.PROTOCOL, message, remote=False),
    ]
    assert types(p.edge.messages_to_send()) == [(FrameType.RESET, a)]
    assert p.edge.stream_state(b) is StreamState.OPEN and not p.edge.closed
    p.agent.send_data(b, b"fine")
    at_edge, _ = p.pump()
    assert data_of(at_edge, b) == b"fine"


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        (lambda s: F.encode_window(s, F.MAX_WINDOW), "WINDOW credit overflows 2^31-1"),
        (lambda s: F.encode(FrameType.WINDOW, s, b"\0"), "WINDOW payload of 1 bytes"),
        (lambda s: F.encode(FrameType.OPENED, s), "second OPENED"),
        (lambda s: F.encode(FrameType.FIN, s, b"x"), "FIN payload"),
        (lambda s: F.encode(FrameType.RESET, s, b"\0"), "RESET payload"),
    ],
)
def test_stream_faults_reset_only_their_stream(frame: Any, needle: str) -> None:
    p = Pair()
    a, b = p.open(), p.open()
    events = p.edge.receive_message(frame(a), 0.0)
    assert any(needle in m for m in faults(events)), events
    assert p.edge.stream_state(a) is StreamState.CLOSED
    assert p.edge.stream_state(b) is StreamState.OPEN and not p.edge.closed


def test_a_malformed_reset_is_never_answered_with_a_reset() -> None:
    p = Pair()
    sid = p.open()
    events = p.edge.receive_message(F.encode(FrameType.RESET, sid, b"\0"), 0.0)
    assert isinstance(events[-1], StreamReset) and p.edge.messages_to_send() == []
    events = p.edge.receive_message(F.encode_reset(77, ResetCode.REFUSED, ""), 0.0)
    assert faults(events) == ["stream 77: RESET for unknown stream 77"]
    assert p.edge.messages_to_send() == []  # two buggy peers must not ping-pong


def test_data_and_fin_after_the_peers_fin_are_faults() -> None:
    p = Pair()
    sid = p.open()
    p.edge.send_fin(sid)
    p.pump()
    late = p.agent.receive_message(F.encode(FrameType.DATA, sid, b"x"), 0.0)
    assert faults(late) == [f"stream {sid}: DATA after FIN"]
    sid = p.open()
    p.edge.send_fin(sid)
    p.pump()
    assert faults(p.agent.receive_message(F.encode(FrameType.FIN, sid), 0.0)) == [
        f"stream {sid}: second FIN"
    ]


def test_the_edge_wants_opened_before_data_or_fin() -> None:
    for kind in (FrameType.DATA, FrameType.FIN):
        edge = MuxConnection("edge")
        sid = edge.open_stream(1, "a:1", 0.0)
        payload = b"x" if kind is FrameType.DATA else b""
        events = edge.receive_message(F.encode(kind, sid, payload), 0.0)
        assert faults(events) == [f"stream {sid}: {kind.name} before OPENED"]


def test_unknown_stream_is_answered_with_reset() -> None:
    agent = MuxConnection("agent")
    events = agent.receive_message(F.encode(FrameType.DATA, 42, b"x"), 0.0)
    assert events == [ProtocolError(42, "stream 42: DATA for unknown stream 42")]
    assert types(agent.messages_to_send()) == [(FrameType.RESET, 42)]
    assert not agent.closed


@pytest.mark.parametrize(
    ("role", "message", "needle"),
    [
        ("edge", b"\x03\x00", "truncated"),
        ("edge", F.encode(FrameType(3), 1, b"x" * (F.MAX_DATA + 1)), "exceeds"),
        ("edge", b"\x63\x00\x00\x00\x00\x01", "unknown frame type 99"),
        ("edge", F.HEADER.pack(FrameType.CONTROL, 0, 0) + b"not json", "not UTF-8 JSON"),
        ("edge", F.encode_open(1, 1, "x"), "OPEN sent to the edge"),
        ("agent", F.encode(FrameType.OPENED, 1), "OPENED sent to the agent"),
    ],
)
def test_connection_faults_close_cleanly(role: Any, message: bytes, needle: str) -> None:
    conn = MuxConnection(role)
    if role == "edge":
        sid = conn.open_stream(1, "a:1", 0.0)
        conn.send_data(sid, b"queued")  # dropped: nothing follows the error
    events = conn.receive_message(message, 0.0)
    assert isinstance(events[-2], ProtocolError) and events[-2].stream_id is None
    assert isinstance(events[-1], ConnectionTerminated) and needle in events[-1].reason
    assert conn.closed and conn.stream_count == 0
    out = conn.messages_to_send()
    error = F.parse_control(F.parse_frame(out[-1]))
    assert error["type"] == "error" and needle in error["message"]
    assert (FrameType.DATA, 1) not in types(out)
    assert conn.receive_message(F.encode(FrameType.FIN, 1), 0.0) == []
    assert conn.get_timer() is None
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.send_control({"type": "hello"})


def test_open_ids_must_grow() -> None:
    agent = MuxConnection("agent")
    agent.receive_message(F.encode_open(5, 1, "a:1"), 0.0)
    events = agent.receive_message(F.encode_open(5, 1, "a:1"), 0.0)
    assert isinstance(events[-1], ConnectionTerminated) and "ids must grow" in events[-1].reason


def test_malformed_open_refuses_only_that_stream() -> None:
    agent = MuxConnection("agent")
    bad = F.HEADER.pack(FrameType.OPEN, 0, 3) + b"\0" * 8 + b"\xff"
    assert faults(agent.receive_message(bad, 0.0)) == ["stream 3: OPEN client address is not UTF-8"]
    assert types(agent.messages_to_send()) == [(FrameType.RESET, 3)]
    assert agent.receive_message(F.encode(FrameType.DATA, 3, b"early"), 0.0) == []
    assert isinstance(agent.receive_message(F.encode_open(4, 1, "a:1"), 0.0)[0], StreamOpened)


# --- limits -----------------------------------------------------------------------------------


def test_edge_limits_on_streams_and_unanswered_opens() -> None:
    edge = MuxConnection("edge", max_pending_opens=3)
    for _ in range(3):
        edge.open_stream(1, "a:1", 0.0)
    with pytest.raises(LocalProtocolError, match="unanswered OPENs") as info:
        edge.open_stream(1, "a:1", 0.0)
    assert info.value.reset_code is ResetCode.REFUSED
    edge = MuxConnection("edge", max_streams=2)
    edge.open_stream(1, "a:1", 0.0)
    edge.open_stream(1, "a:1", 0.0)
    with pytest.raises(LocalProtocolError, match="too many streams"):
        edge.open_stream(1, "a:1", 0.0)


def test_agent_refuses_opens_beyond_its_limits() -> None:
    agent = MuxConnection("agent", max_streams=3, max_pending_opens=2)
    for sid in (1, 2):
        agent.receive_message(F.encode_open(sid, 1, "a:1"), 0.0)
    events = agent.receive_message(F.encode_open(3, 1, "a:1"), 0.0)
    assert events == [
        ProtocolError(3, "stream 3: too many unanswered OPENs (2): OPEN refused", ResetCode.REFUSED)
    ]
    agent.send_opened(1)
    agent.send_opened(2)
    agent.receive_message(F.encode_open(4, 1, "a:1"), 0.0)
    events = agent.receive_message(F.encode_open(5, 1, "a:1"), 0.0)
    assert faults(events) == ["stream 5: too many streams (3): OPEN refused"]
    frames = map(F.parse_frame, agent.messages_to_send())
    resets = [f for f in frames if f.type is FrameType.RESET]
    assert [(f.stream_id, F.parse_reset(f)[0]) for f in resets] == [
        (3, ResetCode.REFUSED),
        (5, ResetCode.REFUSED),
    ]
    assert agent.receive_message(F.encode(FrameType.DATA, 5, b"early"), 0.0) == []


def test_goaway_stops_new_streams_both_ways() -> None:
    p = Pair()
    sid = p.open()
    p.agent.send_control({"type": "goaway"})
    at_edge, _ = p.pump()
    assert at_edge == [ControlReceived({"type": "goaway"})] and p.edge.goaway_received
    with pytest.raises(LocalProtocolError, match="going away"):
        p.edge.open_stream(1, "a:1", 0.0)
    assert p.edge.stream_state(sid) is StreamState.OPEN  # existing streams carry on
    # An OPEN that crossed the goaway on the wire is refused, not reported as a fault.
    assert p.agent.receive_message(F.encode_open(sid + 1, 1, "a:1"), 0.0) == []
    f = F.parse_frame(p.agent.messages_to_send()[0])
    assert (f.type, F.parse_reset(f)[0]) == (FrameType.RESET, ResetCode.REFUSED)


# --- local misuse -------------------------------------------------------------------------------


def test_local_misuse_raises_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError, match="only the edge opens"):
        MuxConnection("agent").open_stream(1, "a:1", 0.0)
    with pytest.raises(ValueError, match="role"):
        MuxConnection("relay")  # type: ignore[arg-type]
    p = Pair()
    sid = p.edge.open_stream(1, "a:1", 0.0)
    p.pump()
    with pytest.raises(LocalProtocolError, match="DATA before OPENED"):
        p.agent.send_data(sid, b"too soon")
    with pytest.raises(LocalProtocolError, match="FIN before OPENED"):
        p.agent.send_fin(sid)
    p.agent.send_opened(sid)
    with pytest.raises(LocalProtocolError, match="sent once"):
        p.agent.send_opened(sid)
    with pytest.raises(LocalProtocolError, match="sent once"):
        p.edge.send_opened(sid)
    with pytest.raises(LocalProtocolError, match="not open"):
        p.edge.send_data(999, b"x")
    with pytest.raises(LocalProtocolError, match="string 'type'"):
        p.edge.send_control({"hello": 1})
    assert p.edge.send_data(sid, b"") == 0


def test_control_messages_roundtrip() -> None:
    p = Pair()
    p.edge.send_control({"type": "hello", "version": 1, "window": W, "edge": "0.1.0"})
    p.edge.send_control({"type": "targets_changed"})
    _, at_agent = p.pump()
    assert at_agent == [
        ControlReceived({"type": "hello", "version": 1, "window": W, "edge": "0.1.0"}),
        ControlReceived({"type": "targets_changed"}),
    ]
