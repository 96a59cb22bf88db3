"""A split deployment: `entryguard server` on PostgreSQL, a separate `entryguard edge`, an agent."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import BIN, free_port, make_control_plane, pg_create_database, pg_drop_database
from tests.e2e import targets
from tests.e2e.test_tunnels import echo_roundtrip
from tests.e2e.tunnel_env import Stack, connect, wait_until


class EdgeProc:
    def __init__(self, tmp: Path, control_url: str, token: str) -> None:
        self.port = free_port()
        self.log = tmp / "edge.log"
        self.args = [
            str(BIN / "entryguard"),
            "edge",
            "--control-url",
            control_url,
            "--edge-token",
            token,
            "--listen",
            f"127.0.0.1:{self.port}",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log, "ab")  # noqa: SIM115 - the child process owns it
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        assert wait_until(lambda: self._healthy(), 20), self.log.read_text()

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, EdgeProc]]:
    tmp = tmp_path_factory.mktemp("split")
    url = pg_create_database()
    cp = make_control_plane(tmp, url, command="server")
    cp.start()
    out = subprocess.run(
        [
            str(BIN / "entryguard"),
            "edge-token",
            "create",
            "--name",
            "edge-a",
            "--database-url",
            url,
        ],
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
        yield st, edge
    finally:
        st.stop_agent()
        edge.stop()
        cp.stop()
        pg_drop_database(url)


def test_split_deployment_relays_and_survives_edge_restart(split: tuple[Stack, EdgeProc]) -> None:
    st, edge = split
    with targets.serve(targets.Echo) as tport:
        port = st.tunnel("split-echo", "127.0.0.1", tport)
        st.start_agent()
        st.wait_log(f"127.0.0.1:{tport}", 10)
        tok = st.user("split@example.com", "127.0.0.2")
        st.session(tok, "127.0.0.2")
        s = connect(port, "127.0.0.2")
        assert echo_roundtrip(s, b"hello split") == b"hello split"
        s.close()
        health = httpx.get(f"http://127.0.0.1:{edge.port}/health").json()
        assert health["status"] == "ok" and health["agents_connected"] == 1
        # The edge holds no database credentials: its command line has none.
        assert not any("postgresql" in a for a in edge.args)
        edge.stop()
        edge.start()
        st.wait_log("[tunnel] connected to edge", 40, count=2)
        assert wait_until(lambda: _echo(port), 10)
        # The control plane going away leaves the edge degraded but serving.
        st.cp.stop()
        assert wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{edge.port}/health").status_code == 503, 15
        )
        assert _echo(port)
        st.cp.start()
        assert wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{edge.port}/health").status_code == 200, 30
        )


def _echo(port: int) -> bool:
    try:
        s = connect(port, "127.0.0.2")
        s.settimeout(3)
        ok = echo_roundtrip(s, b"again") == b"again"
        s.close()
        return ok
    except OSError:
        return False


def test_agent_sigterm_drains_open_streams(split: tuple[Stack, EdgeProc]) -> None:
    st, _ = split
    with targets.serve(targets.Echo) as tport:
        port = st.tunnel("drain-echo", "127.0.0.1", tport)
        st.wait_log(f"127.0.0.1:{tport}", 10)
        tok = st.users.get("split@example.com") or st.user("split@example.com", "127.0.0.2")
        st.session(tok, "127.0.0.2")
        s = connect(port, "127.0.0.2")
        assert echo_roundtrip(s, b"before") == b"before"
        assert st.agent_proc is not None
        st.agent_proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # The open stream keeps working while the agent drains...
        assert echo_roundtrip(s, b"during drain") == b"during drain"
        s.close()
        # ...and once it closes, the agent exits well before the drain timeout.
        st.agent_proc.wait(8)
        assert st.agent_proc.returncode == 0 or st.agent_proc.returncode == -signal.SIGTERM
        st.start_agent()
        assert os.path.exists(st.agent_log or "")
