"""Two replicas and two edges on one PostgreSQL, an agent on each edge (issue 11).

Real processes on loopback against the machine's PostgreSQL (a database this module
creates and drops). The edges share one edge token under different names and listen
on different loopback hosts (127.0.0.1 and 127.0.0.2) for the same tunnel ports; edge 1
follows replica 1 first, edge 2 follows replica 2 first. What is checked:

- an access change made on replica 1 returns only once edge 2 (streaming from replica 2)
  has applied it: the connection there is already reset when the call returns;
- ``eg admin edges`` lists both edges, live, with their lag, from either replica;
- a poison X-Forwarded-For through the trusted proxy wedges no edge;
- a third edge under a name already streaming with the token is refused and says why;
- kill -9 of an edge leaves the other undisturbed, access changes stay fast, and the
  killed edge returns on the same ports;
- an edge started while its replica is down follows it once it is up;
- replica 1 losing its database (a proxy the test breaks): its edge moves to replica 2;
- an edge on `--delivery poll` follows the same log.

Kill -9 of a replica and every replica down (fail-closed, static rules kept) are in
tests/e2e/test_cluster.py; a port that cannot be bound in test_edge_resilience.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    BIN,
    PG_ADMIN_URL,
    ControlPlane,
    free_port,
    make_control_plane,
    pg_create_database,
    pg_drop_database,
)
from tests.e2e import targets
from tests.e2e.test_cluster import echoes, is_cut, session_on, stop_on
from tests.e2e.test_db_outage import FaultProxy
from tests.e2e.tunnel_env import Stack, connect, wait_until


@dataclass
class Edge:
    name: str
    host: str
    port: int
    urls: list[str]
    token: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    start_args: list[str] = field(default_factory=list)

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        args = [str(BIN / "entryguard"), "edge", "--edge-token", self.token, "--name", self.name]
        for u in self.urls:
            args += ["--control-url", u]
        args += ["--listen", f"{self.host}:{self.port}", "--offline-grace", "0", *self.start_args]
        self.proc = subprocess.Popen(
            args,
            stdout=open(self.log, "ab"),  # noqa: SIM115 - owned by the process
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def health(self) -> tuple[int, dict]:
        try:
            r = httpx.get(f"{self.http}/health", timeout=2)
        except httpx.HTTPError:
            return 0, {}
        return r.status_code, r.json()

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(10)


@dataclass
class Agent:
    cfg: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "eg-agent"), "run", "--config", str(self.cfg)],
            stdout=open(self.log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )

    def connected(self) -> bool:
        return "[tunnel] connected to edge" in self.log.read_text()


@dataclass
class Cluster:
    r1: ControlPlane
    r2: ControlPlane
    st: Stack
    e1: Edge
    e2: Edge
    a2: Agent
    port: int
    db_url: str
    token: str
    extra: list[Edge] = field(default_factory=list)
    proxy: FaultProxy | None = None


def eg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "entryguard"), *args], capture_output=True, text=True, check=True
    )


@pytest.fixture(scope="module")
def cl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster2x2")
    url = pg_create_database()
    # Replica 1 reaches PostgreSQL through a proxy the tests can break (never the server).
    host_port = PG_ADMIN_URL.split("@", 1)[1].split("/", 1)[0]
    pg_host, _, pg_port = host_port.partition(":")
    proxy = FaultProxy((pg_host, int(pg_port or 5432)))
    proxy.start()
    user = PG_ADMIN_URL.split("//", 1)[1].split("@", 1)[0]
    via_proxy = f"postgresql://{user}@127.0.0.1:{proxy.port}/{url.rsplit('/', 1)[1]}"
    r1 = make_control_plane(tmp / "r1", via_proxy, command="server", ports=10)
    r2 = make_control_plane(tmp / "r2", url, command="server", ports=10)
    (tmp / "r1").mkdir()
    (tmp / "r2").mkdir()
    r2.args[r2.args.index("--tunnel-ports") + 1] = r1.args[r1.args.index("--tunnel-ports") + 1]
    r2.tunnel_ports, r2.admin_password = r1.tunnel_ports, r1.admin_password
    r2.args += ["--trusted-proxy", "127.0.0.11/32"]  # a "load balancer" in front of r2
    st = Stack(cp=r1, tmp=tmp)
    edges: list[Edge] = []
    a2 = Agent(tmp / "agent2.yml", tmp / "agent2.log")
    try:
        r1.start()
        r2.start()
        token = json.loads(
            eg("edge-token", "create", "--name", "pair", "--database-url", url, "--json").stdout
        )["token"]
        e1 = Edge("e1", "127.0.0.1", free_port(), [r1.url, r2.url], token, tmp / "e1.log")
        e2 = Edge(
            "e2", "127.0.0.2", free_port("127.0.0.2"), [r2.url, r1.url], token, tmp / "e2.log"
        )
        edges += [e1, e2]
        e1.start()
        e2.start()
        for e in edges:
            assert wait_until(lambda e=e: e.health()[0] == 200, 20), e.log.read_text()[-2000:]
        r1.edge_url = f"ws://{e1.host}:{e1.port}"
        st.setup()
        st.start_agent()  # on edge 1
        a2.cfg.write_text(
            st.write_agent_config().read_text().replace(r1.edge_url, f"ws://{e2.host}:{e2.port}")
        )
        a2.start()  # the same agent key, on edge 2
        assert wait_until(a2.connected, 20), a2.log.read_text()[-2000:]
        with targets.serve(targets.Echo) as echo:
            port = st.tunnel("db", "127.0.0.1", echo)
            c = Cluster(r1, r2, st, e1, e2, a2, port, url, token, extra=edges, proxy=proxy)
            yield c
    finally:
        st.stop_agent()
        if a2.proc is not None and a2.proc.poll() is None:
            a2.proc.terminate()
            a2.proc.wait(10)
        for e in edges:
            e.stop()
        r1.stop()
        r2.stop()
        proxy.close()
        pg_drop_database(url)


def edges_listed(replica: ControlPlane) -> list[dict]:
    admin = replica.login_token()
    out = subprocess.run(
        [str(BIN / "eg"), "admin", "edges", "--json", "--server", replica.url],
        capture_output=True,
        text=True,
        env={**os.environ, "EG_TOKEN": admin},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout)["items"])


def test_1_a_stop_on_replica_1_returns_once_edge_2_has_cut(cl: Cluster) -> None:
    token = cl.st.user("one@example.com", "127.0.0.5")
    session_on(cl.r1, token, "127.0.0.5")  # returns once both edges admit
    assert echoes(cl.port, "127.0.0.5", cl.e2.host), "edge 2 did not admit on return"
    assert echoes(cl.port, "127.0.0.5", cl.e1.host)
    s2 = connect(cl.port, "127.0.0.5", host=cl.e2.host)
    s1 = connect(cl.port, "127.0.0.5", host=cl.e1.host)
    for s in (s1, s2):
        s.sendall(b"ping")
        assert s.recv(4) == b"ping"
    t0 = time.monotonic()
    stop_on(cl.r1, token)
    took = time.monotonic() - t0
    # Edge 2 streams from replica 2; replica 1 waited for its acknowledgement.
    assert is_cut(s2, 0.2), "the call returned before edge 2 had cut the connection"
    assert is_cut(s1, 0.2)
    assert took < 1.0, took
    s1.close()
    s2.close()


def test_2_eg_admin_edges_lists_both_from_either_replica(cl: Cluster) -> None:
    for replica in (cl.r1, cl.r2):
        items = {e["name"]: e for e in edges_listed(replica)}
        assert {"e1", "e2"} <= set(items), items
        for name in ("e1", "e2"):
            e = items[name]
            assert e["live"] is True and e["health"] == "ok", e
            assert e["token"] == "pair"
        assert items["e2"]["address"] == "127.0.0.1"  # where its stream comes from
        assert items["e1"]["replica"] != items["e2"]["replica"]  # each on its first replica
    # Lag is counted against the newest revision: both are caught up at rest.
    assert wait_until(lambda: all(e["lag"] == 0 for e in edges_listed(cl.r1) if e["live"]), 5), (
        edges_listed(cl.r1)
    )


def test_2b_a_poison_forwarded_for_wedges_nobody(cl: Cluster) -> None:
    """A session started through the trusted proxy with X-Forwarded-For `fe80::1%eth0`
    (a zone id no edge can parse) gets the proxy's own address; both edges stay healthy
    and keep applying what follows."""
    token = cl.st.user("poison@example.com", "127.0.0.11")
    t = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.11"))
    r = t.post(
        f"{cl.r2.url}/api/v1/sessions",
        json={"duration": "1h"},
        headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "fe80::1%eth0"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    assert r.json()["session"]["ip"] == "127.0.0.11", r.json()
    assert echoes(cl.port, "127.0.0.11", cl.e2.host)
    other = cl.st.user("after-poison@example.com", "127.0.0.12")
    session_on(cl.r1, other, "127.0.0.12")
    for e in (cl.e1, cl.e2):
        assert echoes(cl.port, "127.0.0.12", e.host), e.name
        code, body = e.health()
        assert code == 200 and not body.get("problems"), body


def test_3_a_second_edge_under_a_taken_name_is_refused(cl: Cluster, tmp_path: Path) -> None:
    dup = Edge(
        "e1", "127.0.0.3", free_port("127.0.0.3"), [cl.r2.url], cl.token, tmp_path / "dup.log"
    )
    cl.extra.append(dup)
    dup.start()

    def refused() -> bool:
        code, body = dup.health()
        return code == 503 and any("already streaming" in p for p in body.get("problems", []))

    assert wait_until(refused, 15), (dup.health(), dup.log.read_text()[-2000:])
    assert "give each edge its own --name" in dup.log.read_text()
    listed = [e for e in edges_listed(cl.r1) if e["name"] == "e1"]
    assert len(listed) == 1 and listed[0]["live"], listed  # the original keeps its place
    assert echoes(cl.port, "127.0.0.9", cl.e1.host) is False  # (no grant: just alive)
    assert cl.e1.health()[0] == 200
    dup.stop()


def test_4_kill_9_of_an_edge_leaves_the_other_alone(cl: Cluster) -> None:
    token = cl.st.user("four@example.com", "127.0.0.6")
    session_on(cl.r2, token, "127.0.0.6")
    s1 = connect(cl.port, "127.0.0.6", host=cl.e1.host)
    s1.sendall(b"ping")
    assert s1.recv(4) == b"ping"
    cl.e2.stop(kill=True)
    # Access changes do not wait on the dead edge.
    other = cl.st.user("four-b@example.com", "127.0.0.7")
    t0 = time.monotonic()
    session_on(cl.r1, other, "127.0.0.7")
    assert time.monotonic() - t0 < 1.5
    s1.sendall(b"pong")
    assert s1.recv(4) == b"pong", "the live edge's connection was disturbed"
    cl.e2.start()  # back on the same ports
    assert wait_until(lambda: cl.e2.health()[0] == 200, 20), cl.e2.log.read_text()[-2000:]
    assert wait_until(lambda: echoes(cl.port, "127.0.0.6", cl.e2.host), 20)
    assert wait_until(lambda: echoes(cl.port, "127.0.0.7", cl.e2.host), 5)
    s1.close()


def test_5_an_edge_started_before_its_replica_follows_it_once_up(
    cl: Cluster, tmp_path: Path
) -> None:
    assert cl.r2.proc is not None
    cl.r2.proc.kill()
    cl.r2.proc.wait(5)
    late = Edge(
        "late", "127.0.0.4", free_port("127.0.0.4"), [cl.r2.url], cl.token, tmp_path / "late.log"
    )
    cl.extra.append(late)
    late.start()
    assert wait_until(lambda: late.health()[0] == 503, 15), (
        "an edge with no control plane did not say so: " + late.log.read_text()[-2000:]
    )
    cl.r2.start()
    assert wait_until(lambda: late.health()[0] == 200, 20), late.log.read_text()[-2000:]
    assert any(e["name"] == "late" and e["live"] for e in edges_listed(cl.r1))
    late.stop()
    assert echoes(cl.port, "127.0.0.6")  # edge 1 stayed with us throughout


def test_6_replica_1_loses_its_database_and_its_edge_moves(cl: Cluster, tmp_path: Path) -> None:
    """Through the proxy replica 1 uses: its /health turns 503, edge 1 leaves it for
    replica 2, and a stop made there cuts a connection on edge 1 (about 2 s measured)."""
    assert cl.proxy is not None
    # An edge that can only follow replica 1 must fail closed after its grace: a replica
    # that cannot read its log does not vouch for "nothing new".
    solo = Edge(
        "solo", "127.0.0.13", free_port("127.0.0.13"), [cl.r1.url], cl.token, tmp_path / "s.log"
    )
    solo.start_args = ["--offline-grace", "3s"]
    cl.extra.append(solo)
    solo.start()
    assert wait_until(lambda: solo.health()[0] == 200, 20), solo.log.read_text()[-2000:]
    token = cl.st.user("db-loss@example.com", "127.0.0.10")
    session_on(cl.r2, token, "127.0.0.10")
    assert wait_until(lambda: echoes(cl.port, "127.0.0.10", cl.e1.host), 5)
    s = connect(cl.port, "127.0.0.10", host=cl.e1.host)
    cl.proxy.down()
    try:
        t0 = time.monotonic()
        stop_on(cl.r2, token)
        assert is_cut(s, 10), "a stop stayed unapplied on the edge of the replica without a DB"
        took = time.monotonic() - t0
        assert took < 8, took
        assert httpx.get(f"{cl.r1.url}/api/v1/health", timeout=5).status_code == 503
        assert cl.e1.health()[0] == 200  # on replica 2 now, and says so
        assert "trying the control plane at" in cl.e1.log.read_text()

        def solo_closed() -> bool:
            code, body = solo.health()
            return code == 503 and body.get("status") == "fail-closed"

        assert wait_until(solo_closed, 3 + 10), (solo.health(), solo.log.read_text()[-1500:])
        print(f"fail-closed after {time.monotonic() - t0:.1f} s (grace 3 s)")
    finally:
        cl.proxy.up()
        s.close()
    assert wait_until(
        lambda: httpx.get(f"{cl.r1.url}/api/v1/health", timeout=5).status_code == 200, 10
    )
    assert wait_until(lambda: solo.health()[0] == 200, 15), solo.log.read_text()[-1500:]
    solo.stop()


def test_7_an_edge_on_long_poll_still_follows(cl: Cluster) -> None:
    """`--delivery poll` (for proxies that do not pass WebSockets) follows the same log:
    edge 2 restarted on long-poll, its agent reconnects, and a stop on the other replica
    still cuts."""
    poll = cl.e2
    poll.stop()
    poll.start_args = ["--delivery", "poll"]
    before = cl.a2.log.read_text().count("[tunnel] connected to edge")
    poll.start()
    assert wait_until(lambda: poll.health()[0] == 200, 20), poll.log.read_text()[-2000:]
    assert wait_until(
        lambda: cl.a2.log.read_text().count("[tunnel] connected to edge") > before, 20
    ), cl.a2.log.read_text()[-2000:]
    token = cl.st.user("six@example.com", "127.0.0.8")
    session_on(cl.r1, token, "127.0.0.8")
    assert wait_until(lambda: echoes(cl.port, "127.0.0.8", poll.host), 5)
    s = connect(cl.port, "127.0.0.8", host=poll.host)
    stop_on(cl.r1, token)
    assert is_cut(s, 3), "a stop on the other replica did not reach the polling edge"
    s.close()
