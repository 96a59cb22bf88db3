"""A whole tunnel stack on loopback: `entryguard up`, a real `eg-agent run`, real targets."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import BIN, ControlPlane


@dataclass
class Stack:
    cp: ControlPlane
    tmp: Path
    admin: str = ""
    agent_key: str = ""
    agent_proc: subprocess.Popen[bytes] | None = None
    agent_log: Path | None = None
    users: dict[str, str] = field(default_factory=dict)

    @property
    def verify(self) -> ssl.SSLContext | bool:
        if self.cp.url.startswith("https"):
            return ssl.create_default_context(cafile=str(self.cp.ca_file))
        return True

    @property
    def api(self) -> str:
        return f"{self.cp.url}/api/v1"

    def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        r = httpx.request(
            method,
            f"{self.api}{path}",
            headers={"Authorization": f"Bearer {token or self.admin}"},
            timeout=30,
            verify=self.verify,
            **kw,
        )
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def setup(self, agent_name: str = "prod-agent") -> None:
        self.admin = self.cp.login_token()
        self.agent_key = self.call(
            "POST", "/admin/apikeys", json={"name": agent_name, "scopes": ["agent:connect"]}
        )["key"]
        self.call("POST", "/admin/roles", json={"name": "developers", "max_duration": "8h"})

    def tunnel(self, name: str, host: str, port: int, role: str | None = "developers") -> int:
        r = self.call(
            "POST",
            "/admin/resources",
            json={
                "name": name,
                "type": "tunnel",
                "agent": "prod-agent",
                "target_host": host,
                "target_port": port,
            },
        )
        if role:
            self.call("POST", f"/admin/roles/{role}/resources", json={"resource": name})
        return int(r["resource"]["port"])

    def user(self, email: str, source: str) -> str:
        self.call("POST", "/admin/users", json={"email": email, "password": "user-password-1"})
        self.call("POST", "/admin/roles/developers/users", json={"email": email})
        t = httpx.Client(transport=httpx.HTTPTransport(local_address=source, verify=self.verify))
        r = t.post(f"{self.api}/auth/login", json={"email": email, "password": "user-password-1"})
        r.raise_for_status()
        self.users[email] = r.json()["token"]
        return str(self.users[email])

    def session(self, token: str, source: str, duration: str = "1h") -> Any:
        t = httpx.Client(transport=httpx.HTTPTransport(local_address=source, verify=self.verify))
        r = t.post(
            f"{self.api}/sessions",
            json={"duration": duration},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 201, r.text
        return r.json()

    def stop_session(self, token: str) -> None:
        self.call("DELETE", "/sessions/current", token)

    def write_agent_config(self, extra: str = "") -> Path:
        cfg = self.tmp / "agent.yml"
        ca = f'  ca_file: "{self.cp.ca_file}"\n' if self.cp.url.startswith("https") else ""
        cfg.write_text(
            f'server:\n  url: "{self.cp.url}/api/v1"\n  api_key: "{self.agent_key}"\n{ca}'
            f'agent:\n  name: "prod-agent"\n'
            f'tunnel:\n  enabled: true\n  edge_url: "{self.cp.edge_url}"\n{ca}{extra}'
        )
        return cfg

    def start_agent(self, extra: str = "", wait_connected: bool = True) -> None:
        cfg = self.write_agent_config(extra)
        self.agent_log = self.tmp / "agent.log"
        log = open(self.agent_log, "ab")  # noqa: SIM115
        self.agent_proc = subprocess.Popen(
            [str(BIN / "eg-agent"), "run", "--config", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )
        if wait_connected:
            self.wait_log("[tunnel] connected to edge", 20)

    def wait_log(self, needle: str, timeout: float, count: int = 1) -> None:
        assert self.agent_log is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.agent_log.read_text().count(needle) >= count:
                return
            if self.agent_proc is not None and self.agent_proc.poll() is not None:
                raise AssertionError(f"agent exited: {self.agent_log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in agent log: {self.agent_log.read_text()[-2000:]}")

    def stop_agent(self, kill: bool = False) -> None:
        if self.agent_proc and self.agent_proc.poll() is None:
            if kill:
                self.agent_proc.kill()
            else:
                self.agent_proc.terminate()
            self.agent_proc.wait(20)


def connect(port: int, source: str, timeout: float = 5.0, host: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to ``host:port`` (an edge's tunnel port) from ``source``."""
    s = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def wait_until(pred: Any, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())
