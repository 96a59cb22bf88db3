"""Two replicas on one PostgreSQL, an edge following both, a real agent (issue 11).

Real processes on loopback against the machine's PostgreSQL (a database this module
creates and drops): a revocation on either replica cuts a connection on the edge; a
replica killed with -9 is left for the other within seconds; with every replica down
the edge fails closed after its grace (static rules still admitted) and opens again
when one is back, which audits the episode.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    BIN,
    ControlPlane,
    free_port,
    make_control_plane,
    pg_create_database,
    pg_drop_database,
)
from tests.e2e import targets
from tests.e2e.tunnel_env import Stack, connect, wait_until

GRACE = 4  # --offline-grace, seconds


@dataclass
class Cluster:
    r1: ControlPlane
    r2: ControlPlane
    st: Stack  # admin calls go to r1 unless told otherwise
    edge: subprocess.Popen[bytes]
    edge_http: str
    edge_log: Path
    port: int  # the echo tunnel's port
    db_url: str

    def health(self) -> tuple[int, dict]:
        r = httpx.get(f"{self.edge_http}/health", timeout=3)
        return r.status_code, r.json()


def session_on(replica: ControlPlane, token: str, source: str, duration: str = "1h") -> None:
    t = httpx.Client(transport=httpx.HTTPTransport(local_address=source))
    r = t.post(
        f"{replica.url}/api/v1/sessions",
        json={"duration": duration},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 201, r.text


def stop_on(replica: ControlPlane, token: str) -> None:
    r = httpx.delete(
        f"{replica.url}/api/v1/sessions/current",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text


def echoes(port: int, source: str, host: str = "127.0.0.1") -> bool:
    """An echo round trip through the edge on ``host`` from ``source``."""
    try:
        s = connect(port, source, timeout=2, host=host)
    except OSError:
        return False
    with s:
        try:
            s.sendall(b"ping")
            return s.recv(4) == b"ping"
        except OSError:
            return False


def is_cut(s, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    s.settimeout(timeout)
    try:
        return s.recv(10) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.fixture(scope="module")
def cl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    url = pg_create_database()
    r1 = make_control_plane(tmp / "r1", url, command="server", ports=10)
    r2 = make_control_plane(tmp / "r2", url, command="server", ports=10)
    (tmp / "r1").mkdir()
    (tmp / "r2").mkdir()
    # One cluster: the same tunnel ports and the admin the first replica created.
    r2.args[r2.args.index("--tunnel-ports") + 1] = r1.args[r1.args.index("--tunnel-ports") + 1]
    r2.tunnel_ports, r2.admin_password = r1.tunnel_ports, r1.admin_password
    edge_proc = None
    st = Stack(cp=r1, tmp=tmp)
    try:
        r1.start()
        r2.start()
        token = subprocess.run(
            [str(BIN / "entryguard"), "edge-token", "create", "--database-url", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        token = next(w for w in token.split() if w.startswith("ege_"))
        edge_port = free_port()
        edge_log = tmp / "edge.log"
        edge_proc = subprocess.Popen(
            [
                str(BIN / "entryguard"),
                "edge",
                "--control-url",
                r1.url,
                "--control-url",
                r2.url,
                "--edge-token",
                token,
                "--listen",
                f"127.0.0.1:{edge_port}",
                "--offline-grace",
                f"{GRACE}s",
                "--name",
                "e1",
            ],
            stdout=open(edge_log, "wb"),  # noqa: SIM115 - owned by the process
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        r1.edge_url = f"ws://127.0.0.1:{edge_port}"
        edge_http = f"http://127.0.0.1:{edge_port}"
        assert wait_until(lambda: _ok(edge_http), 20), edge_log.read_text()[-2000:]
        st.setup()
        st.start_agent()
        with targets.serve(targets.Echo) as echo:
            port = st.tunnel("db", "127.0.0.1", echo)
            st.call("POST", "/admin/rules", json={"resource": "db", "cidr": "127.0.0.9/32"})
            yield Cluster(r1, r2, st, edge_proc, edge_http, edge_log, port, url)
    finally:
        st.stop_agent()
        if edge_proc is not None and edge_proc.poll() is None:
            edge_proc.terminate()
            edge_proc.wait(10)
        r1.stop()
        r2.stop()
        pg_drop_database(url)


def _ok(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_1_a_stop_on_the_other_replica_cuts_a_connection_on_the_edge(cl: Cluster) -> None:
    token = cl.st.user("one@example.com", "127.0.0.2")
    session_on(cl.r2, token, "127.0.0.2")
    assert wait_until(lambda: echoes(cl.port, "127.0.0.2"), 5)
    s = connect(cl.port, "127.0.0.2")
    t0 = time.monotonic()
    stop_on(cl.r2, token)  # the edge follows r1; r1 hears of it through NOTIFY
    assert is_cut(s, 3), "the stop on replica 2 did not reach the edge"
    assert time.monotonic() - t0 < 3
    s.close()


def test_2_a_killed_replica_is_left_for_the_other(cl: Cluster) -> None:
    token = cl.st.user("two@example.com", "127.0.0.3")
    session_on(cl.r2, token, "127.0.0.3")
    assert wait_until(lambda: echoes(cl.port, "127.0.0.3"), 5)
    s = connect(cl.port, "127.0.0.3")
    assert cl.r1.proc is not None
    cl.r1.proc.kill()  # kill -9: no goodbye to anyone
    cl.r1.proc.wait(5)
    t0 = time.monotonic()
    stop_on(cl.r2, token)
    assert is_cut(s, 10), "a stop made on the surviving replica never reached the edge"
    assert time.monotonic() - t0 < 10
    s.close()
    # And a start made there arrives too.
    session_on(cl.r2, token, "127.0.0.3")
    assert wait_until(lambda: echoes(cl.port, "127.0.0.3"), 10)
    assert "trying the control plane at" in cl.edge_log.read_text()
    assert cl.health()[0] == 200


def test_3_with_every_replica_down_the_edge_fails_closed_and_static_rules_stay(
    cl: Cluster,
) -> None:
    token = cl.st.users["two@example.com"]
    del token
    s = connect(cl.port, "127.0.0.3")  # the session from test 2 is live
    assert cl.r2.proc is not None
    cl.r2.proc.kill()
    cl.r2.proc.wait(5)
    t0 = time.monotonic()
    assert is_cut(s, GRACE + 8), "the session's connection outlived the offline grace"
    elapsed = time.monotonic() - t0
    assert GRACE - 1 < elapsed < GRACE + 8, elapsed
    s.close()
    code, body = cl.health()
    assert code == 503 and body["status"] == "fail-closed"
    assert not echoes(cl.port, "127.0.0.3"), "a session grant admitted while fail-closed"
    assert echoes(cl.port, "127.0.0.9"), "a static rule stopped admitting"

    cl.r2.start()  # a replica is back: the edge syncs and opens again
    assert wait_until(lambda: cl.health()[0] == 200, 15), cl.health()
    assert echoes(cl.port, "127.0.0.3")
    admin = httpx.post(
        f"{cl.r2.url}/api/v1/auth/login",
        json={"email": cl.r2.admin_email, "password": cl.r2.admin_password},
    ).json()["token"]

    def audited() -> bool:
        r = httpx.get(
            f"{cl.r2.url}/api/v1/admin/audit",
            params={"action": "edge.fail_closed"},
            headers={"Authorization": f"Bearer {admin}"},
        )
        return bool(r.json()["items"])

    assert wait_until(audited, 10), "the fail-closed episode was not audited"


def test_4_a_revoked_edge_token_ends_that_edges_stream_within_2_s(
    cl: Cluster, tmp_path: Path
) -> None:
    eg = str(BIN / "entryguard")
    made = subprocess.run(
        [eg, "edge-token", "create", "--name", "e2", "--database-url", cl.db_url, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    token = json.loads(made.stdout)["token"]
    port = free_port("127.0.0.2")
    log = tmp_path / "e2.log"
    edge2 = subprocess.Popen(
        [
            eg,
            "edge",
            "--control-url",
            cl.r2.url,
            "--edge-token",
            token,
            "--listen",
            f"127.0.0.2:{port}",  # a second edge host: the same tunnel ports on 127.0.0.2
            "--name",
            "e2",
        ],
        stdout=open(log, "wb"),  # noqa: SIM115 - owned by the process
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert wait_until(lambda: _ok(f"http://127.0.0.2:{port}"), 20), log.read_text()
        listed = subprocess.run(
            [eg, "edge-token", "list", "--database-url", cl.db_url, "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "e2" in [i["name"] for i in json.loads(listed.stdout)["items"]]
        t0 = time.monotonic()
        subprocess.run(
            [eg, "edge-token", "revoke", "e2", "--database-url", cl.db_url],
            capture_output=True,
            text=True,
            check=True,
        )

        def cut_off() -> bool:
            r = httpx.get(f"http://127.0.0.2:{port}/health", timeout=2).json()
            return r["control_plane"]["connected"] is False

        assert wait_until(cut_off, 5), log.read_text()[-2000:]
        assert time.monotonic() - t0 < 2.5, "the revoked token kept its stream too long"
        assert "the edge token was revoked" in log.read_text()

        def refused_on_health() -> bool:
            # It keeps trying, is refused at the door, and says why on /health.
            r = httpx.get(f"http://127.0.0.2:{port}/health", timeout=2).json()
            return any("invalid edge token" in p for p in r.get("problems", []))

        assert wait_until(refused_on_health, 10), log.read_text()[-2000:]
        # The edge that follows with its own token is undisturbed.
        assert cl.health()[0] == 200
    finally:
        edge2.terminate()
        edge2.wait(10)
