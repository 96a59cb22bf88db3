"""The link's own WebSocket framing, checked against the websockets library as the oracle."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from entryguard.relay.wsframes import FrameSplitter, MaskKeys, binary_frames

MAX = 2 * 1024 * 1024


def serialize(frame: Frame, masked: bool) -> bytes:
    return frame.serialize(mask=masked, extensions=[])


def open_protocol(side: str) -> Protocol:
    p: Protocol
    if side == "server":
        p = ServerProtocol(max_size=MAX)
    else:
        p = ClientProtocol(parse_uri("ws://x/"), max_size=MAX)
    p.state = State.OPEN
    p.parser = Protocol.parse(p)  # past the handshake: parse frames from the start
    next(p.parser)
    return p


frames = st.lists(
    st.one_of(
        st.binary(max_size=70_000).map(lambda b: Frame(Opcode.BINARY, b)),
        st.binary(max_size=125).map(lambda b: Frame(Opcode.PING, b)),
        st.binary(max_size=125).map(lambda b: Frame(Opcode.PONG, b)),
    ),
    max_size=12,
)


class Recorder:
    def __init__(self) -> None:
        self.binary: list[bytes] = []
        self.other = bytearray()

    def splitter(self, masked: bool) -> FrameSplitter:
        return FrameSplitter(
            masked=masked,
            max_size=MAX,
            on_binary=lambda b: self.binary.append(bytes(b)),
            on_other=self.other.extend,
        )


def feed_in_pieces(sp: FrameSplitter, data: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts})
    last = 0
    for p in [*points, len(data)]:
        if p > last:
            sp.feed(data[last:p])
            last = p


@settings(max_examples=200, deadline=None)
@given(frames=frames, masked=st.booleans(), cuts=st.lists(st.integers(0, 10**6), max_size=20))
def test_split_anywhere_binary_in_order_and_other_frames_byte_exact(
    frames: list[Frame], masked: bool, cuts: list[int]
) -> None:
    wire = [serialize(f, masked) for f in frames]
    rec = Recorder()
    feed_in_pieces(rec.splitter(masked), b"".join(wire), cuts)
    assert rec.binary == [f.data for f in frames if f.opcode is Opcode.BINARY]
    assert bytes(rec.other) == b"".join(
        w for f, w in zip(frames, wire, strict=True) if f.opcode is not Opcode.BINARY
    )


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        # Built by hand: the library will not write a frame with an RSV bit set.
        (
            lambda masked: (
                bytes([0xC2, (0x80 if masked else 0) | 1]) + b"\0" * (5 if masked else 1)
            ),
            "RSV bit",
        ),
        (lambda masked: serialize(Frame(Opcode.BINARY, b"x"), not masked), "wrong mask bit"),
        (
            lambda masked: (
                bytes([0x82, (0x80 if masked else 0) | 127]) + (MAX + 1).to_bytes(8, "big")
            ),
            "over max_size",
        ),
    ],
)
@pytest.mark.parametrize("masked", [True, False])
def test_a_frame_it_does_not_judge_goes_to_the_library_with_everything_after(
    bad: Any, why: str, masked: bool
) -> None:
    good = serialize(Frame(Opcode.BINARY, b"before"), masked)
    after = serialize(Frame(Opcode.BINARY, b"after"), masked)
    wrong = bad(masked)  # once: a masked frame gets a new random key each time
    rec = Recorder()
    sp = rec.splitter(masked)
    sp.feed(good + wrong)
    sp.feed(after)
    assert rec.binary == [b"before"], why
    assert bytes(rec.other) == wrong + after
    assert sp.passthrough


def test_after_a_close_frame_everything_goes_to_the_library() -> None:
    close = serialize(Frame(Opcode.CLOSE, Close(1000, "bye").serialize()), False)
    later = serialize(Frame(Opcode.BINARY, b"late"), False)
    rec = Recorder()
    sp = rec.splitter(False)

    def library(data: bytes) -> None:  # as FastDelivery does once the library is closing
        rec.other.extend(data)
        sp.passthrough = True

    sp.on_other = library
    sp.feed(close + later)
    assert rec.binary == [] and bytes(rec.other) == close + later


@settings(max_examples=100, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=70_000), max_size=8),
    side=st.sampled_from(["client", "server"]),
)
def test_binary_frames_parse_back_with_the_library(messages: list[bytes], side: str) -> None:
    """What the edge (server) and the agent (client) write is read by the other side's
    library as the same messages; the client's frames are masked, the server's not."""
    keys = MaskKeys() if side == "client" else None
    wire = b"".join(bytes(b) for b in binary_frames(messages, keys))
    reader = open_protocol("server" if side == "client" else "client")
    reader.receive_data(wire)
    got = [e for e in reader.events_received() if isinstance(e, Frame)]
    assert [(e.opcode, e.fin, e.data) for e in got] == [(Opcode.BINARY, True, m) for m in messages]
    assert reader.state is State.OPEN and reader.parser_exc is None


def test_mask_keys_are_fresh() -> None:
    keys = MaskKeys()
    drawn = [keys.next() for _ in range(3000)]  # crosses the 4 KiB pool twice
    assert all(len(k) == 4 for k in drawn)
    assert len(set(drawn)) > 2900  # 2^32 values: collisions are rare, repeats a bug
