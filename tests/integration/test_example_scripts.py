"""examples/scripts/{iptables,ufw} against recording stand-ins for iptables, ufw and
conntrack (the nginx example runs against a real nginx in tests/e2e/test_scripts.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

EXAMPLES = ROOT / "examples" / "scripts"
# A tiny iptables: -C/-I/-D over a file of "CHAIN RULE…" lines.
FAKE_IPTABLES = """#!/bin/sh
echo "$(basename "$0") $*" >> "$CALLS"
[ "$1" = -w ] && shift
op=$1 chain=$2
shift 2
case $op in
  -C) grep -qxF "$chain $*" "$STATE" ;;
  -I) shift; echo "$chain $*" >> "$STATE" ;;
  -D) grep -vxF "$chain $*" "$STATE" > "$STATE.new" || true; mv "$STATE.new" "$STATE" ;;
esac
"""
FAKE_CONNTRACK = """#!/bin/sh
echo "conntrack $*" >> "$CALLS"
echo "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted." >&2
exit 1
"""
FAKE_UFW = """#!/bin/sh
echo "ufw $*" >> "$CALLS"
"""


class Host:
    def __init__(self, tmp: Path, conntrack: bool = True) -> None:
        self.bin = tmp / "bin"
        self.bin.mkdir()
        tools = {"iptables": FAKE_IPTABLES, "ip6tables": FAKE_IPTABLES, "ufw": FAKE_UFW}
        if conntrack:
            tools["conntrack"] = FAKE_CONNTRACK
        for name, text in tools.items():
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        self.calls = tmp / "calls"
        self.state = tmp / "state"
        self.calls.touch()
        self.state.touch()

    def run(self, script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(EXAMPLES / script), *args],
            env={
                "PATH": f"{self.bin}:/usr/bin:/bin",
                "CALLS": str(self.calls),
                "STATE": str(self.state),
                "LANG": os.environ.get("LANG", "C"),
                **env,
            },
            capture_output=True,
            text=True,
            timeout=10,
        )

    def log(self) -> list[str]:
        return self.calls.read_text().splitlines()


RULE = "-s {} -p tcp -m multiport --dports 22 -m comment --comment entryguard -j ACCEPT"


def test_iptables_apply_is_idempotent_and_revoke_flushes_conntrack(tmp_path: Path) -> None:
    h = Host(tmp_path)
    desc = "session 1 a@example.com; $(touch X)"
    for _ in range(2):
        r = h.run("iptables/apply.sh", "203.0.113.7/32", desc)
        assert r.returncode == 0, r.stderr
    assert h.state.read_text() == f"INPUT {RULE.format('203.0.113.7/32')}\n"
    assert [c for c in h.log() if " -I " in c] == [
        f"iptables -w -I INPUT 1 {RULE.format('203.0.113.7/32')}"
    ]
    assert "already allowed" in r.stdout
    r = h.run("iptables/revoke.sh", "203.0.113.7/32", desc)
    assert r.returncode == 0, r.stderr
    assert h.state.read_text() == ""
    assert h.log()[-1] == "conntrack -D -f ipv4 -s 203.0.113.7"
    assert "no connections from 203.0.113.7/32" in r.stdout
    assert not (tmp_path / "X").exists()


@pytest.mark.parametrize(
    ("cidr", "tool", "flush"),
    [
        ("10.1.0.0/16", "iptables", "-f ipv4 -s 10.1.0.0 --mask-src 255.255.0.0"),
        ("10.2.3.0/25", "iptables", "-f ipv4 -s 10.2.3.0 --mask-src 255.255.255.128"),
        ("2001:db8::1/128", "ip6tables", "-f ipv6 -s 2001:db8::1"),
        ("2001:db8::/36", "ip6tables", "-f ipv6 -s 2001:db8:: --mask-src ffff:ffff:f000:0:0:0:0:0"),
    ],
)
def test_iptables_revoke_of_networks_and_ipv6(
    tmp_path: Path, cidr: str, tool: str, flush: str
) -> None:
    h = Host(tmp_path)
    assert h.run("iptables/apply.sh", cidr, "rule 1", EG_IPTABLES_PORTS="all").returncode == 0
    r = h.run("iptables/revoke.sh", cidr, "rule 1", EG_IPTABLES_PORTS="all")
    assert r.returncode == 0, r.stderr
    rule = f"-s {cidr} -m comment --comment entryguard -j ACCEPT"
    assert h.log()[:2] == [f"{tool} -w -C INPUT {rule}", f"{tool} -w -I INPUT 1 {rule}"]
    assert f"{tool} -w -D INPUT {rule}" in h.log()
    assert h.log()[-1] == f"conntrack -D {flush}"


def test_revoke_without_conntrack_removes_the_rule_and_fails_loudly(tmp_path: Path) -> None:
    h = Host(tmp_path, conntrack=False)
    h.run("iptables/apply.sh", "198.51.100.9/32", "x")
    r = h.run("iptables/revoke.sh", "198.51.100.9/32", "x")
    assert r.returncode == 3 and "conntrack is not installed" in r.stderr
    assert h.state.read_text() == ""
    r = h.run("iptables/revoke.sh", "198.51.100.9/32", "x", EG_CONNTRACK_FLUSH="0")
    assert r.returncode == 0


@pytest.mark.parametrize("script", ["iptables/apply.sh", "ufw/revoke.sh", "nginx/apply.sh"])
def test_examples_refuse_anything_but_a_cidr(tmp_path: Path, script: str) -> None:
    h = Host(tmp_path)
    r = h.run(script, "10.0.0.1/32;deny all", "x", EG_NGINX_ALLOWLIST=str(tmp_path / "a.conf"))
    assert r.returncode == 2 and "invalid CIDR" in r.stderr
    assert h.log() == [] and not (tmp_path / "a.conf").exists()


def test_ufw_allows_and_deletes_each_port_then_flushes(tmp_path: Path) -> None:
    h = Host(tmp_path)
    env = {"EG_UFW_PORTS": "22,443"}
    assert h.run("ufw/apply.sh", "203.0.113.8/32", "s", **env).returncode == 0
    r = h.run("ufw/revoke.sh", "203.0.113.8/32", "s", **env)
    assert r.returncode == 0, r.stderr
    spec = "from 203.0.113.8/32 to any port {} proto tcp"
    assert h.log() == [
        f"ufw allow {spec.format(22)} comment entryguard",
        f"ufw allow {spec.format(443)} comment entryguard",
        f"ufw delete allow {spec.format(22)}",
        f"ufw delete allow {spec.format(443)}",
        "conntrack -D -f ipv4 -s 203.0.113.8",
    ]


def test_nginx_rolls_back_a_change_nginx_rejects(tmp_path: Path) -> None:
    h = Host(tmp_path)
    allow = tmp_path / "allow.conf"
    allow.write_text("allow 10.0.0.0/8;\n")
    env = {"EG_NGINX_ALLOWLIST": str(allow), "EG_NGINX_RELOAD": "true"}
    r = h.run("nginx/apply.sh", "203.0.113.9/32", "s", EG_NGINX_TEST="false", **env)
    assert r.returncode == 1 and "back as it was" in r.stderr
    assert allow.read_text() == "allow 10.0.0.0/8;\n"
    r = h.run("nginx/apply.sh", "203.0.113.9/32", "s", EG_NGINX_TEST="true", **env)
    assert r.returncode == 0, r.stderr
    assert allow.read_text() == "allow 10.0.0.0/8;\nallow 203.0.113.9/32;\n"
    r = h.run("nginx/revoke.sh", "10.0.0.0/8", "s", EG_NGINX_TEST="true", **env)
    assert r.returncode == 0 and allow.read_text() == "allow 203.0.113.9/32;\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["allow.conf", "bin", "calls", "state"]
