"""Script mode end to end: `entryguard up`, a real `eg-agent run` (scripts and tunnel
mode in one process), real scripts, the real `eg` CLI, and nginx for the nginx example."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import BIN, ROOT, free_port, make_control_plane, require_tool
from tests.e2e import targets
from tests.e2e.tunnel_env import Stack, connect, wait_until

EXAMPLES = ROOT / "examples" / "scripts"
EVIL = "'; touch X; $(touch X) `touch X`"
LOG_SCRIPT = """#!/bin/sh
printf '%s|%s|%s|%s|%s\\n' "$EG_ACTION" "$1" "$2" "$EG_CIDR" "$EG_DESCRIPTION" >> "$SCRIPT_LOG"
"""
SLOW_SCRIPT = """#!/bin/sh
sleep 300 &
echo $! > "$CHILD_PID_FILE"
echo "started a child"
sleep 300
"""
FLAKY_APPLY = """#!/bin/sh
if [ ! -e "$FLAKY_FLAG" ]; then
  echo "flaky: backend not ready for $1" >&2
  exit 3
fi
echo "flaky: applied $1"
"""
FLAKY_REVOKE = """#!/bin/sh
echo "flaky: revoked $1"
"""
OUTSIDE_SCRIPT = """#!/bin/sh
touch "$OUTSIDE_MARKER"
"""


@dataclass
class ScriptStack(Stack):
    """The tunnel Stack, with an agent that also runs scripts from temp directories."""

    allowed: Path = Path()
    outside: Path = Path()
    env: dict[str, str] = field(default_factory=dict)
    nginx_conf: Path = Path()
    nginx_port: int = 0

    @property
    def script_log(self) -> Path:
        return self.tmp / "script.log"

    def build(self) -> None:
        self.allowed = self.tmp / "allowed"
        self.outside = self.tmp / "outside"
        for d, files in {
            self.allowed / "log": {"apply.sh": LOG_SCRIPT, "revoke.sh": LOG_SCRIPT},
            self.allowed / "slow": {"apply.sh": SLOW_SCRIPT, "revoke.sh": SLOW_SCRIPT},
            self.allowed / "flaky": {"apply.sh": FLAKY_APPLY, "revoke.sh": FLAKY_REVOKE},
            self.outside: {"apply.sh": OUTSIDE_SCRIPT, "revoke.sh": OUTSIDE_SCRIPT},
        }.items():
            d.mkdir(parents=True)
            for name, text in files.items():
                (d / name).write_text(text)
                (d / name).chmod(0o755)
        # A symlinked script and a symlinked directory, both escaping allowed/.
        (self.allowed / "escape").mkdir()
        (self.allowed / "escape" / "apply.sh").symlink_to(self.outside / "apply.sh")
        (self.allowed / "linkdir").symlink_to(self.outside)
        self.script_log.touch()
        self.nginx_conf = self.tmp / "nginx" / "nginx.conf"
        self.nginx_port = free_port()
        nginx = f"-p {self.nginx_conf.parent} -c {self.nginx_conf}"
        self.env = {
            **os.environ,
            "EG_AGENT_HEARTBEAT_INTERVAL": "0.5",
            "SCRIPT_LOG": str(self.script_log),
            "CHILD_PID_FILE": str(self.tmp / "child.pid"),
            "FLAKY_FLAG": str(self.tmp / "flaky.ok"),
            "OUTSIDE_MARKER": str(self.tmp / "outside-ran"),
            "EG_NGINX_ALLOWLIST": str(self.nginx_conf.parent / "allowlist.conf"),
            "EG_NGINX_TEST": f"nginx -t -q {nginx}",
            "EG_NGINX_RELOAD": f"nginx {nginx} -s reload",
        }

    def write_agent_config(self, extra: str = "", edge_url: str | None = None) -> Path:
        cfg = self.tmp / "agent.yml"
        dirs = json.dumps([str(self.allowed), str(EXAMPLES / "nginx")])
        cfg.write_text(
            f'server:\n  url: "{self.cp.url}/api/v1"\n  api_key: "{self.agent_key}"\n'
            f'agent:\n  name: "prod-agent"\n'
            f'tunnel:\n  enabled: true\n  edge_url: "{edge_url or self.cp.edge_url}"\n'
            f"scripts:\n  enabled: true\n  allowed_dirs: {dirs}\n  timeout: 2s\n{extra}"
        )
        return cfg

    def start_agent(
        self, extra: str = "", wait_connected: bool = True, edge_url: str | None = None
    ) -> None:
        cfg = self.write_agent_config(extra, edge_url)
        self.agent_log = self.tmp / "agent.log"
        log = open(self.agent_log, "ab")  # noqa: SIM115 - owned by the process
        self.agent_proc = subprocess.Popen(
            [str(BIN / "eg-agent"), "run", "--config", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.tmp,
        )
        n = self.agent_log.read_text().count("[scripts] waiting for commands")
        self.wait_log("[scripts] waiting for commands", 20, count=n + 1)
        if wait_connected:
            self.wait_log("[tunnel] connected to edge", 20)

    def script_resource(self, name: str, script_dir: Path, role: str | None = None) -> None:
        body = {
            "name": name,
            "type": "script",
            "agent": "prod-agent",
            "script_dir": str(script_dir),
        }
        self.call("POST", "/admin/resources", json=body)
        if role:
            self.call("POST", f"/admin/roles/{role}/resources", json={"resource": name})

    def rule(self, resource: str, cidr: str, description: str = "") -> int:
        body = {"resource": resource, "cidr": cidr, "description": description}
        return int(self.call("POST", "/admin/rules", json=body)["rule"]["id"])

    def lines(self) -> list[list[str]]:
        return [ln.split("|") for ln in self.script_log.read_text().splitlines()]

    def wait_script(self, action: str, cidr: str, timeout: float = 10) -> list[str]:
        def find() -> list[str] | None:
            return next((ln for ln in self.lines() if ln[:2] == [action, cidr]), None)

        assert wait_until(lambda: find() is not None, timeout), (
            f"{action} {cidr} never ran: {self.lines()[-5:]}\n{self.agent_log_tail()}"
        )
        found = find()
        assert found is not None
        return found

    def commands(self, **params: Any) -> list[dict[str, Any]]:
        return list(self.call("GET", "/admin/commands", params=params)["items"])

    def wait_command(self, pred: Any, timeout: float = 10, **params: Any) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def check() -> bool:
            found[:] = [c for c in self.commands(**params) if pred(c)]
            return bool(found)

        assert wait_until(check, timeout, interval=0.1), (
            f"no such command: {self.commands()[:5]}\n{self.agent_log_tail()}"
        )
        return found[0]

    def agent_log_tail(self) -> str:
        return self.agent_log.read_text()[-3000:] if self.agent_log else ""

    def eg(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EG_")}
        env.update(HOME=str(self.tmp), EG_SERVER=self.cp.url, EG_TOKEN=self.admin)
        return subprocess.run(
            [str(BIN / "eg"), *args], env=env, capture_output=True, text=True, timeout=30
        )

    def agent_row(self) -> dict[str, Any]:
        items = self.call("GET", "/admin/agents")["items"]
        return next(a for a in items if a["key_name"] == "prod-agent")


@pytest.fixture(scope="module")
def st(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptStack]:
    tmp = tmp_path_factory.mktemp("scripts")
    cp = make_control_plane(tmp, None)
    cp.args += ["--agent-offline-after", "2"]  # 4 missed beats at EG_AGENT_HEARTBEAT_INTERVAL
    cp.start()
    stack = ScriptStack(cp=cp, tmp=tmp)
    try:
        stack.setup()
        stack.build()
        stack.script_resource("fw", stack.allowed / "log", role="developers")
        stack.start_agent()
        yield stack
    finally:
        stack.stop_agent()
        cp.stop()


def test_session_start_applies_and_stop_revokes_the_session_ip(st: ScriptStack) -> None:
    tok = st.user("dev1@example.com", "127.0.0.2")
    t0 = time.monotonic()
    sess = st.session(tok, "127.0.0.2")["session"]
    desc = f"session {sess['id']} dev1@example.com"
    line = st.wait_script("apply", "127.0.0.2/32", timeout=5)
    assert time.monotonic() - t0 < 2, "a grant reaches the script within 2 s"
    assert line == ["apply", "127.0.0.2/32", desc, "127.0.0.2/32", desc]
    st.stop_session(tok)
    assert st.wait_script("revoke", "127.0.0.2/32") == [
        "revoke",
        "127.0.0.2/32",
        desc,
        "127.0.0.2/32",
        desc,
    ]
    done = st.commands(agent="prod-agent")[:2]
    assert [(c["action"], c["status"], c["exit_code"]) for c in done] == [
        ("revoke", "done", 0),
        ("apply", "done", 0),
    ]


def test_a_hostile_description_reaches_the_script_verbatim(st: ScriptStack) -> None:
    rid = st.rule("fw", "198.51.100.0/24", EVIL)
    line = st.wait_script("apply", "198.51.100.0/24")
    assert line[2] == line[4] == f"rule {rid} {EVIL}"
    for d in (st.allowed / "log", st.tmp, Path.cwd(), ROOT):
        assert not (d / "X").exists(), d


def test_fifty_grants_are_applied_in_order(st: ScriptStack) -> None:
    cidrs = [f"10.50.{i}.0/24" for i in range(50)]
    t0 = time.monotonic()
    with httpx.Client(
        base_url=st.api, headers={"Authorization": f"Bearer {st.admin}"}, timeout=30
    ) as c:
        for cidr in cidrs:
            r = c.post("/admin/rules", json={"resource": "fw", "cidr": cidr})
            assert r.status_code == 201, r.text
    st.wait_script("apply", cidrs[-1], timeout=20)
    ran = [ln[1] for ln in st.lines() if ln[0] == "apply" and ln[1].startswith("10.50.")]
    assert ran == cidrs
    print(f"50 grants queued and applied in {time.monotonic() - t0:.2f} s")


def test_timeout_kills_the_script_and_its_child_and_tunnels_carry_on(st: ScriptStack) -> None:
    st.script_resource("slow", st.allowed / "slow")
    with targets.serve(targets.Echo) as tport:
        port = st.tunnel("echo", "127.0.0.1", tport, role=None)
        st.rule("echo", "127.0.0.4/32")
        st.wait_log(f"127.0.0.1:{tport}", 10)
        st.rule("slow", "203.0.113.0/24")
        pid_file = st.tmp / "child.pid"
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 5)
        child = int(pid_file.read_text())
        # While the script hangs, the tunnel carries bytes as usual.
        with connect(port, "127.0.0.4") as s:
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
        cmd = st.wait_command(lambda c: c["resource"] == "slow", timeout=10, failed="true")
    assert cmd["exit_code"] is None
    assert cmd["output"].startswith("[eg-agent] timed out after 2 s")
    assert "started a child" in cmd["output"]
    assert 2000 <= cmd["duration_ms"] < 6000
    assert wait_until(lambda: _gone(child), 3), f"child {child} survived the timeout"
    # The queue goes on.
    st.rule("fw", "203.0.113.77/32")
    st.wait_script("apply", "203.0.113.77/32")


def _gone(pid: int) -> bool:
    """Dead, or a zombie nobody reaped yet (this container's init may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_scripts_outside_allowed_dirs_are_refused_and_reported(st: ScriptStack) -> None:
    cases = {
        "outside": st.outside,
        "escape": st.allowed / "escape",  # apply.sh is a symlink to outside/apply.sh
        "linked": st.allowed / "linkdir",  # the directory is a symlink to outside/
    }
    for name, d in cases.items():
        st.script_resource(name, d)
        st.rule(name, "192.0.2.0/24")
    for name in cases:
        cmd = st.wait_command(lambda c, n=name: c["resource"] == n, failed="true")
        assert "outside scripts.allowed_dirs" in cmd["output"], cmd
        assert str(st.outside / "apply.sh") in cmd["output"]
        assert cmd["exit_code"] is None
    assert not (st.tmp / "outside-ran").exists()
    assert "refused" in st.agent_log_tail()


def test_a_failed_apply_is_listed_with_output_and_a_retry_runs_it(st: ScriptStack) -> None:
    st.script_resource("flaky", st.allowed / "flaky")
    st.rule("flaky", "100.64.0.0/16")
    failed = st.wait_command(lambda c: c["resource"] == "flaky", failed="true")
    r = st.eg("admin", "commands", "--failed")
    assert r.returncode == 0, r.stderr
    assert f"#{failed['id']}  apply 100.64.0.0/16 on flaky" in r.stdout
    assert "failed (exit 3)" in r.stdout
    assert "| flaky: backend not ready for 100.64.0.0/16" in r.stdout
    (st.tmp / "flaky.ok").touch()
    r = st.eg("admin", "commands", "retry", str(failed["id"]))
    assert r.returncode == 0, r.stderr
    assert f"Command {failed['id']} queued again as command" in r.stdout
    done = st.wait_command(lambda c: c["resource"] == "flaky" and c["status"] == "done")
    assert done["id"] > failed["id"] and "flaky: applied 100.64.0.0/16" in done["output"]
    assert st.eg("admin", "commands", "--failed").stdout.count("on flaky") == 0
    r = st.eg("admin", "commands", "retry", str(failed["id"]))
    assert r.returncode == 1 and "already retried" in r.stderr

    # A failed apply does not hold up the revoke of the same grant.
    (st.tmp / "flaky.ok").unlink()
    rid = st.rule("flaky", "100.65.0.0/16")
    st.wait_command(lambda c: c["cidr"] == "100.65.0.0/16", failed="true")
    st.call("DELETE", f"/admin/rules/{rid}")
    rev = st.wait_command(lambda c: c["cidr"] == "100.65.0.0/16" and c["status"] == "done")
    assert rev["action"] == "revoke" and "flaky: revoked" in rev["output"]


def test_nginx_example_admits_and_refuses_real_requests(st: ScriptStack) -> None:
    require_tool("nginx")
    conf_dir = st.nginx_conf.parent
    conf_dir.mkdir()
    (conf_dir / "allowlist.conf").touch()
    # stub_status answers in the content phase, after allow/deny (a `return` would
    # answer before access checks).
    st.nginx_conf.write_text(
        f"worker_processes 1;\ndaemon off;\npid {conf_dir}/nginx.pid;\n"
        f"error_log {conf_dir}/error.log;\nevents {{ worker_connections 64; }}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {conf_dir}/body;\n"
        f"  server {{\n    listen 127.0.0.1:{st.nginx_port};\n    location / {{\n"
        f"      include {conf_dir}/allowlist.conf;\n      deny all;\n      stub_status;\n"
        "    }\n  }\n}\n"
    )
    nginx = subprocess.Popen(
        ["nginx", "-p", str(conf_dir), "-c", str(st.nginx_conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: _listening(st.nginx_port), 5), "nginx did not start"

        def status() -> int:
            t = httpx.HTTPTransport(local_address="127.0.0.5")
            with httpx.Client(transport=t, timeout=5) as c:
                return c.get(f"http://127.0.0.1:{st.nginx_port}/").status_code

        st.script_resource("web", EXAMPLES / "nginx")
        st.call("POST", "/admin/roles", json={"name": "web-users", "max_duration": "8h"})
        st.call("POST", "/admin/roles/web-users/resources", json={"resource": "web"})
        pw = {"email": "web@example.com", "password": "user-password-1"}
        st.call("POST", "/admin/users", json=pw)
        st.call("POST", "/admin/roles/web-users/users", json={"email": "web@example.com"})
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.5")) as c:
            tok = c.post(f"{st.api}/auth/login", json=pw).json()["token"]

        assert status() == 403
        st.session(tok, "127.0.0.5")
        assert wait_until(lambda: status() == 200, 5, interval=0.1), st.agent_log_tail()
        assert "allow 127.0.0.5/32;" in (conf_dir / "allowlist.conf").read_text()
        st.stop_session(tok)
        assert wait_until(lambda: status() == 403, 5, interval=0.1), st.agent_log_tail()
        web = [c for c in st.commands() if c["resource"] == "web"]
        assert [(c["action"], c["status"]) for c in web] == [("revoke", "done"), ("apply", "done")]
        assert "allowed 127.0.0.5/32" in web[1]["output"]
    finally:
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(10)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait(5)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def test_heartbeats_offline_and_commands_queued_while_the_agent_is_stopped(
    st: ScriptStack,
) -> None:
    r = st.eg("admin", "agents", "--json")
    assert r.returncode == 0, r.stderr
    row = next(a for a in json.loads(r.stdout)["items"] if a["key_name"] == "prod-agent")
    assert row["connected"] is True and row["version"]
    assert set(row["modes"]) == {"tunnel", "scripts"}
    assert wait_until(lambda: st.agent_row()["tunnel_connected"], 3, interval=0.1)
    beat = datetime.fromisoformat(row["last_heartbeat"].replace("Z", "+00:00"))
    assert (datetime.now(UTC) - beat).total_seconds() < 2
    r = st.eg("admin", "agents")
    assert r.returncode == 0 and "prod-agent" in r.stdout and " yes " in r.stdout

    st.stop_agent()
    assert wait_until(lambda: not st.agent_row()["connected"], 8, interval=0.2)
    r = st.eg("admin", "agents")
    assert r.returncode == 0 and " no " in r.stdout

    def offline_events() -> list[dict[str, Any]]:
        return list(st.call("GET", "/admin/audit", params={"action": "agent.offline"})["items"])

    assert wait_until(lambda: offline_events(), 3, interval=0.2)
    assert offline_events()[-1]["target"] == "prod-agent"

    cidrs = [f"10.60.{i}.0/24" for i in range(5)]
    ids = [st.rule("fw", c) for c in cidrs]
    st.call("DELETE", f"/admin/rules/{ids[0]}")
    assert [c["status"] for c in st.commands(agent="prod-agent")[:6]] == ["pending"] * 6

    # Back, while the edge is unreachable: the scripts run anyway, in queue order.
    st.start_agent(wait_connected=False, edge_url=f"ws://127.0.0.1:{free_port()}")
    st.wait_script("revoke", cidrs[0])
    ran = [(ln[0], ln[1]) for ln in st.lines() if ln[1].startswith("10.60.")]
    assert ran == [("apply", c) for c in cidrs] + [("revoke", cidrs[0])]
    assert wait_until(lambda: st.agent_row()["connected"], 5, interval=0.2)
    assert st.agent_row()["tunnel_connected"] is False
