"""Extending or replacing a session is a diff, and the edge applies each committed
transaction as one batch: nobody still covered is cut (issue 9).

Real processes: `entryguard up` (SQLite and the machine's PostgreSQL), a real `eg-agent`,
a real echo target; each test user connects from its own loopback address.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from entryguard.control.db.database import Database, sqlite_url_for
from entryguard.control.services import resources, roles
from tests.conftest import make_control_plane, pg_create_database, pg_drop_database
from tests.e2e import targets
from tests.e2e.tunnel_env import Stack, connect, wait_until


@dataclass
class Env:
    st: Stack
    port: int  # the echo tunnel's port
    db_url: str


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp(f"extend-{request.param}")
    url = pg_create_database() if request.param == "postgresql" else None
    cp = make_control_plane(tmp, url, ports=10)
    st = Stack(cp=cp, tmp=tmp)
    try:
        cp.start()
        st.setup()
        st.start_agent()
        with targets.serve(targets.Echo) as echo_port:
            port = st.tunnel("ext-db", "127.0.0.1", echo_port)
            st.wait_log(f"127.0.0.1:{echo_port}", 10)
            (tmp / "scripts").mkdir()
            st.call(
                "POST",
                "/admin/resources",
                json={
                    "name": "fw",
                    "type": "script",
                    "agent": "prod-agent",
                    "script_dir": str(tmp / "scripts"),
                },
            )
            st.call("POST", "/admin/roles/developers/resources", json={"resource": "fw"})
            yield Env(st, port, url or sqlite_url_for(cp.data_dir))
    finally:
        st.stop_agent()
        cp.stop()
        if url:
            pg_drop_database(url)


_n = 0


def new_user(env: Env, source: str) -> tuple[str, str]:
    global _n
    _n += 1
    email = f"ext{_n}@example.com"
    return email, env.st.user(email, source)


def echoes(s: socket.socket) -> bool:
    try:
        s.settimeout(3)
        s.sendall(b"still here")
        got = b""
        while len(got) < 10:
            chunk = s.recv(100)
            if not chunk:
                return False
            got += chunk
        return got == b"still here"
    except OSError:
        return False


def is_cut(s: socket.socket, timeout: float = 3.0) -> bool:
    """The edge reset the connection (or closed it) within ``timeout``."""
    s.settimeout(timeout)
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def admitted(port: int, source: str) -> bool:
    try:
        s = connect(port, source)
    except OSError:
        return False
    with s:
        return echoes(s)


def fw_commands(env: Env, cidr: str) -> list[tuple[str, str]]:
    items = env.st.call("GET", "/admin/commands", params={"limit": 1000})["items"]
    return [(c["action"], c["cidr"]) for c in reversed(items) if c["cidr"] == cidr]


def active_sessions(env: Env, email: str) -> list[dict[str, Any]]:
    items = env.st.call("GET", "/admin/sessions", params={"active": "true"})["items"]
    return [x for x in items if x["user_email"] == email]


def edge_revision(env: Env) -> float:
    text = httpx.get(env.st.cp.edge_url.replace("ws://", "http://") + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("entryguard_edge_revision "):
            return float(line.split()[1])
    raise AssertionError("entryguard_edge_revision not in /metrics")


def test_extension_from_the_same_ip_keeps_live_connections_and_moves_the_expiry(
    env: Env,
) -> None:
    src = "127.0.0.2"
    _, token = new_user(env, src)
    first = env.st.session(token, src, "4s")["session"]
    conn = connect(env.port, src)
    assert echoes(conn)
    applies = fw_commands(env, f"{src}/32")
    assert applies == [("apply", f"{src}/32")]

    second = env.st.session(token, src, "1h")["session"]
    assert second["id"] != first["id"]
    assert second["expires_at"] > first["expires_at"]
    assert echoes(conn), "extending the session cut the user's own connection"
    # Past the first session's expiry: the edge now holds the new expiry.
    time.sleep(5)
    assert echoes(conn), "the edge still enforced the old expiry"
    assert admitted(env.port, src)
    # No revoke/apply for the script resource: its CIDR stayed covered throughout.
    assert fw_commands(env, f"{src}/32") == applies
    conn.close()


def test_a_new_ip_cuts_the_old_one_and_admits_the_new(env: Env) -> None:
    old_ip, new_ip = "127.0.0.3", "127.0.0.4"
    email, token = new_user(env, old_ip)
    env.st.session(token, old_ip, "1h")
    conn = connect(env.port, old_ip)
    assert echoes(conn)

    env.st.session(token, new_ip, "1h")
    assert is_cut(conn), "the old IP's live connection survived the move"
    conn.close()
    assert admitted(env.port, new_ip)
    assert not admitted(env.port, old_ip)
    assert fw_commands(env, f"{old_ip}/32") == [
        ("apply", f"{old_ip}/32"),
        ("revoke", f"{old_ip}/32"),
    ]
    assert fw_commands(env, f"{new_ip}/32") == [("apply", f"{new_ip}/32")]
    # The audit names both addresses.
    audit = env.st.call("GET", "/admin/audit", params={"action": "session.start", "limit": 5})
    latest = [e for e in audit["items"] if e["actor"] == email][-1]
    assert latest["details"]["ip"] == new_ip and latest["details"]["previous_ip"] == old_ip


def test_twenty_concurrent_starts_leave_one_session_and_cut_nobody(env: Env) -> None:
    src = "127.0.0.5"
    email, token = new_user(env, src)
    env.st.session(token, src, "1h")
    conn = connect(env.port, src)
    assert echoes(conn)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            env.st.session(token, src, "2h")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(active_sessions(env, email)) == 1
    assert echoes(conn), "a concurrent start cut the live connection"
    assert fw_commands(env, f"{src}/32") == [("apply", f"{src}/32")]
    conn.close()


async def _edit_role(db_url: str, *, add_back: bool) -> None:
    """A role edit in ONE transaction, written by another process (as another replica
    would): remove the tunnel from the role and, with ``add_back``, add it again."""
    db = Database(db_url)
    try:
        async with db.write() as s:
            role = await roles.get_role(s, "developers")
            res = await resources.get_resource(s, "ext-db")
            await roles.remove_resource(s, role, res, "admin@example.com")
            if add_back:
                await roles.add_resource(s, role, res, "admin@example.com")
    finally:
        await db.dispose()


def test_a_role_edit_that_removes_and_re_adds_a_resource_cuts_nobody(env: Env) -> None:
    src = "127.0.0.6"
    _, token = new_user(env, src)
    env.st.session(token, src, "1h")
    conn = connect(env.port, src)
    assert echoes(conn)

    before = edge_revision(env)
    asyncio.run(_edit_role(env.db_url, add_back=True))
    # The edge hears of it through NOTIFY (PostgreSQL) or the replica's re-check (SQLite).
    assert wait_until(lambda: edge_revision(env) > before, 10), "the edge never got the edit"
    time.sleep(0.3)
    assert echoes(conn), "removing and re-adding in one transaction cut a covered user"

    # The counter-case: removed for good, the same connection is cut.
    before = edge_revision(env)
    asyncio.run(_edit_role(env.db_url, add_back=False))
    assert wait_until(lambda: edge_revision(env) > before, 10)
    assert is_cut(conn)
    conn.close()
    env.st.call("POST", "/admin/roles/developers/resources", json={"resource": "ext-db"})
