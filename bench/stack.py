"""A whole EntryGuard stack on loopback: `entryguard up` + `eg-agent run`, set up over the API.

The same approach as tests/e2e/tunnel_env.py (copied, not imported: the tests move).
"""

from __future__ import annotations

import secrets
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    BIN,
    Procs,
    child_env,
    connect_from,
    echo_once,
    free_port,
    free_port_range,
)

ROLE = "bench"
AGENT = "bench-agent"


@dataclass
class Stack:
    name: str
    tmp: Path
    procs: Procs
    tls: bool = False
    api_port: int = 0
    edge_port: int = 0
    ports: tuple[int, int] = (0, 0)
    admin_password: str = field(default_factory=lambda: "admin-" + secrets.token_hex(8))
    admin_token: str = ""
    agent_key: str = ""
    up_pid: int = 0
    agent_pid: int = 0
    tunnels: dict[str, int] = field(default_factory=dict)  # resource name -> tunnel port
    sources: list[str] = field(default_factory=list)  # addresses with a live session
    http: Any = None  # httpx.Client, made once the API is up
    _up: Any = None
    _agent: Any = None

    @property
    def data_dir(self) -> Path:
        return self.tmp / "data"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.api_port}"

    @property
    def edge_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.edge_port}"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.tls else True

    # --- processes --------------------------------------------------------------------

    def start(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.api_port, self.edge_port = free_port(), free_port()
        self.ports = free_port_range(16)
        self._launch_up()
        self.agent_key = self.call(
            "POST", "/admin/apikeys", json={"name": AGENT, "scopes": ["agent:connect"]}
        )["key"]
        self.call("POST", "/admin/roles", json={"name": ROLE, "max_duration": "8h"})

    def _launch_up(self) -> None:
        args = [
            str(BIN / "entryguard"),
            "up",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"127.0.0.1:{self.api_port}",
            "--edge-listen",
            f"127.0.0.1:{self.edge_port}",
            "--tunnel-ports",
            f"{self.ports[0]}-{self.ports[1]}",
        ]
        if self.tls:
            args.append("--tls-self-signed")
        env = child_env(EG_ADMIN_EMAIL="admin@example.com", EG_ADMIN_PASSWORD=self.admin_password)
        self._up = self.procs.spawn(args, self.tmp / "entryguard.log", env=env, cwd=self.tmp)
        self.up_pid = self._up.pid
        deadline = time.monotonic() + 40
        while True:
            if self._up.poll() is not None:
                raise RuntimeError(f"entryguard up exited: {self.log('entryguard.log')}")
            try:
                r = httpx.get(f"{self.url}/api/v1/health", timeout=1, verify=False)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"entryguard up did not start: {self.log('entryguard.log')}")
            time.sleep(0.1)
        if self.http is None:
            self.http = httpx.Client(verify=self.verify, timeout=30)
        r = self.http.post(
            f"{self.url}/api/v1/auth/login",
            json={"email": "admin@example.com", "password": self.admin_password},
        )
        r.raise_for_status()
        self.admin_token = str(r.json()["token"])

    def restart(self) -> None:
        """Fresh `entryguard up` and `eg-agent` processes on the same data dir and ports."""
        for p in (self._agent, self._up):
            if p is not None:
                Procs.stop(p)
        self._launch_up()
        self.start_agent()
        for source in self.sources:
            self.wait_echo("echo", source)

    def _log_since(self, name: str, offset: int) -> str:
        with open(self.tmp / name, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def log(self, name: str, tail: int = 3000) -> str:
        p = self.tmp / name
        return p.read_text(errors="replace")[-tail:] if p.exists() else ""

    def start_agent(self) -> None:
        cfg = self.tmp / "agent.yml"
        ca = f'  ca_file: "{self.ca_file}"\n' if self.tls else ""
        cfg.write_text(
            f'server:\n  url: "{self.url}/api/v1"\n  api_key: "{self.agent_key}"\n{ca}'
            f'agent:\n  name: "{AGENT}"\n'
            f'tunnel:\n  enabled: true\n  edge_url: "{self.edge_url}"\n{ca}'
        )
        log_path = self.tmp / "agent.log"
        log_start = log_path.stat().st_size if log_path.exists() else 0
        self._agent = self.procs.spawn(
            [str(BIN / "eg-agent"), "run", "--config", str(cfg)],
            self.tmp / "agent.log",
            env=child_env(),
            cwd=self.tmp,
        )
        self.agent_pid = self._agent.pid
        deadline = time.monotonic() + 30
        while "[tunnel] connected to edge" not in self._log_since("agent.log", log_start):
            if self._agent.poll() is not None:
                raise RuntimeError(f"eg-agent exited: {self.log('agent.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"eg-agent did not connect: {self.log('agent.log')}")
            time.sleep(0.05)

    def alive(self) -> None:
        for p, what in ((self._up, "entryguard up"), (self._agent, "eg-agent")):
            if p is not None and p.poll() is not None:
                raise RuntimeError(f"{self.name}: {what} exited with {p.returncode}")

    # --- the API ------------------------------------------------------------------------

    def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        r = self.http.request(
            method,
            f"{self.url}/api/v1{path}",
            headers={"Authorization": f"Bearer {token or self.admin_token}"},
            **kw,
        )
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
        return r.json() if r.content else None

    def tunnel(self, name: str, host: str, port: int, *, in_role: bool = True) -> int:
        r = self.call(
            "POST",
            "/admin/resources",
            json={
                "name": name,
                "type": "tunnel",
                "agent": AGENT,
                "target_host": host,
                "target_port": port,
            },
        )
        if in_role:
            self.call("POST", f"/admin/roles/{ROLE}/resources", json={"resource": name})
        self.tunnels[name] = int(r["resource"]["port"])
        return self.tunnels[name]

    def session_for(self, source: str) -> None:
        """A user whose session covers `source` (login and start from that address)."""
        email = f"user-{source.replace('.', '-')}@example.com"
        self.call("POST", "/admin/users", json={"email": email, "password": "bench-password-1"})
        self.call("POST", f"/admin/roles/{ROLE}/users", json={"email": email})
        transport = httpx.HTTPTransport(local_address=source, verify=self.verify)
        with httpx.Client(transport=transport, timeout=30) as c:
            r = c.post(
                f"{self.url}/api/v1/auth/login",
                json={"email": email, "password": "bench-password-1"},
            )
            r.raise_for_status()
            tok = r.json()["token"]
            r = c.post(
                f"{self.url}/api/v1/sessions",
                json={"duration": "4h"},
                headers={"Authorization": f"Bearer {tok}"},
            )
            if r.status_code != 201:
                raise RuntimeError(f"session for {source}: {r.status_code} {r.text}")
        self.sources.append(source)

    def wait_echo(self, name: str, source: str, timeout: float = 20.0) -> None:
        """Until an echo through tunnel `name` from `source` works (listener, grant, agent)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with connect_from(source, self.tunnels[name], timeout=2) as s:
                    echo_once(s, b"ready?")
                    return
            except OSError as exc:
                last = exc
                time.sleep(0.1)
        raise RuntimeError(f"{self.name}: tunnel {name} never echoed from {source}: {last}")

    def metric(self, name: str) -> float | None:
        r = httpx.get(f"{self.edge_url.replace('ws', 'http', 1)}/metrics", verify=False, timeout=5)
        for line in r.text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
