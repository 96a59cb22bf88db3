"""The sans-I/O mux, driven through a pair of in-memory peers (no sockets, no sleeping)."""

from __future__ import annotations

import struct

import pytest

from entryguard.mux import (
    ConnectionTerminated,
    ControlReceived,
    DataReceived,
    FrameType,
    LocalProtocolError,
    MuxConnection,
    ProtocolError,
    ResetCode,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)
from entryguard.mux import frames as F

W = 64 * 1024


class Pair:
    """An edge and an agent wired back to back; ``pump`` delivers queued messages."""

    def __init__(self, window: int = W) -> None:
        self.edge = MuxConnection("edge", initial_window=window)
        self.agent = MuxConnection("agent", initial_window=window)
        self.now = 0.0

    def pump(self) -> tuple[list[object], list[object]]:
        """Deliver until quiet; returns (events at the edge, events at the agent)."""
        at_edge: list[object] = []
        at_agent: list[object] = []
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
        sid = self.edge.open_stream(7, "203.0.113.5:50000", self.now)
        _, at_agent = self.pump()
        assert at_agent == [StreamOpened(sid, 7, "203.0.113.5:50000")]
        self.agent.send_opened(sid)
        at_edge, _ = self.pump()
        assert at_edge == [StreamAccepted(sid)]
        return sid


def data_of(events: list[object], sid: int) -> bytes:
    return b"".join(
        bytes(e.data) for e in events if isinstance(e, DataReceived) and e.stream_id == sid
    )


def test_open_with_early_data_arrives_in_order_before_opened() -> None:
    p = Pair()
    sid = p.edge.open_stream(1, "1.2.3.4:5", 0.0)
    assert p.edge.send_data(sid, b"early bytes") == 11
    first = p.edge.messages_to_send()
    assert [F.parse_frame(m).type for m in first] == [FrameType.OPEN, FrameType.DATA]
    events = [e for m in first for e in p.agent.receive_message(m, 0.0)]
    assert isinstance(events[0], StreamOpened)
    assert data_of(events, sid) == b"early bytes"


def test_flow_control_never_exceeds_the_window_and_credit_returns() -> None:
    p = Pair()
    sid = p.open()
    blob = bytes(range(256)) * 1024  # 256 KiB, four windows
    taken = p.edge.send_data(sid, blob)
    assert taken == W  # the rest waits for credit
    assert p.edge.send_data(sid, blob[taken:]) == 0
    got = b""
    sent = taken
    for _ in range(100):
        _, at_agent = p.pump()
        chunk = data_of(at_agent, sid)
        got += chunk
        if chunk:
            p.agent.consumed(sid, len(chunk))
        at_edge, _ = p.pump()
        if any(isinstance(e, WindowUpdated) for e in at_edge) and sent < len(blob):
            sent += p.edge.send_data(sid, blob[sent:])
        if len(got) == len(blob):
            break
    assert got == blob


def test_credit_is_returned_before_the_window_is_spent() -> None:
    p = Pair()
    sid = p.open()
    p.edge.send_data(sid, b"x" * (W // 4))
    _, at_agent = p.pump()
    p.agent.consumed(sid, len(data_of(at_agent, sid)))
    at_edge, _ = p.pump()
    assert WindowUpdated(sid) in at_edge  # a quarter consumed is enough to return credit


def test_fin_comes_after_the_last_byte_and_half_close_keeps_the_other_way() -> None:
    p = Pair()
    sid = p.open()
    p.edge.send_data(sid, b"last bytes")
    p.edge.send_fin(sid)
    msgs = p.edge.messages_to_send()
    assert [F.parse_frame(m).type for m in msgs] == [FrameType.DATA, FrameType.FIN]
    events = [e for m in msgs for e in p.agent.receive_message(m, 0.0)]
    assert events[-1] == StreamEnded(sid)
    with pytest.raises(LocalProtocolError):
        p.edge.send_data(sid, b"after fin")
    # The agent can still answer on the half-closed stream.
    p.agent.send_data(sid, b"reply")
    p.agent.send_fin(sid)
    at_edge, _ = p.pump()
    assert data_of(at_edge, sid) == b"reply" and at_edge[-1] == StreamEnded(sid)
    assert sid not in p.edge.streams and sid not in p.agent.streams


def test_control_frames_overtake_queued_bulk_data() -> None:
    p = Pair(window=2 * 1024 * 1024)
    a, b = p.open(), p.open()
    p.edge.send_data(a, b"A" * (1024 * 1024))
    p.edge.send_reset(b, ResetCode.REVOKED, "access revoked")
    first = p.edge.messages_to_send()
    assert F.parse_frame(first[0]).type == FrameType.RESET
    assert F.parse_frame(first[0]).stream_id == b
    assert sum(len(m) for m in first) < 400 * 1024  # bulk data goes out in bounded batches


def test_data_is_interleaved_fairly_across_streams() -> None:
    p = Pair(window=1024 * 1024)
    a, b = p.open(), p.open()
    p.edge.send_data(a, b"a" * (512 * 1024))
    p.edge.send_data(b, b"b" * 1024)
    first = p.edge.messages_to_send()
    assert {F.parse_frame(m).stream_id for m in first} == {
        a,
        b,
    }  # b is not stuck behind a's 512 KiB


def test_reset_is_delivered_and_late_frames_are_ignored() -> None:
    p = Pair()
    sid = p.open()
    p.agent.send_data(sid, b"in flight")
    in_flight = p.agent.messages_to_send()
    p.edge.send_reset(sid, ResetCode.REVOKED, "revoked")
    _, at_agent = p.pump()
    assert at_agent == [StreamReset(sid, ResetCode.REVOKED, "revoked", remote=True)]
    # DATA the agent sent before it saw the RESET is dropped silently.
    assert [e for m in in_flight for e in p.edge.receive_message(m, 0.0)] == []


def test_open_timeout_uses_passed_in_time() -> None:
    p = Pair()
    sid = p.edge.open_stream(1, "1.2.3.4:5", 100.0)
    assert p.edge.get_timer() == 100.0 + p.edge.open_timeout
    assert p.edge.handle_timer(100.0 + p.edge.open_timeout - 0.001) == []
    events = p.edge.handle_timer(100.0 + p.edge.open_timeout)
    assert events == [StreamReset(sid, ResetCode.TIMEOUT, events[0].text, remote=False)]  # type: ignore[union-attr]
    assert p.edge.get_timer() is None
    assert F.parse_frame(p.edge.messages_to_send()[-1]).type == FrameType.RESET


def test_window_overflow_resets_only_that_stream() -> None:
    p = Pair()
    a, b = p.open(), p.open()
    cheat = F.encode(FrameType.DATA, a, b"x" * (W + 1))
    events = p.edge.receive_message(cheat, 0.0)
    assert any(isinstance(e, ProtocolError) and "window overflow" in e.message for e in events)
    assert StreamReset(a, ResetCode.PROTOCOL, events[-1].text, remote=False) in events  # type: ignore[union-attr]
    assert a not in p.edge.streams and b in p.edge.streams and not p.edge.closed
    p.agent.send_data(b, b"fine")
    at_edge, _ = p.pump()
    assert data_of(at_edge, b) == b"fine"


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        (b"\x03\x00", "truncated"),
        (struct.pack(">BBI", 99, 0, 1), "unknown frame type 99"),
        (F.encode(FrameType.DATA, 1, b"x" * (F.MAX_DATA + 1)), "exceeds"),
        (struct.pack(">BBI", FrameType.CONTROL, 0, 0) + b"not json", "not JSON"),
        (struct.pack(">BBI", FrameType.CONTROL, 0, 5) + b"{}", "stream 5"),
        (F.encode_open(1, 1, "x"), "OPEN sent to the edge"),
    ],
)
def test_framing_faults_close_the_connection_cleanly(message: bytes, needle: str) -> None:
    edge = MuxConnection("edge")
    events = edge.receive_message(message, 0.0)
    assert isinstance(events[-1], ConnectionTerminated) and needle in events[-1].reason
    assert edge.closed
    out = edge.messages_to_send()
    assert F.parse_frame(out[-1]).type == FrameType.CONTROL  # an error frame for the peer's log
    assert edge.receive_message(F.encode(FrameType.FIN, 1), 0.0) == []


def test_unknown_stream_is_answered_with_reset() -> None:
    agent = MuxConnection("agent")
    events = agent.receive_message(F.encode(FrameType.DATA, 42, b"x"), 0.0)
    assert isinstance(events[0], ProtocolError) and "unknown stream 42" in events[0].message
    assert F.parse_frame(agent.messages_to_send()[0]).type == FrameType.RESET
    assert not agent.closed


def test_malformed_stream_frames_affect_only_their_stream() -> None:
    p = Pair()
    a, b = p.open(), p.open()
    for bad in (F.encode(FrameType.WINDOW, a, b"\x00"), F.encode(FrameType.FIN, b, b"payload")):
        events = p.agent.receive_message(bad, 0.0)
        assert any(isinstance(e, StreamReset) for e in events)
    assert not p.agent.closed


def test_window_credit_overflow_is_a_stream_error() -> None:
    p = Pair()
    sid = p.open()
    events = p.edge.receive_message(F.encode_window(sid, F.MAX_WINDOW), 0.0)
    assert any(isinstance(e, ProtocolError) and "overflow" in e.message for e in events)


def test_limits_on_streams_and_unanswered_opens() -> None:
    edge = MuxConnection("edge", max_pending_opens=3)
    for _ in range(3):
        edge.open_stream(1, "a", 0.0)
    with pytest.raises(LocalProtocolError, match="unanswered OPENs"):
        edge.open_stream(1, "a", 0.0)
    agent = MuxConnection("agent", max_streams=2)
    for sid in (1, 2, 3):
        events = agent.receive_message(F.encode_open(sid, 1, "a"), 0.0)
    assert isinstance(events[0], ProtocolError) and len(agent.streams) == 2
    reused = agent.receive_message(F.encode_open(2, 1, "a"), 0.0)
    assert isinstance(reused[-1], ConnectionTerminated)  # stream ids are never reused


def test_control_messages_roundtrip() -> None:
    p = Pair()
    p.edge.send_control({"type": "hello", "version": 1, "window": W})
    _, at_agent = p.pump()
    assert at_agent == [ControlReceived({"type": "hello", "version": 1, "window": W})]


def test_agent_cannot_open_and_edge_cannot_answer() -> None:
    with pytest.raises(LocalProtocolError):
        MuxConnection("agent").open_stream(1, "a", 0.0)
    p = Pair()
    sid = p.open()
    with pytest.raises(LocalProtocolError):
        p.edge.send_opened(sid)
