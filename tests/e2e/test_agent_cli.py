"""`eg-agent init|check|version` and the operator's `entryguard` commands, as people type
them: the real console scripts against a real `entryguard up --public-host`.

One control plane serves the module (with a public host, so connection strings are not
the default 127.0.0.1); `db upgrade` gets a scratch PostgreSQL database of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from entryguard import __version__
from tests.conftest import (
    BIN,
    ControlPlane,
    make_control_plane,
    pg_create_database,
    pg_drop_database,
    require_tool,
)
from tests.e2e.test_cli_flow import Eg, assert_one_line_error, login

PUBLIC_HOST = "example.internal"
TARGET = "10.0.1.50:5432"
PG = ["psql", "-X", "-q", "-A", "-t", "-U", "postgres", "-d", "test", "-h", "127.0.0.1"]


def agent(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EG_") and k != "COLUMNS"}
    return subprocess.run(
        [str(BIN / "eg-agent"), *args],
        env={**base, **(env or {})},
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,  # not a terminal: no prompts
        capture_output=True,
        text=True,
        timeout=60,
    )


def entryguard(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EG_")}
    return subprocess.run(
        [str(BIN / "entryguard"), *args], env=env, capture_output=True, text=True, timeout=60
    )


@dataclass
class Stack:
    cp: ControlPlane
    admin: Eg
    key: str
    port: int


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("agent-cli")
    cp = make_control_plane(tmp, None)
    cp.args += ["--public-host", PUBLIC_HOST]
    cp.start()
    try:
        admin = Eg(tmp / "admin-home")
        login(admin, cp.url, cp.admin_email, cp.admin_password)
        created = admin.ok("admin", "apikey", "create", "prod-agent", "--scope", "agent:connect")
        key = re.search(r"^  (eg_\S+)$", created, re.M)
        assert key
        out = admin.ok(
            "admin",
            "resource",
            "create",
            "production-db",
            "--type",
            "tunnel",
            "--agent",
            "prod-agent",
            "--target",
            TARGET,
        )
        m = re.fullmatch(
            rf"✓ Created tunnel resource production-db: {PUBLIC_HOST}:(\d+) → {TARGET}\n", out
        )
        assert m, out
        yield Stack(cp, admin, key.group(1), int(m.group(1)))
    finally:
        cp.stop()


def init_args(st: Stack, path: Path, *extra: str, key: str | None = None) -> list[str]:
    return [
        "init",
        "--config",
        str(path),
        "--server-url",
        st.cp.url,
        "--api-key",
        key or st.key,
        "--name",
        "prod-agent",
        *extra,
    ]


def test_init_writes_a_private_config_that_check_accepts(stack: Stack, tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    path = tmp_path / "etc" / "config.yml"  # the directory does not exist yet
    r = agent(
        *init_args(
            stack, path, "--tunnel", "--edge-url", stack.cp.edge_url, "--scripts-dir", str(scripts)
        )
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"✓ wrote {path} (mode 0600)"
    assert f"eg-agent check --config {path}" in r.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert yaml.safe_load(path.read_text()) == {
        "server": {"url": stack.cp.url, "api_key": stack.key},
        "agent": {"name": "prod-agent"},
        "tunnel": {"enabled": True, "edge_url": stack.cp.edge_url},
        "scripts": {"enabled": True, "allowed_dirs": [str(scripts)], "timeout": "30s"},
    }
    r = agent("check", "--config", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        f"✓ config {path} is valid (modes: tunnel, scripts)",
        f"✓ control plane {stack.cp.url}/api/v1 accepted the API key",
        f"✓ tunnels served by this agent: {TARGET}",
        f"✓ edge {stack.cp.edge_url} accepted the agent's WebSocket",
        f"✓ script directory {scripts}",
        "✓ all checks passed",
    ]
    data = json.loads(agent("check", "--config", str(path), "--json").stdout)
    assert data["ok"] is True and data["problems"] == 0 and data["modes"] == ["tunnel", "scripts"]
    assert all(c["ok"] for c in data["checks"]) and len(data["checks"]) == 5

    # An existing file is kept unless --force; --force rewrites it private again.
    before = path.read_text()
    assert_one_line_error(
        agent(*init_args(stack, path, "--tunnel", "--edge-url", "ws://x")),
        1,
        "already exists",
        "--force",
    )
    assert path.read_text() == before
    path.chmod(0o644)
    r = agent(
        *init_args(stack, path, "--tunnel", "--edge-url", stack.cp.edge_url, "--force", "--json")
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"config": str(path), "mode": "0600", "modes": ["tunnel"]}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert yaml.safe_load(path.read_text())["scripts"]["enabled"] is False


def test_init_refuses_what_it_cannot_write(stack: Stack, tmp_path: Path) -> None:
    p = tmp_path / "c.yml"
    cases = [
        (
            ["init", "--config", str(p), "--server-url", stack.cp.url, "--name", "a", "--tunnel"],
            2,
            "stdin is not a terminal",
            "pass --api-key KEY --edge-url URL",
        ),
        (["init", "--config", str(p)], 2, "--server-url URL --api-key KEY --name NAME"),
        (init_args(stack, p, "--tunnel"), 2, "pass --edge-url URL"),
        (
            init_args(stack, p, "--tunnel", "--edge-url", "http://127.0.0.1:1"),
            1,
            "tunnel.edge_url",
            "ws://",
        ),
        (init_args(stack, p, "--tunnel", "--edge-url"), 2, "--edge-url"),
    ]
    for args, code, *needles in cases:
        assert_one_line_error(agent(*args), code, *needles)
    bad_key = init_args(stack, p, "--tunnel", "--edge-url", stack.cp.edge_url, key="hunter2")
    assert_one_line_error(agent(*bad_key), 1, "server.api_key", "eg admin apikey create")
    assert not p.exists()


def test_check_says_what_is_wrong(stack: Stack, tmp_path: Path) -> None:
    wrong_key = stack.key[:-4] + ("aaaa" if not stack.key.endswith("aaaa") else "bbbb")
    path = tmp_path / "wrong.yml"
    r = agent(*init_args(stack, path, "--tunnel", "--edge-url", stack.cp.edge_url, key=wrong_key))
    assert r.returncode == 0, r.stderr
    r = agent("check", "--config", str(path))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("✓ config ")
    assert any(
        ln.startswith("✗ ") and "API key was refused" in ln and "server.api_key" in ln
        for ln in lines
    ), lines
    assert any(
        ln.startswith(f"✗ edge {stack.cp.edge_url} refused the WebSocket (HTTP 403)")
        for ln in lines
    ), lines
    assert lines[-1] == "2 problem(s) found"
    data = json.loads(agent("check", "--config", str(path), "--json").stdout)
    assert data["ok"] is False and data["problems"] == 2
    # A broken file and a missing one are one line each, naming the file.
    broken = tmp_path / "broken.yml"
    broken.write_text("server: [\n  url: x\n")
    assert_one_line_error(
        agent("check", "--config", str(broken)), 1, str(broken), "not valid YAML", "line"
    )
    missing = tmp_path / "nope.yml"
    assert_one_line_error(
        agent("check", "--config", str(missing)), 1, f"no config file at {missing}", "eg-agent init"
    )


def test_eg_agent_config_is_the_default_path(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "from-env.yml"
    env = {"EG_AGENT_CONFIG": str(path)}
    args = init_args(stack, path, "--tunnel", "--edge-url", stack.cp.edge_url)
    del args[1:3]  # no --config: EG_AGENT_CONFIG says where
    r = agent(*args, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"✓ wrote {path} (mode 0600)\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    r = agent("check", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"✓ config {path} is valid (modes: tunnel)\n")
    assert r.stdout.endswith("✓ all checks passed\n")
    # --config wins over the variable.
    other = tmp_path / "other.yml"
    assert_one_line_error(
        agent("check", "--config", str(other), env=env), 1, f"no config file at {other}"
    )


def test_version() -> None:
    r = agent("version")
    assert r.returncode == 0 and r.stdout == f"eg-agent {__version__}\n"
    assert json.loads(agent("version", "--json").stdout) == {
        "name": "eg-agent",
        "version": __version__,
    }
    assert_one_line_error(agent("version", "--bogus"), 2, "--bogus", "eg-agent version --help")


def test_public_host_in_connection_strings(stack: Stack) -> None:
    admin = stack.admin
    conn = f"{PUBLIC_HOST}:{stack.port}"
    listed = admin.ok("admin", "resource", "list")
    assert re.search(
        rf"production-db\s+tunnel\s+prod-agent\s+{stack.port}\s+{conn} → {TARGET}$", listed, re.M
    ), listed
    (item,) = admin.json("admin", "resource", "list")["items"]
    assert item["connection"] == conn and item["port"] == stack.port
    admin.ok("admin", "role", "create", "developers")
    admin.ok("admin", "role", "add-resource", "developers", "production-db")
    admin.ok("admin", "role", "add-user", "developers", stack.cp.admin_email)
    out = admin.ok("session", "start", "--duration", "1")
    assert f"Tunnel resources:\n  production-db  {conn}\n" in out
    assert admin.json("session", "status")["resources"][0]["connection"] == conn
    assert re.search(rf"^production-db\s+tunnel\s+{conn}$", admin.ok("resources"), re.M)
    admin.ok("session", "stop")


def test_h_is_help() -> None:
    long, short = agent("--help"), agent("-h")
    assert long.returncode == short.returncode == 0, short.stderr
    assert short.stdout == long.stdout and "Usage: eg-agent" in short.stdout
    sub = agent("init", "-h")
    assert sub.returncode == 0 and sub.stdout == agent("init", "--help").stdout
    assert "--server-url" in sub.stdout


def test_init_without_a_mode_writes_server_and_agent_and_shows_the_sections(
    stack: Stack, tmp_path: Path
) -> None:
    path = tmp_path / "config.yml"
    r = agent(*init_args(stack, path))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert yaml.safe_load(path.read_text()) == {
        "server": {"url": stack.cp.url, "api_key": stack.key},
        "agent": {"name": "prod-agent"},
    }
    lines = r.stdout.splitlines()
    assert lines[0] == f"✓ wrote {path} (mode 0600)"
    assert 'tunnel:\n  enabled: true\n  edge_url: "ws://' in r.stdout
    assert "scripts:\n  enabled: true\n  allowed_dirs: ['/etc/eg-agent/scripts']\n" in r.stdout
    assert f"eg-agent check --config {path}" in r.stdout
    # What it prints is YAML that, appended, makes a config with that mode.
    data = json.loads(agent(*init_args(stack, path, "--force", "--json")).stdout)
    assert data["modes"] == [] and set(data["add_one_of"]) == {"tunnel", "scripts"}
    assert data["add_one_of"]["tunnel"] in r.stdout and data["add_one_of"]["scripts"] in r.stdout
    base = path.read_text()
    for mode, section in data["add_one_of"].items():
        loaded = yaml.safe_load(base + section)
        assert loaded[mode]["enabled"] is True, loaded

    # check and run refuse the file in one line naming what to add, and start nothing.
    for cmd in ("check", "run"):
        assert_one_line_error(
            agent(cmd, "--config", str(path)),
            1,
            f"no mode enabled in {path}",
            "tunnel: section",
            "edge_url",
            "scripts: section",
        )
    assert_one_line_error(agent("check", "--config", str(path), "--json"), 1, "no mode enabled")
    # A section that is there but not enabled is no mode either.
    path.write_text(base + "tunnel:\n  enabled: false\n  edge_url: ws://127.0.0.1:1\n")
    assert_one_line_error(agent("check", "--config", str(path)), 1, "no mode enabled")


def _api(st: Stack, method: str, path: str, token: str, **kw: Any) -> Any:
    r = httpx.request(
        method,
        f"{st.cp.url}/api/v1{path}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        **kw,
    )
    assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
    return r.json() if r.content else None


@dataclass
class HandTunnel:
    """`eg-agent init` with no mode, a tunnel: section appended by hand, `eg-agent run`."""

    init: subprocess.CompletedProcess[str]
    config: Path
    proc: subprocess.Popen[bytes]
    log: Path
    port: int  # the tunnel to the machine's PostgreSQL

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output()
            if needle in text:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"eg-agent exited ({self.proc.returncode}): {text[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in the agent's output: {self.output()[-3000:]}")


@pytest.fixture(scope="module")
def hand_tunnel(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HandTunnel]:
    # After test_public_host_in_connection_strings, which expects one resource.
    tmp = tmp_path_factory.mktemp("hand-tunnel")
    admin = stack.cp.login_token()
    port = int(
        _api(
            stack,
            "POST",
            "/admin/resources",
            admin,
            json={
                "name": "local-pg",
                "type": "tunnel",
                "agent": "prod-agent",
                "target_host": "127.0.0.1",
                "target_port": 5432,
            },
        )["resource"]["port"]
    )
    _api(stack, "POST", "/admin/roles", admin, json={"name": "pg-users", "max_duration": "8h"})
    _api(stack, "POST", "/admin/roles/pg-users/resources", admin, json={"resource": "local-pg"})
    email, password = "pg-user@example.com", "pg-user-password-1"
    _api(stack, "POST", "/admin/users", admin, json={"email": email, "password": password})
    _api(stack, "POST", "/admin/roles/pg-users/users", admin, json={"email": email})
    r = httpx.post(f"{stack.cp.url}/api/v1/auth/login", json={"email": email, "password": password})
    r.raise_for_status()
    user = str(r.json()["token"])
    _api(stack, "POST", "/sessions", user, json={"duration": "1h"})  # from 127.0.0.1

    path = tmp / "config.yml"
    init = agent(*init_args(stack, path))
    assert init.returncode == 0, init.stderr
    with path.open("a") as f:  # what the tunnels guide tells users to add
        f.write(f'tunnel:\n  enabled: true\n  edge_url: "{stack.cp.edge_url}"\n')
    log = tmp / "agent.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EG_")}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(BIN / "eg-agent"), "run", "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        yield HandTunnel(init, path, proc, log, port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        # The control plane may be stopped already (test_up_stops_cleanly runs last).
        with contextlib.suppress(httpx.HTTPError):
            _api(stack, "DELETE", "/sessions/current", user)


def test_a_hand_added_tunnel_section_works_like_init_tunnel(
    stack: Stack, hand_tunnel: HandTunnel
) -> None:
    require_tool("psql")
    ht = hand_tunnel
    assert "tunnel:\n  enabled: true\n" in ht.init.stdout
    assert ht.config.read_text().count("tunnel:") == 1  # init wrote none; ours is the one
    r = agent("check", "--config", str(ht.config))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == f"✓ config {ht.config} is valid (modes: tunnel)"
    assert f"✓ edge {stack.cp.edge_url} accepted the agent's WebSocket" in r.stdout

    ht.wait_log(f"[tunnel] connected to edge at {stack.cp.edge_url}", 20)
    text = ht.output()
    assert f"[tunnel] connecting to edge at {stack.cp.edge_url}" in text
    updated = re.findall(r"\[tunnel\] targets updated: \[(.*)\]$", text, re.M)
    assert updated and "127.0.0.1:5432" in updated[-1].split(", "), text
    assert TARGET in updated[-1].split(", ")

    out = subprocess.run(
        [*PG, "-p", str(ht.port), "-c", "select 'through the tunnel', 40 + 2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "through the tunnel|42"


def _backends_running(marker: str) -> int:
    r = subprocess.run(
        [
            *PG,
            "-p",
            "5432",
            "-c",
            "select count(*) from pg_stat_activity "
            f"where query like '%{marker}%' and pid <> pg_backend_pid()",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


def test_sigterm_stops_the_agent_within_5s_and_closes_live_streams(
    stack: Stack, hand_tunnel: HandTunnel
) -> None:
    require_tool("psql")
    ht = hand_tunnel
    ht.wait_log(f"[tunnel] connected to edge at {stack.cp.edge_url}", 20)
    marker = "eg-agent-sigterm-live-stream"
    client = subprocess.Popen(
        [*PG, "-p", str(ht.port), "-c", f"select '{marker}', pg_sleep(20)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The query is running on the server, through the tunnel.
        deadline = time.monotonic() + 15
        while _backends_running(marker) == 0:
            assert client.poll() is None, client.communicate()
            assert time.monotonic() < deadline, "the query never reached PostgreSQL"
            time.sleep(0.1)
        t0 = time.monotonic()
        ht.proc.send_signal(signal.SIGTERM)
        try:
            code = ht.proc.wait(5)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"eg-agent still running 5 s after SIGTERM: {ht.output()[-3000:]}"
            ) from None
        stopped = time.monotonic() - t0
        text = ht.output()
        assert code == 0, text[-3000:]
        assert "ERROR" not in text and "Traceback" not in text, text[-3000:]
        assert "[tunnel] closing 1 open stream(s)" in text, text[-3000:]
        # The client's connection was closed, not left hanging until pg_sleep ends.
        _, err = client.communicate(timeout=5)
        assert client.returncode != 0 and time.monotonic() - t0 < 10, err
        assert "connection" in err, err
        assert stopped < 5
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(5)


def _pg_tables(url: str) -> tuple[set[str], list[str], int]:
    import asyncpg

    async def run() -> tuple[set[str], list[str], int]:
        conn = await asyncpg.connect(url)
        try:
            tables = {
                r["tablename"]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
            versions = [
                r["version_num"]
                for r in await conn.fetch("SELECT version_num FROM alembic_version")
            ]
            tokens = int(await conn.fetchval("SELECT count(*) FROM edge_tokens"))
            return tables, versions, tokens
        finally:
            await conn.close()

    return asyncio.run(run())


def test_db_upgrade_on_a_new_postgresql_database() -> None:
    from alembic.script import ScriptDirectory

    from entryguard.control.db.migrate import alembic_config

    url = pg_create_database()
    try:
        r = entryguard("db", "upgrade", "--database-url", url)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "✓ database is up to date\n"
        tables, versions, _ = _pg_tables(url)
        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        assert versions == [head]
        assert {
            "users",
            "roles",
            "resources",
            "sessions",
            "grants",
            "audit_events",
            "changes",
        } <= tables
        # Data written in between survives a second run, which changes nothing.
        token = entryguard("edge-token", "create", "--database-url", url)
        assert token.returncode == 0 and token.stdout.strip().startswith("ege_"), token.stderr
        r = entryguard("db", "upgrade", "--database-url", url, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"ok": True, "message": "database is up to date"}
        assert _pg_tables(url) == (tables, [head], 1)
    finally:
        pg_drop_database(url)
    gone = url.rsplit("/", 1)[0] + "/eg_test_does_not_exist"
    line = assert_one_line_error(entryguard("db", "upgrade", "--database-url", gone), 1)
    assert line == 'error: migration failed: database "eg_test_does_not_exist" does not exist'
    assert_one_line_error(
        entryguard("db", "upgrade", "--database-url", "mysql://x/y"),
        2,  # refused by our own check before any connection: a usage error
        "unsupported database 'mysql'",
        "postgresql://",
    )
    assert_one_line_error(entryguard("up", "--bogus"), 2, "--bogus", "entryguard up --help")


def test_up_stops_cleanly(stack: Stack) -> None:
    # Last in the module: it stops the shared control plane. The local edge's long-poll is
    # open the whole time; a stop must answer it, not cancel it with a traceback.
    proc = stack.cp.proc
    assert proc is not None and proc.poll() is None
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(15) == 0
    log = stack.cp.log()
    assert "Traceback" not in log and "timeout graceful shutdown exceeded" not in log, log[-3000:]
