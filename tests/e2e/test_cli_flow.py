"""`eg` as people type it: the real console script against a real control plane.

One control plane serves the module; the admin sets it up through `eg` itself, then a
user starts sessions. Independent refusals run in parallel to keep the suite fast.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import BIN, ControlPlane, free_port

EG = str(BIN / "eg")
DEV_EMAIL = "dev@example.com"
DEV_PASSWORD = "dev-password-123"
TARGET = "10.0.1.50:5432"


@dataclass
class Eg:
    """Runs the `eg` console script with its own HOME and config directory."""

    home: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    use_config_dir: bool = True

    @property
    def config_dir(self) -> Path:
        return (
            self.home / "eg-config" if self.use_config_dir else self.home / ".config" / "entryguard"
        )

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("EG_") and k not in ("XDG_CONFIG_HOME", "COLUMNS")
        }
        env["HOME"] = str(self.home)
        if self.use_config_dir:
            env["EG_CONFIG_DIR"] = str(self.config_dir)
        return {**env, **self.env_extra, **extra}

    def __call__(
        self, *args: str, stdin: str | None = None, **extra_env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [EG, *args],
            input=stdin,
            env=self.env(**extra_env),
            capture_output=True,
            text=True,
            timeout=30,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )

    def ok(self, *args: str, stdin: str | None = None, **extra_env: str) -> str:
        r = self(*args, stdin=stdin, **extra_env)
        assert r.returncode == 0, f"eg {' '.join(args)}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
        assert "Traceback" not in r.stderr
        return r.stdout

    def json(self, *args: str, **extra_env: str) -> Any:
        return json.loads(self.ok(*args, "--json", **extra_env))


def assert_one_line_error(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert r.returncode == code, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") or lines[0].startswith("✗ "), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def parallel(calls: Sequence[tuple[Eg, tuple[str, ...]]]) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda c: c[0](*c[1]), calls))


def login(eg: Eg, url: str, email: str, password: str, *extra: str) -> str:
    return eg.ok(
        "login",
        "--server",
        url,
        "--email",
        email,
        "--password-stdin",
        *extra,
        stdin=password + "\n",
    )


@dataclass
class World:
    cp: ControlPlane
    admin: Eg
    dev: Eg
    port: int


@pytest.fixture(scope="module", params=["sqlite", "pg"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    # Every command runs against both backends: SQLite (embedded) and the real PostgreSQL.
    cp: ControlPlane = request.getfixturevalue(
        "control_plane" if request.param == "sqlite" else "control_plane_pg"
    )
    admin = Eg(tmp_path_factory.mktemp("admin-home"))
    # The admin gives the URL with /api/v1/: the same server.
    login(admin, f"{cp.url}/api/v1/", cp.admin_email, cp.admin_password)
    admin.ok("admin", "apikey", "create", "prod-agent", "--scope", "agent:connect")
    created = admin.json(
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
    admin.ok(
        "admin",
        "resource",
        "create",
        "office-fw",
        "--type",
        "script",
        "--agent",
        "prod-agent",
        "--script-dir",
        "/etc/eg-agent/scripts",
    )
    admin.ok("admin", "role", "create", "developers", "--max-duration", "8h")
    admin.ok("admin", "role", "add-resource", "developers", "production-db")
    admin.ok("admin", "role", "add-resource", "developers", "office-fw")
    admin.ok("admin", "user", "create", DEV_EMAIL, "--password-stdin", stdin=DEV_PASSWORD)
    admin.ok("admin", "role", "add-user", "developers", DEV_EMAIL)
    # The developer relies on the defaults: no EG_CONFIG_DIR, the file lands in ~/.config/entryguard.
    dev = Eg(tmp_path_factory.mktemp("dev-home"), use_config_dir=False)
    out = login(dev, cp.url, DEV_EMAIL, DEV_PASSWORD)
    assert out.startswith(f"✓ Logged in to {cp.url} as {DEV_EMAIL}\n")
    yield World(cp, admin, dev, int(created["resource"]["port"]))


def test_login_stores_a_private_token(world: World) -> None:
    for eg in (world.admin, world.dev):
        path = eg.config_dir / "credentials.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        data = json.loads(path.read_text())
        assert data["server"] == world.cp.url
        assert data["token"].startswith("egs_") and data["expires_at"]
    who = world.dev.json("whoami")
    assert who["user"]["email"] == DEV_EMAIL and who["credential"] == "login"
    assert "admin" not in who["scopes"]
    # EG_SERVER is the default server for a login.
    fresh = Eg(world.dev.home / "fresh")
    out = fresh.ok(
        "login",
        "--email",
        DEV_EMAIL,
        "--password-stdin",
        stdin=DEV_PASSWORD,
        EG_SERVER=world.cp.url,
    )
    assert world.cp.url in out


def test_wrong_password_and_no_terminal(world: World, tmp_path: Path) -> None:
    eg = Eg(tmp_path)
    r = eg(
        "login", "--server", world.cp.url, "--email", DEV_EMAIL, "--password-stdin", stdin="nope"
    )
    assert_one_line_error(r, 1, "wrong email or password")
    r = eg("login", "--server", world.cp.url, "--email", DEV_EMAIL)
    assert_one_line_error(r, 2, "--password-stdin")
    assert not (eg.config_dir / "credentials.json").exists()


def test_session_start_prints_the_documented_shape(world: World) -> None:
    out = world.dev.ok("session", "start")
    assert out == (
        "✓ Session started\n"
        "\n"
        "Tunnel resources:\n"
        f"  production-db  127.0.0.1:{world.port}\n"
        "\n"
        "Script resources:\n"
        "  office-fw\n"
        "\n"
        "Session expires in 4h 0m\n"
    )
    assert world.cp.tunnel_ports[0] <= world.port <= world.cp.tunnel_ports[1]


def test_duration_is_capped_at_the_role_maximum(world: World) -> None:
    out = world.dev.ok("session", "start", "--duration", "24")
    lines = out.splitlines()
    assert lines[-2:] == [
        "Session expires in 8h 0m",
        "Duration capped at 8h 0m by your role's maximum (asked for 24h 0m)",
    ]
    out = world.dev.ok("session", "start", "-d", "1h30m")
    assert out.splitlines()[-1] == "Session expires in 1h 30m"


def test_status_stop_and_resources(world: World) -> None:
    world.dev.ok("session", "start", "--duration", "90s")
    status = world.dev.ok("session", "status")
    assert status.startswith("Session active\n  IP:          127.0.0.1\n")
    assert re.search(r"Expires in:  1m \d+s", status)
    assert f"  production-db  127.0.0.1:{world.port}" in status
    resources = world.dev.ok("resources")
    assert re.search(rf"production-db\s+tunnel\s+127\.0\.0\.1:{world.port}$", resources, re.M)
    assert re.search(r"office-fw\s+script\s+-$", resources, re.M)
    assert world.dev.ok("session", "stop") == "✓ Session stopped: access for 127.0.0.1 removed\n"
    assert world.dev.ok("session", "status").startswith(
        "No active session: start one with `eg session start`\n"
    )
    assert_one_line_error(world.dev("session", "stop"), 1, "no active session")


def test_bad_durations_are_refused(world: World) -> None:
    bad = ["-1", "0", "abc", "1e309", "nan", "", "1.5", "4h30"]
    calls = [(world.dev, ("session", "start", "--duration", d)) for d in bad]
    calls += [
        (world.admin, ("admin", "guest", "grant", "production-db", "203.0.113.7", "--duration", d))
        for d in ("-1", "nan")
    ]
    calls += [(world.admin, ("admin", "role", "create", "x", "--max-duration", "0"))]
    for r in parallel(calls):
        assert_one_line_error(r, 2, "duration")
        assert r.stdout == ""


BAD_CIDRS = [
    "10.0.0.5/8",
    "010.0.0.1",
    "10.0.0.0/33",
    "not-an-ip",
    "10.0.0.0/8;rm -rf /",
    "",
    "0.0.0.0/0",
]


def test_bad_cidrs_are_refused_and_any_needs_allow_any(world: World) -> None:
    admin = world.admin
    calls = [(admin, ("admin", "rule", "add", "production-db", c)) for c in BAD_CIDRS]
    calls += [
        (admin, ("admin", "guest", "grant", "production-db", c, "--duration", "1h"))
        for c in BAD_CIDRS
    ]
    results = parallel(calls)
    for cidr, r in zip(BAD_CIDRS * 2, results, strict=True):
        line = assert_one_line_error(r, 2)
        if cidr == "0.0.0.0/0":
            assert "--allow-any" in line
    assert "host bits are set (did you mean 10.0.0.0/8?)" in results[0].stderr
    assert "leading zeros" in results[1].stderr
    rule = admin.json(
        "admin",
        "rule",
        "add",
        "production-db",
        "0.0.0.0/0",
        "--allow-any",
        "--description",
        "status",
    )
    assert rule["rule"]["cidr"] == "0.0.0.0/0"
    guest = admin.json(
        "admin",
        "guest",
        "grant",
        "production-db",
        "0.0.0.0/0",
        "--allow-any",
        "--duration",
        "2h",
        "--note",
        "demo",
    )
    assert guest["guest"]["active"] is True
    listed = admin.ok("admin", "rule", "list", "production-db")
    assert re.search(
        rf"^{rule['rule']['id']}\s+production-db\s+0\.0\.0\.0/0\s+status", listed, re.M
    )
    assert admin.ok("admin", "guest", "revoke", str(guest["guest"]["id"])).startswith(
        "✓ Revoked guest access"
    )
    assert admin.ok("admin", "rule", "remove", str(rule["rule"]["id"])).startswith("✓ Removed rule")
    assert_one_line_error(
        admin("admin", "rule", "remove", str(rule["rule"]["id"])), 1, "no static rule"
    )


def test_non_admin_is_refused_admin_commands(world: World) -> None:
    for r in parallel(
        [
            (world.dev, ("admin", "user", "list")),
            (world.dev, ("admin", "audit", "--verify")),
            (
                world.dev,
                (
                    "admin",
                    "resource",
                    "create",
                    "x",
                    "--type",
                    "tunnel",
                    "--agent",
                    "prod-agent",
                    "--target",
                    TARGET,
                ),
            ),
        ]
    ):
        assert_one_line_error(r, 1, "needs an admin")


def test_admin_lists_and_json(world: World) -> None:
    admin = world.admin
    resources = admin.ok("admin", "resource", "list")
    assert re.search(
        rf"production-db\s+tunnel\s+prod-agent\s+{world.port}\s+127\.0\.0\.1:{world.port} → {TARGET}",
        resources,
    )
    assert re.search(
        r"developers\s+8h 0m\s+office-fw, production-db\s+dev@example\.com",
        admin.ok("admin", "role", "list"),
    )
    commands = [
        ("whoami",),
        ("resources",),
        ("session", "status"),
        ("admin", "user", "list"),
        ("admin", "role", "list"),
        ("admin", "apikey", "list"),
        ("admin", "resource", "list"),
        ("admin", "rule", "list"),
        ("admin", "guest", "list", "--active"),
        ("admin", "session", "list"),
        ("admin", "agents"),
        ("admin", "audit", "--since", "1h"),
        ("admin", "audit", "--verify"),
    ]
    results = parallel([(admin, (*c, "--json")) for c in commands])
    parsed = {
        c: json.loads(r.stdout) for c, r in zip(commands, results, strict=True) if r.returncode == 0
    }
    assert len(parsed) == len(commands), [r.stderr for r in results if r.returncode]
    assert any(u["email"] == DEV_EMAIL for u in parsed[("admin", "user", "list")]["items"])
    assert parsed[("admin", "agents")]["items"][0]["targets"] == [TARGET]
    assert parsed[("admin", "audit", "--verify")]["ok"] is True


def test_user_create_generates_a_password_and_disable(world: World, tmp_path: Path) -> None:
    r = world.admin("admin", "user", "create", "temp@example.com")
    assert r.returncode == 0 and "will not be shown again" in r.stderr
    password = re.search(r"^Password: (\S+)$", r.stdout, re.M)
    assert password
    temp = Eg(tmp_path)
    login(temp, world.cp.url, "temp@example.com", password.group(1))
    assert world.admin.ok("admin", "user", "disable", "temp@example.com").startswith(
        "✓ Disabled temp@example.com"
    )
    assert_one_line_error(temp("resources"), 1, "run `eg login`")


def test_api_key_from_eg_token(world: World, tmp_path: Path) -> None:
    r = world.admin("admin", "apikey", "create", "ci", "--scope", "sessions", "--expires-in", "30d")
    assert r.returncode == 0 and "will not be shown again" in r.stderr
    key = re.search(r"^  (eg_\S+)$", r.stdout, re.M)
    assert key
    assert key.group(1) not in world.admin.ok("admin", "apikey", "list")
    bare = Eg(tmp_path)  # no stored login at all
    env = {"EG_SERVER": world.cp.url, "EG_TOKEN": key.group(1)}
    who = bare.json("whoami", **env)
    assert who["credential"] == "api_key" and who["scopes"] == ["sessions"]
    assert bare.ok("resources", **env).startswith("Your roles give you no resources yet")
    assert_one_line_error(bare("admin", "user", "list", **env), 1, "needs an admin")
    world.admin.ok("admin", "apikey", "revoke", "ci")
    assert_one_line_error(bare("resources", **env), 1, "EG_TOKEN", "revoked")


def test_not_logged_in_and_stale_tokens(world: World, tmp_path: Path) -> None:
    bare = Eg(tmp_path)
    assert_one_line_error(bare("resources", EG_SERVER=world.cp.url), 1, "not logged in", "eg login")
    # A stored token is never sent to another server than the one it came from.
    other = f"http://127.0.0.1:{free_port()}"
    assert_one_line_error(world.dev("resources", EG_SERVER=other), 1, f"not logged in to {other}")
    bare.config_dir.mkdir(mode=0o700)
    (bare.config_dir / "credentials.json").write_text(
        json.dumps({"server": world.cp.url, "token": "egs_expired", "email": DEV_EMAIL})
    )
    line = assert_one_line_error(bare("session", "status"), 1)
    assert line == "error: not logged in or your login expired: run `eg login`"


def test_unreachable_server(world: World, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    bare = Eg(tmp_path)
    expected = (
        f"error: cannot reach the EntryGuard server at {url}: connection refused — is it running? "
        "(set --server or EG_SERVER)"
    )
    r1 = bare("session", "start", EG_SERVER=url, EG_TOKEN="egs_x")
    assert assert_one_line_error(r1, 1) == expected
    r2 = bare("login", "--server", url, "--email", "a@b.c", "--password-stdin", stdin="pw")
    assert assert_one_line_error(r2, 1) == expected


def _sql(cp: ControlPlane, query: str, *args: object) -> list[tuple[object, ...]]:
    """Run SQL straight against the control plane's database, as an attacker with disk access would."""
    if cp.database_url is None:
        db = sqlite3.connect(cp.data_dir / "entryguard.db")
        try:
            with db:
                return list(db.execute(query, args).fetchall())
        finally:
            db.close()
    import asyncio

    import asyncpg

    async def run() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(cp.database_url)
        try:
            q = query
            for i in range(len(args)):
                q = q.replace("?", f"${i + 1}", 1)
            return [tuple(r) for r in await conn.fetch(q, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


def test_audit_verify_detects_tampering(world: World) -> None:
    out = world.admin.ok("admin", "audit", "--verify")
    m = re.fullmatch(r"✓ audit chain intact \((\d+) events\)\n", out)
    assert m and int(m.group(1)) > 5
    ((actor,),) = _sql(world.cp, "SELECT actor FROM audit_events WHERE id = 3")
    try:
        _sql(world.cp, "UPDATE audit_events SET actor = 'mallory' WHERE id = 3")
        r = world.admin("admin", "audit", "--verify")
        line = assert_one_line_error(r, 1, "event 3")
        assert line.startswith("✗ audit chain broken at event 3: ")
        assert world.admin("admin", "audit", "--verify", "--json").returncode == 1
    finally:
        _sql(world.cp, "UPDATE audit_events SET actor = ? WHERE id = 3", actor)
    assert world.admin.ok("admin", "audit", "--verify").startswith("✓ audit chain intact")


def test_audit_follow_until_ctrl_c(world: World) -> None:
    proc = subprocess.Popen(
        [EG, "admin", "audit", "--follow", "--json", "--limit", "1"],
        env=world.admin.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        world.dev.ok("session", "start", "-d", "1")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            event = json.loads(proc.stdout.readline())
            if event["action"] == "session.start" and event["id"] > first["id"]:
                break
        else:
            pytest.fail("no session.start event followed")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err


def test_usage_errors_and_help(world: World) -> None:
    r_missing, r_option, r_help, r_root = parallel(
        [
            (world.admin, ("admin", "user", "create")),
            (world.admin, ("session", "start", "--forever")),
            (world.admin, ("admin", "guest", "grant", "--help")),
            (world.admin, ("--help",)),
        ]
    )
    assert_one_line_error(r_missing, 2, "Missing argument 'EMAIL'", "eg admin user create --help")
    assert_one_line_error(r_option, 2, "--forever")
    assert "--allow-any" in r_help.stdout and "Examples:" in r_help.stdout
    assert "eg session start" in r_root.stdout and "EG_TOKEN" in r_root.stdout


def test_logout_revokes_the_token(world: World, tmp_path: Path) -> None:
    eg = Eg(tmp_path)
    login(eg, world.cp.url, DEV_EMAIL, DEV_PASSWORD)
    token = json.loads((eg.config_dir / "credentials.json").read_text())["token"]
    assert eg.json("logout") == {
        "logged_out": True,
        "server": world.cp.url,
        "revoked": True,
        "profile": "default",
    }
    assert not (eg.config_dir / "credentials.json").exists()
    r = httpx.get(
        f"{world.cp.url}/api/v1/auth/whoami", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 401
    assert eg.ok("logout") == "Not logged in.\n"


def test_profiles_keep_admin_and_user_side_by_side(world: World, tmp_path: Path) -> None:
    """`--profile NAME` (before or after the command) and EG_PROFILE pick a stored login;
    the default profile is the plain credentials.json; logout removes only its own."""
    eg = Eg(tmp_path)
    login(eg, world.cp.url, world.cp.admin_email, world.cp.admin_password)
    # A new profile logs in to the default login's server when --server is not given.
    out = eg.ok(
        "login", "--profile", "dev", "--email", DEV_EMAIL, "--password-stdin", stdin=DEV_PASSWORD
    )
    assert out.startswith(f"✓ Logged in to {world.cp.url} as {DEV_EMAIL} (profile dev)\n")
    assert "Next: eg --profile dev session start" in out
    for name in ("credentials.json", "credentials-dev.json"):
        assert stat.S_IMODE((eg.config_dir / name).stat().st_mode) == 0o600
    admin = eg.json("whoami")
    assert admin["user"]["email"] == world.cp.admin_email and admin["profile"] == "default"
    for args, env in [
        (("--profile", "dev", "whoami"), {}),
        (("whoami", "--profile", "dev"), {}),
        (("whoami",), {"EG_PROFILE": "dev"}),
        (("--profile", "default", "whoami", "--profile", "dev"), {}),  # the closest one wins
    ]:
        who = eg.json(*args, **env)
        assert who["user"]["email"] == DEV_EMAIL and who["profile"] == "dev", args
    assert "  Profile:       dev\n" in eg.ok("whoami", "--profile", "dev")
    # Each identity keeps its own rights: dev starts a session, and is refused admin commands.
    started = eg.ok("session", "start", "--duration", "30m", "--profile", "dev")
    assert started.startswith("✓ Session started\n") and f":{world.port}" in started
    assert_one_line_error(eg("--profile", "dev", "admin", "user", "list"), 1)
    eg.ok("admin", "user", "list")
    eg.ok("--profile", "dev", "session", "stop")
    # Logging out of dev leaves the admin logged in.
    assert "Logged out of" in eg.ok("logout", "--profile", "dev")
    assert not (eg.config_dir / "credentials-dev.json").exists()
    assert_one_line_error(eg("whoami", "--profile", "dev"), 1, "eg login --profile dev")
    assert eg.json("whoami")["user"]["email"] == world.cp.admin_email
    assert_one_line_error(eg("whoami", "--profile", "../x"), 2, "invalid profile name")
