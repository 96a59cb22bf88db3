"""`eg-agent check`: prove the config can work, and say how to fix what cannot."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path

import websockets

from entryguard.agent.config import AgentConfig
from entryguard.agent.control_client import ControlClient, ControlPlaneError


async def run_checks(cfg: AgentConfig, report: Callable[[bool, str], None]) -> int:
    """Run every check, ``report(ok, message)`` each result; return the number of problems."""
    problems = 0

    def bad(msg: str) -> None:
        nonlocal problems
        problems += 1
        report(False, msg)

    def good(msg: str) -> None:
        report(True, msg)

    client = ControlClient(cfg)
    try:
        tunnels = await client.tunnels()
        good(f"control plane {cfg.server.url} accepted the API key")
        if cfg.tunnel.enabled:
            shown = ", ".join(str(t) for t in tunnels) or "none yet"
            good(f"tunnels served by this agent: {shown}")
    except ControlPlaneError as exc:
        bad(str(exc))
    finally:
        await client.close()
    if cfg.tunnel.enabled and cfg.tunnel.edge_url:
        ssl_ctx = None
        if cfg.tunnel.edge_url.startswith("wss://"):
            ssl_ctx = ssl.create_default_context(cafile=cfg.tunnel.ca_file)
        try:
            async with websockets.connect(
                f"{cfg.tunnel.edge_url}/agent/connect",
                ssl=ssl_ctx,
                open_timeout=10,
                additional_headers={"Authorization": f"Bearer {cfg.server.api_key}"},
                compression=None,
            ) as ws:
                await ws.close()
            good(f"edge {cfg.tunnel.edge_url} accepted the agent's WebSocket")
        except websockets.InvalidStatus as exc:
            code = exc.response.status_code
            hint = (
                "the key lacks agent:connect or is unknown to the edge"
                if code in (401, 403)
                else "see the edge's log"
            )
            bad(f"edge {cfg.tunnel.edge_url} refused the WebSocket (HTTP {code}): {hint}")
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            bad(
                f"cannot reach the edge at {cfg.tunnel.edge_url}: {exc} — check tunnel.edge_url and that "
                "outbound WebSocket traffic is allowed (corporate proxies often block upgrades)"
            )
    if cfg.scripts.enabled:
        for d in cfg.scripts.allowed_dirs:
            problem = _script_dir_problem(d)
            if problem:
                bad(problem)
            else:
                good(f"script directory {d}")
    return problems


def _script_dir_problem(d: str) -> str | None:
    p = Path(d)
    if not p.is_dir():
        return f"scripts.allowed_dirs: {d} is not a directory"
    if not os.access(p, os.R_OK | os.X_OK):
        return f"scripts.allowed_dirs: {d} is not readable by this user"
    return None
