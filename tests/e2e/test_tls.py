"""`entryguard up --tls-self-signed`: https API, wss agent link, clients trusting the CA file."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import BIN, make_control_plane
from tests.e2e import targets
from tests.e2e.test_tunnels import echo_roundtrip
from tests.e2e.tunnel_env import Stack, connect


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("tls")
    cp = make_control_plane(tmp, None, tls=True)
    cp.start()
    st = Stack(cp=cp, tmp=tmp)
    try:
        st.setup()
        yield st
    finally:
        st.stop_agent()
        cp.stop()


def test_tunnel_over_wss_with_the_generated_ca(tls_stack: Stack) -> None:
    st = tls_stack
    assert st.cp.url.startswith("https://") and st.cp.edge_url.startswith("wss://")
    assert st.cp.ca_file.exists()
    with targets.serve(targets.Echo) as tport:
        port = st.tunnel("tls-echo", "127.0.0.1", tport)
        st.start_agent()
        st.wait_log(f"127.0.0.1:{tport}", 10)
        tok = st.user("tls@example.com", "127.0.0.2")
        st.session(tok, "127.0.0.2")
        s = connect(port, "127.0.0.2")
        payload = os.urandom(200_000)
        assert echo_roundtrip(s, payload) == payload
        s.close()


def test_agent_without_the_ca_refuses_the_server(tls_stack: Stack) -> None:
    st = tls_stack
    cfg = st.tmp / "no-ca.yml"
    cfg.write_text(
        f'server:\n  url: "{st.cp.url}"\n  api_key: "{st.agent_key}"\n'
        f'agent:\n  name: "x"\ntunnel:\n  enabled: true\n  edge_url: "{st.cp.edge_url}"\n'
    )
    out = subprocess.run(
        [str(BIN / "eg-agent"), "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "certificate" in out.stdout.lower() or "certificate" in out.stderr.lower()
    assert "Traceback" not in out.stdout + out.stderr
