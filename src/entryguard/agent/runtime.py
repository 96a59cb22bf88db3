"""`eg-agent run`: both modes side by side, heartbeats, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from entryguard.agent.config import AgentConfig
from entryguard.agent.control_client import ControlClient, ControlPlaneError
from entryguard.agent.scripts import run_scripts
from entryguard.agent.tunnel import TunnelClient

log = logging.getLogger("entryguard.agent")

HEARTBEAT_INTERVAL = 15.0
# On SIGTERM open tunnel streams get this long to finish before they are reset, so a
# stop takes a few seconds even with long-lived connections (database sessions) open.
DRAIN_TIMEOUT = 2.0


def heartbeat_interval_from_env() -> float:
    """EG_AGENT_HEARTBEAT_INTERVAL (seconds) exists for tests; operators keep the default,
    which the control plane's offline threshold (three missed beats) is tuned to. Read
    when the agent starts, never at import."""
    return float(os.environ.get("EG_AGENT_HEARTBEAT_INTERVAL") or HEARTBEAT_INTERVAL)


async def _heartbeats(
    control: ControlClient, tunnel_connected: asyncio.Event | None, interval: float
) -> None:
    while True:
        try:
            await control.heartbeat(tunnel_connected.is_set() if tunnel_connected else False)
        except ControlPlaneError as exc:
            log.warning("heartbeat failed: %s", exc)
        await asyncio.sleep(interval)


async def run_agent(cfg: AgentConfig) -> None:
    control = ControlClient(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = []
    tunnel = None
    if cfg.tunnel.enabled:
        tunnel = TunnelClient(cfg, control)
        tasks.append(asyncio.create_task(tunnel.run(), name="tunnel"))
    if cfg.scripts.enabled:
        tasks.append(asyncio.create_task(run_scripts(cfg, control), name="scripts"))
    tasks.append(
        asyncio.create_task(
            _heartbeats(
                control, tunnel.connected if tunnel else None, heartbeat_interval_from_env()
            ),
            name="heartbeat",
        )
    )
    log.info("eg-agent %s started (modes: %s)", cfg.agent.name, ", ".join(cfg.modes))
    await stop.wait()
    log.info("shutting down: draining open streams for up to %.0f s", DRAIN_TIMEOUT)
    if tunnel is not None:
        await tunnel.drain(DRAIN_TIMEOUT)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    await control.close()
