"""A clean stop: SIGTERM (what systemd sends) or Ctrl-C ends `entryguard up`, `server` and
`edge` within 5 s with exit code 0 and no ERROR or traceback; live tunnel connections are
reset, agent links get close code 1001 (going away), edges' long-polls are answered."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.conftest import BIN, ControlPlane, make_control_plane
from tests.e2e import targets
from tests.e2e.test_split import EdgeProc
from tests.e2e.test_tunnels import echo_roundtrip
from tests.e2e.tunnel_env import Stack, connect

STOP_WITHIN = 5.0


def stop_with(proc: subprocess.Popen[bytes], sig: signal.Signals, log: Path) -> float:
    """Send ``sig``; the process must exit 0 within STOP_WITHIN. Returns how long it took."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        rc = proc.wait(STOP_WITHIN)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        pytest.fail(f"still running {STOP_WITHIN} s after {sig.name}:\n{log.read_text()[-3000:]}")
    took = time.monotonic() - t0
    assert rc == 0, f"exit code {rc} after {sig.name}:\n{log.read_text()[-3000:]}"
    print(f"{sig.name}: exited 0 in {took:.2f} s")
    return took


def assert_clean(log: Path) -> None:
    text = log.read_text()
    assert "ERROR" not in text and "Traceback" not in text, text[-3000:]


class RawAgent:
    """A bare WebSocket on /agent/connect with an agent key: records how the edge closes it."""

    def __init__(self, edge_url: str, key: str) -> None:
        self.url = f"{edge_url}/agent/connect"
        self.key = key
        self.opened = threading.Event()
        self.closed = threading.Event()
        self.code: int | None = None
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.opened.wait(15), f"agent link not opened: {self.error}"

    def _run(self) -> None:
        try:
            # The edge knows a new key once it has followed the change log: retry briefly.
            deadline = time.monotonic() + 10
            while True:
                try:
                    ws = ws_connect(
                        self.url,
                        additional_headers={"Authorization": f"Bearer {self.key}"},
                        open_timeout=5,
                        close_timeout=2,
                    )
                    break
                except InvalidStatus as exc:
                    self.error = str(exc)
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.2)
            with ws:
                self.opened.set()
                try:
                    while not self._stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            ws.recv(timeout=0.2)
                except ConnectionClosed as exc:
                    self.code = exc.rcvd.code if exc.rcvd is not None else None
        finally:
            self.closed.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Live:
    """A relayed tunnel connection through a real agent, and a bare agent link."""

    sock: socket.socket
    raw: RawAgent


def open_live(st: Stack, edge_url: str, tport: int, name: str) -> Live:
    port = st.tunnel(name, "127.0.0.1", tport)
    if st.agent_proc is None:
        st.start_agent()
    st.wait_log(f"127.0.0.1:{tport}", 15)
    raw_key = st.call(
        "POST", "/admin/apikeys", json={"name": f"{name}-raw", "scopes": ["agent:connect"]}
    )["key"]
    tok = st.user(f"{name}@example.com", "127.0.0.2")
    st.session(tok, "127.0.0.2")  # returns once the edge follows: it knows raw_key too
    s = connect(port, "127.0.0.2")
    assert echo_roundtrip(s, b"live before the stop") == b"live before the stop"
    return Live(s, RawAgent(edge_url, raw_key))


def assert_reset_and_going_away(live: Live) -> None:
    """The tunnel client sees a TCP reset, not a hang; the agent link closes with 1001."""
    live.sock.settimeout(STOP_WITHIN)
    with pytest.raises(ConnectionResetError):
        # A reset may land on the first read, or (if it raced a FIN) on the next one.
        for _ in range(2):
            if not live.sock.recv(65536):
                live.sock.send(b"x")
    live.sock.close()
    assert live.raw.closed.wait(STOP_WITHIN), "agent link still open after the stop"
    assert live.raw.code == 1001, f"agent link closed with {live.raw.code}, not 1001 (going away)"


# --- entryguard up --------------------------------------------------------------------


@pytest.fixture(scope="module")
def up_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stop-up")
    cp = make_control_plane(tmp, None, ports=5)
    cp.start()
    st = Stack(cp=cp, tmp=tmp)
    try:
        st.setup()
        yield st
    finally:
        st.stop_agent()
        cp.stop()


def test_up_sigterm_resets_tunnels_and_exits_0(up_stack: Stack) -> None:
    st = up_stack
    assert st.cp.proc is not None and st.cp.log_path is not None
    with targets.serve(targets.Echo) as tport:
        live = open_live(st, st.cp.edge_url, tport, "up-echo")
        try:
            took = stop_with(st.cp.proc, signal.SIGTERM, st.cp.log_path)
            assert_reset_and_going_away(live)
        finally:
            live.raw.close()
    assert took < STOP_WITHIN
    assert_clean(st.cp.log_path)


def test_ctrl_c_exits_0(tmp_path: Path) -> None:
    cp = make_control_plane(tmp_path, None, command="server", ports=2)
    cp.start()
    try:
        assert cp.proc is not None and cp.log_path is not None
        stop_with(cp.proc, signal.SIGINT, cp.log_path)
        assert_clean(cp.log_path)
    finally:
        cp.stop()


# --- entryguard server + entryguard edge ------------------------------------------------


@dataclass
class Split:
    st: Stack
    cp: ControlPlane
    edge: EdgeProc


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    tmp = tmp_path_factory.mktemp("stop-split")
    cp = make_control_plane(tmp, None, command="server", ports=5)
    cp.start()
    out = subprocess.run(
        [str(BIN / "entryguard"), "edge-token", "create", "--data-dir", str(cp.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    edge = EdgeProc(tmp, cp.url, out.stdout.strip().splitlines()[-1])
    edge.start()
    cp.edge_url = f"ws://127.0.0.1:{edge.port}"
    st = Stack(cp=cp, tmp=tmp)
    try:
        st.setup()
        yield Split(st, cp, edge)
    finally:
        st.stop_agent()
        if edge.proc is not None and edge.proc.poll() is None:
            edge.proc.kill()
            edge.proc.wait(5)
        cp.stop()


def test_server_then_edge_sigterm(split: Split) -> None:
    st, cp, edge = split.st, split.cp, split.edge
    assert cp.proc is not None and cp.log_path is not None and edge.proc is not None
    with targets.serve(targets.Echo) as tport:
        live = open_live(st, cp.edge_url, tport, "split-echo")
        try:
            # The edge is in a long-poll on the server: the server answers it and stops.
            stop_with(cp.proc, signal.SIGTERM, cp.log_path)
            assert_clean(cp.log_path)
            # The edge keeps relaying on its last known state...
            assert echo_roundtrip(live.sock, b"still relayed") == b"still relayed"
            # ...until it is stopped itself.
            stop_with(edge.proc, signal.SIGTERM, edge.log)
            assert_reset_and_going_away(live)
        finally:
            live.raw.close()
    assert_clean(edge.log)
