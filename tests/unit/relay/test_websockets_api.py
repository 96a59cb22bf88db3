"""The link uses the websockets library through its documented API only, so a new
release cannot break it by changing internals (issue 12: the link used to walk the
parser's generators and pop the message queue, and a burst at open killed it).

Two checks: the source of every module that drives a WebSocket names no attribute of
the library's internals; and at run time, through a full handshake, data, pings, a
refused message type and the closing handshake, every attribute the link reads on the
library's protocol objects is in the documented list.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

import entryguard
from entryguard.relay import wslink
from entryguard.relay.wslink import ClientLink, ServerLink
from entryguard.relay.wsoptions import LinkOptions
from tests.unit.relay.pair import Wire

SRC = Path(entryguard.__file__).parent
SCANNED = [*sorted((SRC / "relay").glob("*.py")), SRC / "edge/service.py", SRC / "agent/tunnel.py"]

# websockets' internals the link once reached into, or might be tempted to.
INTERNALS = {
    "gi_yieldfrom",
    "gi_code",
    "gi_frame",
    "reader",
    "writes",
    "send_data",
    "paused",
    "recv_messages",
    "frames",
    "parser",
    "parser_exc",
    "process_event",
    "max_message_size",
    "eof_sent",
    "close_sent",
    "close_rcvd",
    "current_size",
    "drain",
    "keepalive_task",
}

# "Both sides", "Server" and "Client" in the library's Sans-I/O reference, and the
# integration guide (handshake_exc).
DOCUMENTED = {
    "receive_data",
    "receive_eof",
    "send_continuation",
    "send_text",
    "send_binary",
    "send_close",
    "send_ping",
    "send_pong",
    "fail",
    "events_received",
    "data_to_send",
    "close_expected",
    "state",
    "close_code",
    "close_reason",
    "close_exc",
    "id",
    "logger",
    "handshake_exc",
    "accept",
    "reject",
    "send_response",
    "select_subprotocol",
    "connect",
    "send_request",
}


def offences(source: str, name: str) -> list[str]:
    """Internal names, and any ``_`` attribute not on ``self`` or ``super()``: ours
    are reached through public names too, so a private one here is someone else's."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if not isinstance(node, ast.Attribute):
            continue
        attr, owner = node.attr, node.value
        if isinstance(owner, ast.Attribute) and owner.attr == "mux":
            continue  # our MuxConnection (its send_data is not the library's)
        ours = (isinstance(owner, ast.Name) and owner.id in ("self", "cls")) or (
            isinstance(owner, ast.Call) and ast.unparse(owner.func) == "super"
        )
        if attr in INTERNALS or (attr.startswith("_") and not ours):
            found.append(f"{name}:{node.lineno}: .{attr}")
    return found


def test_no_module_that_drives_the_link_names_a_library_internal() -> None:
    assert len(SCANNED) > 5
    found = [o for p in SCANNED for o in offences(p.read_text(), str(p.relative_to(SRC)))]
    assert found == []


def test_the_scan_catches_what_the_old_link_did() -> None:
    old = (
        "gen = protocol.parser.gi_yieldfrom\n"
        "q = ws.recv_messages.frames.queue\n"
        "if ws.paused: ws.protocol.reader.buffer\n"
        "ws._splitter = self._ok\n"
    )
    found = {o.rsplit(".", 1)[1] for o in offences(old, "old")}
    assert found == {
        "parser",
        "gi_yieldfrom",
        "recv_messages",
        "frames",
        "paused",
        "reader",
        "_splitter",
    }


class Recording:
    """Stands in for the library's protocol object and notes every attribute read."""

    def __init__(self, target: Any, seen: set[str]) -> None:
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "seen", seen)

    def __getattr__(self, name: str) -> Any:
        self.seen.add(name)
        return getattr(self.target, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AssertionError(f"the link set {name} on the library's protocol")


async def test_at_run_time_the_link_reads_only_documented_attributes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: set[str] = set()
    server_cls, client_cls = wslink.ServerProtocol, wslink.ClientProtocol
    monkeypatch.setattr(wslink, "ServerProtocol", lambda **kw: Recording(server_cls(**kw), seen))
    monkeypatch.setattr(
        wslink, "ClientProtocol", lambda *a, **kw: Recording(client_cls(*a, **kw), seen)
    )
    options = LinkOptions(ping_interval=None, ping_timeout=None, close_timeout=1)
    agent, edge = ClientLink("ws://edge.test/agent/connect", options, ()), ServerLink(options)
    to_edge, to_agent = Wire(), Wire()
    agent.connection_made(to_edge)  # type: ignore[arg-type]
    edge.connection_made(to_agent)  # type: ignore[arg-type]

    def pump() -> None:
        for _ in range(100):
            a, to_agent.out = to_agent.out, []
            e, to_edge.out = to_edge.out, []
            if not a and not e:
                return
            for m in a:
                agent.data_received(m)
            for m in e:
                edge.data_received(m)

    pump()
    assert agent.is_open and edge.is_open
    got: list[bytes] = []
    for link in (agent, edge):
        link.attach(lambda m: got.append(bytes(m)), lambda: None)
        link.write_messages([b"x" * 10, b"y" * 70_000])
    pump()
    assert got == [b"x" * 10, b"y" * 70_000] * 2
    # Keepalive both ways: a ping goes out, the pong comes back and re-arms.
    agent.options = edge.options = LinkOptions(ping_interval=30, ping_timeout=30)
    agent._send_ping()
    edge._send_ping()
    pump()
    assert agent._ping_payload is None and edge._ping_payload is None
    # A text frame ("hi", masked with key abcd as a client's must be) is refused: 1003.
    to_edge.out.append(b"\x81\x82abcd" + bytes(c ^ k for c, k in zip(b"hi", b"ab", strict=True)))
    pump()
    assert not edge.is_open and not agent.is_open
    agent.connection_lost(None)
    edge.connection_lost(None)
    assert agent.close_code == 1003 and edge.close_code == 1003
    assert seen, "the recording proxy saw nothing: the link no longer uses it"
    assert seen <= DOCUMENTED, sorted(seen - DOCUMENTED)
