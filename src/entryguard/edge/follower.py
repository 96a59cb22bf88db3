"""Follows the control plane: snapshot, then the change log by long-poll (docs/sync.md).

While the control plane is unreachable the edge keeps what it has (fail-static) and
reports itself degraded; grant expiry keeps being enforced on the edge's own clock.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from entryguard.clock import SYSTEM, Clock
from entryguard.edge.state import EdgeState
from entryguard.sync.changes import ChangeError, ChangeRow

log = logging.getLogger("entryguard.edge.sync")


def batches(changes: list[ChangeRow]) -> list[list[ChangeRow]]:
    """Consecutive rows grouped by the transaction that wrote them."""
    out: list[list[ChangeRow]] = []
    for ch in changes:
        if not out or out[-1][-1].batch != ch.batch:
            out.append([])
        out[-1].append(ch)
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
        clock: Clock = SYSTEM,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.clock = clock
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
            transport=transport,  # tests: an in-memory control plane
        )
        self.synced = asyncio.Event()
        # Awaited after applying a batch and before asking for more: the next poll's
        # `since` tells the control plane the batch is in force (listeners bound).
        self.after_apply: Callable[[], Awaitable[None]] | None = None
        self.connected = False
        self.last_contact = 0.0
        self.last_error: str | None = None
        # What this edge could not apply (bad rows); shown on /health while any stand.
        self.problems: list[str] = []
        self.bad_changes = 0  # counted in the edge's metrics

    @property
    def degraded(self) -> bool:
        return not self.connected or bool(self.problems)

    async def close(self) -> None:
        await self._client.aclose()

    async def _snapshot(self) -> None:
        r = await self._client.get("/snapshot")
        self._raise_for(r)
        problems = self.state.load_snapshot(r.json())
        for p in problems:
            log.error("snapshot row skipped: %s", p)
        # A clean snapshot clears earlier problems; /health names what still stands
        # without echoing the rows' contents (they are in the log).
        self.problems = [f"{len(problems)} snapshot row(s) skipped"] if problems else []
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
                need_snapshot = self._apply(r.json()["changes"])
                if self.after_apply is not None:
                    await self.after_apply()
                self._mark_ok()
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except (httpx.HTTPError, OSError) as exc:
                if self.connected or self.last_error != str(exc):
                    log.warning("control plane unreachable (%s); keeping the last known state", exc)
                self.connected = False
                self.last_error = str(exc)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 10.0)
            except (ChangeError, ValueError, KeyError, TypeError) as exc:
                # An answer this edge cannot use (a snapshot that does not parse): the
                # state in force stays, the problem is reported, and a fresh snapshot is
                # tried after a pause. Never "unreachable", never retried in a tight loop.
                log.error("unusable answer from the control plane: %s", exc)
                self._report("the control plane's answer could not be used")
                need_snapshot = True
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 10.0)

    def _apply(self, rows: list[Any]) -> bool:
        """Apply whole batches; True when a row could not be parsed.

        Everything before the bad row's batch is applied; the bad batch and what
        follows are left to a fresh snapshot, which is the authority and whose revision
        is past the bad row, so the edge moves on instead of retrying it forever.
        """
        parsed: list[ChangeRow] = []
        bad_batch: object = None
        for raw in rows:
            try:
                parsed.append(ChangeRow.parse(raw))
            except ChangeError as exc:
                rev = raw.get("revision") if isinstance(raw, dict) else None
                bad_batch = raw.get("batch", rev) if isinstance(raw, dict) else rev
                self.bad_changes += 1
                log.error("change at revision %s cannot be applied: %s", rev, exc)
                self._report(f"change at revision {rev} could not be applied")
                break
        if bad_batch is not None:
            parsed = [c for c in parsed if c.batch != bad_batch]
        for batch in batches(parsed):
            self.state.apply_batch(batch)
        return bad_batch is not None

    def _report(self, problem: str) -> None:
        log.warning("%s: resyncing from a fresh snapshot", problem)
        self.problems = [*self.problems[-9:], problem]

    def _mark_ok(self) -> None:
        if not self.connected:
            log.info(
                "following the control plane at %s (revision %d)", self.base, self.state.revision
            )
        self.connected = True
        self.last_error = None
        self.last_contact = self.clock.time()
        self.synced.set()
