"""Follows the control plane: snapshot, then the change log by long-poll (docs/sync.md).

While the control plane is unreachable the edge keeps what it has (fail-static) and
reports itself degraded; grant expiry keeps being enforced on the edge's own clock.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from entryguard.edge.state import EdgeState

log = logging.getLogger("entryguard.edge.sync")


def batches(changes: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive rows grouped by the transaction that wrote them (``batch``; a row
    without one is a batch of its own)."""
    out: list[list[dict[str, Any]]] = []
    last: object = object()
    for ch in changes:
        key = ch.get("batch", ch["revision"])
        if not out or key != last:
            out.append([])
        out[-1].append(ch)
        last = key
    return out


class ControlPlaneFollower:
    def __init__(
        self,
        state: EdgeState,
        control_url: str,
        edge_token: str,
        *,
        verify: ssl.SSLContext | str | bool = True,
        poll_wait: float = 25.0,
    ) -> None:
        base = control_url.rstrip("/")
        if not base.endswith("/api/v1"):
            base += "/api/v1"
        self.state = state
        self.base = base
        self.poll_wait = poll_wait
        self._client = httpx.AsyncClient(
            base_url=f"{base}/edge",
            headers={"Authorization": f"Bearer {edge_token}"},
            timeout=httpx.Timeout(10.0, read=poll_wait + 10),
            verify=verify,
        )
        self.synced = asyncio.Event()
        # Awaited after applying a batch and before asking for more: the next poll's
        # `since` tells the control plane the batch is in force (listeners bound).
        self.after_apply: Callable[[], Awaitable[None]] | None = None
        self.connected = False
        self.last_contact = 0.0
        self.last_error: str | None = None

    @property
    def degraded(self) -> bool:
        return not self.connected

    async def close(self) -> None:
        await self._client.aclose()

    async def _snapshot(self) -> None:
        r = await self._client.get("/snapshot")
        self._raise_for(r)
        self.state.load_snapshot(r.json())
        log.info(
            "snapshot loaded at revision %d: %d tunnel(s), %d agent(s)",
            self.state.revision,
            len(self.state.tunnels),
            len(self.state.agents),
        )

    @staticmethod
    def _raise_for(r: httpx.Response) -> None:
        if r.status_code >= 400:
            try:
                msg = r.json()["error"]["message"]
            except Exception:
                msg = r.text[:200]
            raise httpx.HTTPStatusError(f"{r.status_code}: {msg}", request=r.request, response=r)

    async def run(self) -> None:
        backoff = 0.5
        need_snapshot = True
        while True:
            try:
                if need_snapshot:
                    await self._snapshot()
                    need_snapshot = False
                    if self.after_apply is not None:
                        await self.after_apply()
                self._mark_ok()
                r = await self._client.get(
                    "/changes", params={"since": self.state.revision, "wait": self.poll_wait}
                )
                if r.status_code == 410:
                    log.warning(
                        "revision %d is gone on the control plane: refetching the snapshot",
                        self.state.revision,
                    )
                    need_snapshot = True
                    continue
                self._raise_for(r)
                for batch in batches(r.json()["changes"]):
                    self.state.apply_batch(batch)
                if self.after_apply is not None:
                    await self.after_apply()
                self._mark_ok()
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
                if self.connected or self.last_error != str(exc):
                    log.warning("control plane unreachable (%s); keeping the last known state", exc)
                self.connected = False
                self.last_error = str(exc)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 10.0)

    def _mark_ok(self) -> None:
        if not self.connected:
            log.info(
                "following the control plane at %s (revision %d)", self.base, self.state.revision
            )
        self.connected = True
        self.last_error = None
        self.last_contact = time.time()
        self.synced.set()
