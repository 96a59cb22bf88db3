"""The agent's calls to the control plane: its tunnel list, heartbeats and script commands."""

from __future__ import annotations

import platform
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from entryguard import __version__
from entryguard.agent.config import AgentConfig
from entryguard.errors import EntryGuardError


@dataclass(frozen=True)
class TunnelTarget:
    id: int
    name: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class ControlPlaneError(EntryGuardError):
    """A call to the control plane failed; the message says why in one line."""

    code = "control_plane_failed"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status, None when the server was not reached

    @property
    def transient(self) -> bool:
        """Worth retrying: unreachable, timed out, or a server-side error."""
        return self.status is None or self.status >= 500 or self.status == 429


class ControlClient:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=cfg.server.ca_file) if cfg.server.ca_file else True
        )
        self._http = httpx.AsyncClient(
            base_url=cfg.server.url,
            headers={
                "Authorization": f"Bearer {cfg.server.api_key}",
                "User-Agent": f"eg-agent/{__version__}",
            },
            timeout=httpx.Timeout(15.0, read=40.0),
            verify=verify,
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = await self._http.request(method, path, **kw)
        except httpx.ConnectError as exc:
            raise ControlPlaneError(
                f"cannot reach the control plane at {self.cfg.server.url}: {exc}"
            ) from exc
        except httpx.HTTPError as exc:
            raise ControlPlaneError(f"control plane request failed: {exc}") from exc
        if r.status_code >= 400:
            try:
                msg = r.json()["error"]["message"]
            except Exception:
                msg = r.text[:200]
            if r.status_code == 401:
                msg = f"the API key was refused ({msg}): check server.api_key"
            elif r.status_code == 403:
                msg = f"the API key lacks the agent:connect scope ({msg})"
            raise ControlPlaneError(f"{method} {path}: HTTP {r.status_code}: {msg}", r.status_code)
        return r.json() if r.content else None

    async def tunnels(self) -> list[TunnelTarget]:
        body = await self._request("GET", "/agent/tunnels")
        return [
            TunnelTarget(t["id"], t["name"], t["target_host"], int(t["target_port"]))
            for t in body["items"]
        ]

    async def heartbeat(self, tunnel_connected: bool) -> None:
        await self._request(
            "POST",
            "/agent/heartbeat",
            json={
                "name": self.cfg.agent.name,
                "version": __version__,
                "hostname": socket.gethostname()[:255],
                "os": f"{platform.system()} {platform.machine()}"[:64],
                "modes": self.cfg.modes,
                "tunnel_connected": tunnel_connected,
            },
        )

    async def next_command(self, wait: float) -> dict[str, Any] | None:
        """Claim the next script command (long-poll up to ``wait`` seconds); None if none."""
        body = await self._request("GET", "/agent/commands/next", params={"wait": wait})
        command: dict[str, Any] | None = body.get("command")
        return command

    async def report_command(
        self,
        command_id: int,
        *,
        exit_code: int | None,
        duration_ms: int,
        output: str,
        error: str | None,
    ) -> None:
        await self._request(
            "POST",
            f"/agent/commands/{command_id}/result",
            json={
                "exit_code": exit_code,
                "duration_ms": duration_ms,
                "output": output,
                "error": error,
            },
        )
