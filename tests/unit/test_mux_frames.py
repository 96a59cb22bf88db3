"""The mux wire format: encode/parse round trips and every malformed input's error."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entryguard.mux import (
    ConnectionProtocolError,
    Frame,
    FrameType,
    LocalProtocolError,
    MuxError,
    RemoteProtocolError,
    ResetCode,
    StreamProtocolError,
    encode_frame,
    parse_frame,
)
from entryguard.mux import frames as F


def raw(t: int, sid: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return struct.pack(">BBI", t, flags, sid) + payload


def test_header_layout_is_type_flags_stream_big_endian() -> None:
    assert encode_frame(Frame(FrameType.DATA, 0x01020304, b"hi")) == b"\x03\x00\x01\x02\x03\x04hi"


@pytest.mark.parametrize(
    "frame",
    [
        Frame(FrameType.DATA, 1, b"payload"),
        Frame(FrameType.DATA, 2**32 - 1, b"x" * F.MAX_DATA),
        Frame(FrameType.DATA, 7, b""),
        Frame(FrameType.OPENED, 3),
        Frame(FrameType.FIN, 3),
        Frame(FrameType.WINDOW, 9, struct.pack(">I", 1234)),
        Frame(FrameType.CONTROL, 0, b'{"type":"goaway"}'),
    ],
)
def test_encode_parse_round_trip(frame: Frame) -> None:
    parsed = parse_frame(encode_frame(frame))
    assert (parsed.type, parsed.stream_id, bytes(parsed.payload), parsed.flags) == (
        frame.type,
        frame.stream_id,
        bytes(frame.payload),
        frame.flags,
    )


def test_parsed_payload_is_a_view_not_a_copy() -> None:
    message = encode_frame(Frame(FrameType.DATA, 1, b"abc"))
    payload = parse_frame(message).payload
    assert isinstance(payload, memoryview) and payload.obj is message


def test_typed_round_trips() -> None:
    f = parse_frame(F.encode_open(5, 2**64 - 1, "[2001:db8::1]:443"))
    assert (f.type, f.stream_id) == (FrameType.OPEN, 5)
    assert F.parse_open(f) == (2**64 - 1, "[2001:db8::1]:443")
    assert F.parse_window(parse_frame(F.encode_window(5, F.MAX_WINDOW))) == F.MAX_WINDOW
    code, text = F.parse_reset(parse_frame(F.encode_reset(5, ResetCode.REVOKED, "grant gone")))
    assert code is ResetCode.REVOKED and text == "grant gone"
    obj = {"type": "hello", "version": 1, "window": 262144}
    assert F.parse_control(parse_frame(F.encode_control(obj))) == obj


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([FrameType.DATA, FrameType.OPENED, FrameType.FIN, FrameType.WINDOW]),
    st.integers(1, 2**32 - 1),
    st.binary(max_size=2048),
)
def test_round_trip_property(ftype: FrameType, sid: int, data: bytes) -> None:
    payload = {
        FrameType.DATA: data,
        FrameType.WINDOW: struct.pack(">I", 1 + len(data)),
    }.get(ftype, b"")
    parsed = parse_frame(encode_frame(Frame(ftype, sid, payload)))
    assert (parsed.type, parsed.stream_id, bytes(parsed.payload)) == (ftype, sid, payload)


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        (b"", "truncated"),
        (b"\x03\x00\x00\x00\x00", "truncated"),
        (raw(0, 1), "unknown frame type 0"),
        (raw(99, 1), "unknown frame type 99"),
        (raw(FrameType.DATA, 1, b"x" * (F.MAX_DATA + 1)), "exceeds"),
        (raw(FrameType.OPEN, 1, b"x" * (F.MAX_DATA + 1)), "exceeds"),
        (raw(FrameType.DATA, 1, b"x", flags=1), "unknown flags 0x01"),
        (raw(FrameType.CONTROL, 5, b"{}"), "control frames use stream 0"),
        (raw(FrameType.DATA, 0, b"x"), "DATA frame on stream 0"),
        (raw(FrameType.WINDOW, 0, b"\0\0\0\1"), "WINDOW frame on stream 0"),
        (raw(FrameType.CONTROL, 0, b"x" * (F.MAX_CONTROL + 1)), "CONTROL payload of"),
        (raw(FrameType.CONTROL, 0, b""), "CONTROL payload of 0 bytes"),
    ],
)
def test_framing_faults_are_connection_scoped(message: bytes, needle: str) -> None:
    with pytest.raises(ConnectionProtocolError, match=needle) as info:
        parse_frame(message)
    assert info.value.connection_scoped and info.value.stream_id is None
    assert info.value.reset_code is ResetCode.PROTOCOL


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        (raw(FrameType.WINDOW, 4, b"\0\0\1"), "WINDOW payload of 3 bytes, expected 4"),
        (raw(FrameType.WINDOW, 4, b"\0\0\0\0\1"), "WINDOW payload of 5 bytes"),
        (raw(FrameType.OPENED, 4, b"x"), "OPENED payload of 1 bytes, expected 0"),
        (raw(FrameType.FIN, 4, b"x"), "FIN payload"),
        (raw(FrameType.OPEN, 4, b"\0" * 7), "OPEN payload of 7 bytes"),
        (raw(FrameType.OPEN, 4, b"\0" * (8 + F.MAX_ADDR + 1)), "OPEN payload"),
        (raw(FrameType.RESET, 4, b"\0"), "RESET payload of 1 bytes"),
        (raw(FrameType.RESET, 4, b"\0\1" + b"x" * (F.MAX_RESET_TEXT + 1)), "RESET payload"),
    ],
)
def test_malformed_stream_frames_are_stream_scoped(message: bytes, needle: str) -> None:
    with pytest.raises(StreamProtocolError, match=needle) as info:
        parse_frame(message)
    assert info.value.stream_id == 4 and not info.value.connection_scoped


@pytest.mark.parametrize(
    ("message", "decode", "needle"),
    [
        (raw(FrameType.WINDOW, 2, b"\0\0\0\0"), F.parse_window, "credit 0 out of range"),
        (raw(FrameType.WINDOW, 2, b"\x80\0\0\0"), F.parse_window, "out of range"),
        (raw(FrameType.OPEN, 2, b"\0" * 8 + b"\xff\xfe"), F.parse_open, "not UTF-8"),
        (raw(FrameType.OPEN, 2, b"\0" * 8 + b"1.2.3.4:5\nFAKE"), F.parse_open, "not printable"),
    ],
)
def test_malformed_stream_payloads(message: bytes, decode: object, needle: str) -> None:
    frame = parse_frame(message)
    with pytest.raises(StreamProtocolError, match=needle) as info:
        decode(frame)  # type: ignore[operator]
    assert info.value.stream_id == 2


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"not json", "not UTF-8 JSON"),
        (b"\xff\xfe{}", "not UTF-8 JSON"),
        (b"[1, 2]", "JSON object with a string 'type'"),
        (b'{"type": 3}', "string 'type'"),
        (b'{"kind": "hello"}', "string 'type'"),
        (b'{"type": "x", "n": NaN}', "not UTF-8 JSON"),
        (b"[" * 50_000, "not UTF-8 JSON"),  # nested past the recursion limit
    ],
)
def test_malformed_control_is_connection_scoped(body: bytes, needle: str) -> None:
    with pytest.raises(ConnectionProtocolError, match=needle):
        F.parse_control(parse_frame(raw(FrameType.CONTROL, 0, body)))


def test_reset_decoding_keeps_unknown_codes_and_defuses_text() -> None:
    code, text = F.parse_reset(parse_frame(raw(FrameType.RESET, 1, b"\x01\x00bad\nline\xff")))
    assert code == 256 and not isinstance(code, ResetCode)
    assert text == "bad?line\ufffd"


def test_reset_text_is_cut_on_a_character_boundary() -> None:
    message = F.encode_reset(1, ResetCode.INTERNAL, "é" * 1000)  # 2000 bytes of UTF-8
    _, text = F.parse_reset(parse_frame(message))
    assert text == "é" * (F.MAX_RESET_TEXT // 2)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: F.encode_open(1, 2**64, "a:1"), "does not fit in u64"),
        (lambda: F.encode_open(1, -1, "a:1"), "does not fit in u64"),
        (lambda: F.encode_open(1, 1, "x" * 256), "short printable"),
        (lambda: F.encode_open(1, 1, "1.2.3.4:5\r\n"), "short printable"),
        (lambda: F.encode_control({"no": "type"}), "string 'type'"),
        (lambda: F.encode_control({"type": "x", "v": object()}), "not JSON-serialisable"),
        (lambda: F.encode_control({"type": "x", "v": float("nan")}), "not JSON-serialisable"),
        (lambda: F.encode_control({"type": "x", "v": "y" * F.MAX_CONTROL}), "exceeds"),
        (lambda: encode_frame(Frame(FrameType.DATA, 2**32, b"")), "does not fit in u32"),
        (lambda: encode_frame(Frame(FrameType.DATA, 1, b"", flags=256)), "u8"),
        (lambda: encode_frame(Frame(FrameType.DATA, 1, b"x" * (F.MAX_DATA + 1))), "exceeds"),
    ],
)
def test_encoding_misuse_is_a_local_error(call: object, needle: str) -> None:
    with pytest.raises(LocalProtocolError, match=needle):
        call()  # type: ignore[operator]


def test_error_hierarchy_says_whose_fault_and_what_to_send() -> None:
    local = LocalProtocolError("limit", code=ResetCode.REFUSED)
    stream = StreamProtocolError(9, "window overflow")
    conn = ConnectionProtocolError("garbage")
    assert all(isinstance(e, MuxError) for e in (local, stream, conn))
    assert isinstance(stream, RemoteProtocolError) and isinstance(conn, RemoteProtocolError)
    assert not isinstance(local, RemoteProtocolError)
    assert (
        local.reset_code is ResetCode.REFUSED
        and LocalProtocolError("bug").reset_code is ResetCode.INTERNAL
    )
    assert (stream.stream_id, stream.reset_code, str(stream)) == (
        9,
        ResetCode.PROTOCOL,
        "stream 9: window overflow",
    )
    assert conn.connection_scoped and not stream.connection_scoped


def test_codes_are_stable() -> None:
    assert [int(t) for t in FrameType] == [1, 2, 3, 4, 5, 6, 7]
    assert {c.name: int(c) for c in ResetCode} == {
        "REFUSED": 1,
        "UNREACHABLE": 2,
        "NOT_ALLOWED": 3,
        "REVOKED": 4,
        "PROTOCOL": 5,
        "TIMEOUT": 6,
        "INTERNAL": 7,
    }
