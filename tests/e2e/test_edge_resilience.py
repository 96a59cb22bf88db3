"""The edge under faults, as a process: a tunnel port that cannot be bound is named on
/health, counted, and retried until it binds (issue 11, A4)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import make_control_plane
from tests.e2e import targets
from tests.e2e.tunnel_env import Stack, connect, wait_until


@pytest.fixture(scope="module")
def st(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("resilience")
    cp = make_control_plane(tmp, None, ports=5)
    stack = Stack(cp=cp, tmp=tmp)
    try:
        cp.start()
        stack.setup()
        stack.start_agent()
        yield stack
    finally:
        stack.stop_agent()
        cp.stop()


def health(st: Stack) -> tuple[int, dict]:
    r = httpx.get(st.cp.edge_url.replace("ws://", "http://") + "/health", timeout=5)
    return r.status_code, r.json()


def test_a_port_taken_by_another_socket_is_reported_and_bound_once_free(st: Stack) -> None:
    first, _ = st.cp.tunnel_ports
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", first))
    squatter.listen(1)
    try:
        with targets.serve(targets.Echo) as echo:
            port = st.tunnel("squatted", "127.0.0.1", echo)
            assert port == first
            assert wait_until(lambda: health(st)[0] == 503, 10)
            _code, body = health(st)
            assert body["status"] == "degraded"
            assert [u["port"] for u in body["unbound_ports"]] == [port]
            text = httpx.get(
                st.cp.edge_url.replace("ws://", "http://") + "/metrics", timeout=5
            ).text
            assert "entryguard_edge_tunnels_unbound 1" in text

            squatter.close()  # the port comes free: the edge's retry binds it
            assert wait_until(lambda: health(st)[0] == 200, 40), health(st)
            assert health(st)[1]["unbound_ports"] == []
            tok = st.user("squat@example.com", "127.0.0.2")
            st.session(tok, "127.0.0.2")
            s = connect(port, "127.0.0.2")
            s.sendall(b"hello")
            assert s.recv(5) == b"hello"
            s.close()
    finally:
        squatter.close()
