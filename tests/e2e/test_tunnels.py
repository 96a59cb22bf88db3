"""Tunnels end to end: `entryguard up`, a real `eg-agent`, real clients (psql, redis-cli)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import BIN, make_control_plane, require_tool
from tests.e2e import targets
from tests.e2e.tunnel_env import Stack, connect, wait_until

PG = ["psql", "-X", "-q", "-A", "-t", "-U", "postgres", "-d", "test", "-h", "127.0.0.1"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("tunnels")
    cp = make_control_plane(tmp, None, ports=40)
    cp.start()
    st = Stack(cp=cp, tmp=tmp)
    try:
        st.setup()
        st.start_agent()
        yield st
    finally:
        st.stop_agent()
        cp.stop()


_n = 0


def unique(prefix: str) -> str:
    global _n
    _n += 1
    return f"{prefix}-{_n}"


def wait_targets(st: Stack, target: str) -> None:
    st.wait_log(target, 10)


def metric(st: Stack, name: str) -> float:
    text = httpx.get(st.cp.edge_url.replace("ws://", "http://") + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def refused(port: int, source: str) -> bool:
    """A connection the edge does not admit: reset (even during connect) and no byte."""
    try:
        s = connect(port, source)
    except ConnectionResetError:
        return True
    try:
        return is_reset_without_bytes(s)
    finally:
        s.close()


def is_reset_without_bytes(s: socket.socket) -> bool:
    """The edge resets refused connections: no byte, then a reset (or EOF)."""
    s.settimeout(3)
    try:
        data = s.recv(100)
    except ConnectionResetError:
        return True
    return data == b""


def echo_roundtrip(s: socket.socket, payload: bytes) -> bytes:
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_server_first_and_half_closed_echo_of_1mib(stack: Stack) -> None:
    with targets.serve(targets.Greeter) as tport:
        port = stack.tunnel(unique("greeter"), "127.0.0.1", tport)
        wait_targets(stack, f"127.0.0.1:{tport}")
        tok = stack.user(f"{unique('u')}@example.com", "127.0.0.2")
        stack.session(tok, "127.0.0.2")
        s = connect(port, "127.0.0.2")
        greeting = s.recv(100)
        assert greeting == b"220 hello from the target\r\n"
        payload = bytes(range(256)) * 4096  # 1 MiB
        got = bytearray()

        def reader() -> None:
            while chunk := s.recv(65536):
                got.extend(chunk)

        t = threading.Thread(target=reader)
        t.start()
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # half-close: the echo must still come back in full
        t.join(20)
        assert bytes(got) == payload
        # Both directions were counted (the stream ended with both FINs).
        assert metric(stack, "entryguard_edge_bytes_to_agent_total") >= len(payload)
        assert metric(stack, "entryguard_edge_bytes_from_agent_total") >= len(payload)
        s.close()


def test_early_bytes_arrive_before_the_dial_completes(stack: Stack) -> None:
    with targets.serve(targets.Echo) as tport:
        port = stack.tunnel(unique("early"), "127.0.0.1", tport)
        wait_targets(stack, f"127.0.0.1:{tport}")
        tok = stack.user(f"{unique('u')}@example.com", "127.0.0.3")
        stack.session(tok, "127.0.0.3")
        for _ in range(20):
            s = connect(port, "127.0.0.3")
            s.sendall(b"PING first bytes\r\n")  # sent the instant the socket connects
            s.settimeout(5)
            assert s.recv(100) == b"PING first bytes\r\n"
            s.close()


def test_ip_without_grant_gets_nothing(stack: Stack) -> None:
    with targets.serve(targets.Greeter) as tport:
        port = stack.tunnel(unique("closed"), "127.0.0.1", tport)
        wait_targets(stack, f"127.0.0.1:{tport}")
        assert refused(port, "127.0.0.4")
        metrics = httpx.get(stack.cp.edge_url.replace("ws://", "http://") + "/metrics").text
        assert "entryguard_edge_rejections_total" in metrics


def test_psql_query_and_50mb_copy_byte_identical(stack: Stack) -> None:
    require_tool("psql")
    port = stack.tunnel(unique("pg"), "127.0.0.1", 5432)
    wait_targets(stack, "127.0.0.1:5432")
    tok = stack.user(f"{unique('u')}@example.com", "127.0.0.1")
    stack.session(tok, "127.0.0.1")
    out = subprocess.run(
        [*PG, "-p", str(port), "-c", "select 40 + 2"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"
    copy = "COPY (SELECT i, repeat(md5(i::text), 20) FROM generate_series(1, 78000) i) TO STDOUT"
    direct = subprocess.run([*PG, "-p", "5432", "-c", copy], capture_output=True, timeout=60)
    tunneled = subprocess.run([*PG, "-p", str(port), "-c", copy], capture_output=True, timeout=60)
    assert direct.returncode == 0 and tunneled.returncode == 0, tunneled.stderr
    assert len(direct.stdout) > 50_000_000
    assert hashlib.sha256(tunneled.stdout).digest() == hashlib.sha256(direct.stdout).digest()
    stack.stop_session(tok)


def test_session_stop_cuts_a_running_query_within_1s(stack: Stack) -> None:
    require_tool("psql")
    port = stack.tunnel(unique("pg-stop"), "127.0.0.1", 5432)
    wait_targets(stack, "127.0.0.1:5432")
    email = f"{unique('u')}@example.com"
    tok = stack.user(email, "127.0.0.1")
    stack.session(tok, "127.0.0.1")
    proc = subprocess.Popen(
        [*PG, "-p", str(port), "-c", "select pg_sleep(30)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    assert proc.poll() is None
    t0 = time.monotonic()
    env = {
        **os.environ,
        "EG_SERVER": stack.cp.url,
        "EG_TOKEN": tok,
        "EG_CONFIG_DIR": str(stack.tmp / "eg"),
    }
    out = subprocess.run(
        [str(BIN / "eg"), "session", "stop"], capture_output=True, text=True, timeout=30, env=env
    )
    assert out.returncode == 0, out.stderr
    proc.wait(5)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0 + 0.5, elapsed  # stop command round trip + cut
    assert proc.returncode != 0
    # New connections are refused now.
    again = subprocess.run(
        [*PG, "-p", str(port), "-c", "select 1"], capture_output=True, text=True, timeout=30
    )
    assert again.returncode != 0


def test_redis_cli_through_a_tunnel(stack: Stack) -> None:
    require_tool("redis-cli")
    port = stack.tunnel(unique("redis"), "127.0.0.1", 6379)
    wait_targets(stack, "127.0.0.1:6379")
    tok = stack.user(f"{unique('u')}@example.com", "127.0.0.1")
    stack.session(tok, "127.0.0.1")
    key = unique("eg-test-key")
    out = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "SET", key, "through-the-tunnel"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.strip() == "OK", out
    out = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "GET", key],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.strip() == "through-the-tunnel"
    subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "DEL", key], capture_output=True, timeout=30
    )
    stack.stop_session(tok)


def test_session_expiry_cuts_connections(stack: Stack) -> None:
    with targets.serve(targets.Echo) as tport:
        port = stack.tunnel(unique("expiry"), "127.0.0.1", tport)
        wait_targets(stack, f"127.0.0.1:{tport}")
        tok = stack.user(f"{unique('u')}@example.com", "127.0.0.5")
        stack.session(tok, "127.0.0.5", duration="3s")
        s = connect(port, "127.0.0.5")
        assert echo_roundtrip(s, b"hello") == b"hello"
        s.settimeout(6)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            while True:
                if not s.recv(100):
                    raise ConnectionResetError("closed")
        s.close()
        assert refused(port, "127.0.0.5")


def test_static_rule_and_guest_admit_and_removal_cuts(stack: Stack) -> None:
    with targets.serve(targets.Echo) as tport:
        name = unique("rules")
        port = stack.tunnel(name, "127.0.0.1", tport, role=None)
        wait_targets(stack, f"127.0.0.1:{tport}")
        assert refused(port, "127.0.0.6")
        rule = stack.call("POST", "/admin/rules", json={"resource": name, "cidr": "127.0.0.6/32"})[
            "rule"
        ]
        guest = stack.call(
            "POST",
            "/admin/guests",
            json={"resource": name, "cidr": "127.0.0.7/32", "duration": "1h"},
        )["guest"]
        time.sleep(0.3)
        a, b = connect(port, "127.0.0.6"), connect(port, "127.0.0.7")
        assert echo_roundtrip(a, b"rule") == b"rule"
        assert echo_roundtrip(b, b"guest") == b"guest"
        stack.call("DELETE", f"/admin/rules/{rule['id']}")
        a.settimeout(3)
        with pytest.raises(ConnectionResetError):
            a.recv(10)
        assert echo_roundtrip(b, b"still") == b"still"  # the guest grant is untouched
        stack.call("DELETE", f"/admin/guests/{guest['id']}")
        b.settimeout(3)
        with pytest.raises(ConnectionResetError):
            b.recv(10)


def test_stalled_stream_does_not_slow_another(stack: Stack) -> None:
    with targets.serve(targets.Sink) as sink_port, targets.serve(targets.Echo) as echo_port:
        p_sink = stack.tunnel(unique("sink"), "127.0.0.1", sink_port)
        p_echo = stack.tunnel(unique("echo"), "127.0.0.1", echo_port)
        wait_targets(stack, f"127.0.0.1:{echo_port}")
        tok = stack.user(f"{unique('u')}@example.com", "127.0.0.8")
        stack.session(tok, "127.0.0.8")
        stalled = connect(p_sink, "127.0.0.8")
        stalled.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # fill every buffer on the way to the sink
            try:
                sent += stalled.send(b"x" * 65536)
            except BlockingIOError:
                time.sleep(0.05)
        e = connect(p_echo, "127.0.0.8")
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            assert echo_roundtrip(e, b"ping") == b"ping"
            times.append(time.perf_counter() - t0)
        times.sort()
        assert sent > 256 * 1024  # the sink's stream really is stalled on its window
        # Counters move while connections are open, not only when they close.
        assert metric(stack, "entryguard_edge_streams_open") >= 2
        assert metric(stack, "entryguard_edge_bytes_to_agent_total") >= 256 * 1024
        assert times[len(times) // 2] < 0.010, times  # median echo under 10 ms
        stalled.close()
        e.close()


def test_agent_kill_closes_clients_and_a_new_agent_serves(stack: Stack) -> None:
    with targets.serve(targets.Echo) as tport:
        port = stack.tunnel(unique("killed"), "127.0.0.1", tport)
        wait_targets(stack, f"127.0.0.1:{tport}")
        tok = stack.user(f"{unique('u')}@example.com", "127.0.0.9")
        stack.session(tok, "127.0.0.9")
        s = connect(port, "127.0.0.9")
        assert echo_roundtrip(s, b"before") == b"before"
        stack.stop_agent(kill=True)
        try:
            s.settimeout(30)
            with pytest.raises(ConnectionResetError):
                while s.recv(10):
                    pass
                raise ConnectionResetError("closed")
            # While the agent is away the listener stays and resets new connections.
            assert refused(port, "127.0.0.9")
        finally:
            stack.start_agent()  # the module's other tests need an agent
        assert wait_until(lambda: _echo_ok(port, "127.0.0.9"), 10)


def _echo_ok(port: int, source: str) -> bool:
    try:
        s = connect(port, source)
        s.settimeout(2)
        ok = echo_roundtrip(s, b"again") == b"again"
        s.close()
        return ok
    except OSError:
        return False


def test_edge_restart_keeps_the_port_and_the_agent_reconnects(stack: Stack) -> None:
    with targets.serve(targets.Echo) as tport:
        port = stack.tunnel(unique("restart"), "127.0.0.1", tport)
        wait_targets(stack, f"127.0.0.1:{tport}")
        tok = stack.user(f"{unique('u')}@example.com", "127.0.0.10")
        stack.session(tok, "127.0.0.10")
        assert _echo_ok(port, "127.0.0.10")
        before = (
            stack.agent_log.read_text().count("[tunnel] connected to edge")
            if stack.agent_log
            else 0
        )
        stack.cp.restart()
        stack.wait_log("[tunnel] connected to edge", 40, count=before + 1)
        ports = {r["name"]: r["port"] for r in stack.call("GET", "/admin/resources")["items"]}
        assert port in ports.values()
        assert wait_until(lambda: _echo_ok(port, "127.0.0.10"), 10)


def test_a_frozen_agent_is_detected_by_pings(tmp_path: Path) -> None:
    """SIGSTOP leaves the TCP connection open: only keepalive pings can tell it is dead."""
    cp = make_control_plane(tmp_path, None)
    cp.env["EG_EDGE_PING_INTERVAL"] = "1"
    cp.env["EG_EDGE_PING_TIMEOUT"] = "2"
    cp.start()
    st = Stack(cp=cp, tmp=tmp_path)
    try:
        st.setup()
        st.start_agent()
        with targets.serve(targets.Echo) as tport:
            port = st.tunnel("frozen", "127.0.0.1", tport)
            st.wait_log(f"127.0.0.1:{tport}", 10)
            tok = st.user("frozen@example.com", "127.0.0.11")
            st.session(tok, "127.0.0.11")
            s = connect(port, "127.0.0.11")
            assert echo_roundtrip(s, b"alive") == b"alive"
            assert st.agent_proc is not None
            st.agent_proc.send_signal(signal.SIGSTOP)
            t0 = time.monotonic()
            s.settimeout(10)
            with pytest.raises(ConnectionResetError):
                while s.recv(10):
                    pass
                raise ConnectionResetError("closed")
            assert time.monotonic() - t0 < 1 + 2 + 2  # interval + timeout + slack
            st.agent_proc.send_signal(signal.SIGCONT)
    finally:
        if st.agent_proc is not None:
            st.agent_proc.send_signal(signal.SIGCONT)
        st.stop_agent()
        cp.stop()
