"""Follows the control plane: snapshot, then the change log by long-poll (docs/sync.md),
from one of several replicas, moving to the next when the one in use fails.

While the control plane is unreachable the edge keeps what it has (fail-static) and
reports itself degraded; grant expiry keeps being enforced on the edge's own clock.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx

from entryguard.backoff import Backoff
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


class Unready(Exception):
    """The control-plane replica in use stopped answering its health check, or says it
    is not ready: move to the next one."""


def api_base(url: str) -> str:
    base = url.rstrip("/")
    return base if base.endswith("/api/v1") else base + "/api/v1"


class ControlPlaneFollower:
    """Follows one replica at a time out of ``control_urls``.

    While a request is in flight (a long-poll can wait many seconds), the replica's
    ``/health`` is probed every ``probe_interval``; ``probe_failures`` failures in a row
    (an error, a timeout or a 503) abandon it for the next URL. So a dead, hung or
    not-ready replica is left within a few seconds, and the edge resumes from its own
    revision on the next one: no gap (the log is shared) and no repeat (revisions at or
    below the applied one are ignored).
    """

    def __init__(
        self,
        state: EdgeState,
        control_urls: str | Sequence[str],
        edge_token: str,
        *,
        verify: ssl.SSLContext | str | bool = True,
        poll_wait: float = 25.0,
        clock: Clock = SYSTEM,
        transport: httpx.AsyncBaseTransport | None = None,
        probe_interval: float = 1.0,
        probe_failures: int = 2,
    ) -> None:
        self.clock = clock
        urls = [control_urls] if isinstance(control_urls, str) else list(control_urls)
        if not urls:
            raise ValueError("at least one control-plane URL is needed")
        self.bases = [api_base(u) for u in urls]
        self._idx = 0
        self.state = state
        self.poll_wait = poll_wait
        self.probe_interval = probe_interval
        self.probe_failures = probe_failures
        self._clients = [
            httpx.AsyncClient(
                base_url=f"{base}/edge",
                headers={"Authorization": f"Bearer {edge_token}"},
                timeout=httpx.Timeout(10.0, read=poll_wait + 10),
                verify=verify,
                transport=transport,  # tests: an in-memory control plane
            )
            for base in self.bases
        ]
        self.synced = asyncio.Event()
        # Awaited after applying a batch and before asking for more: the next poll's
        # `since` tells the control plane the batch is in force (listeners bound).
        self.after_apply: Callable[[], Awaitable[None]] | None = None
        # Called once the edge holds the control plane's current state (a snapshot or
        # a changes answer applied): the edge's offline-grace clock restarts there.
        self.on_synced: Callable[[], None] | None = None
        # Events for the control plane's audit (e.g. a fail-closed episode), sent in
        # order once it answers; kept (bounded) while it does not.
        self.outbox: list[dict[str, Any]] = []
        self.connected = False
        self.last_contact = 0.0
        self.last_error: str | None = None
        self.failovers = 0
        # What this edge could not apply (bad rows); shown on /health while any stand.
        self.problems: list[str] = []
        self.bad_changes = 0  # counted in the edge's metrics

    @property
    def base(self) -> str:
        return self.bases[self._idx]

    @property
    def _client(self) -> httpx.AsyncClient:
        return self._clients[self._idx]

    @property
    def degraded(self) -> bool:
        return not self.connected or bool(self.problems)

    async def close(self) -> None:
        for c in self._clients:
            await c.aclose()

    async def _snapshot(self) -> None:
        r = await self._guarded(self._client.get("/snapshot"))
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

    async def _guarded(self, request: Awaitable[httpx.Response]) -> httpx.Response:
        """``request``, abandoned when the replica stops passing its health probe."""
        task = asyncio.ensure_future(request)
        probe = asyncio.ensure_future(self._probe())
        try:
            done, _ = await asyncio.wait({task, probe}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            probe.result()  # raises Unready
            raise AssertionError("the probe returns only by raising")
        finally:
            for t in (task, probe):
                if not t.done():
                    t.cancel()
            # gather, not `suppress(CancelledError)` around each await: a cancel of this
            # coroutine arriving here must propagate, not be swallowed with the children's.
            await asyncio.gather(task, probe, return_exceptions=True)

    async def _probe(self) -> None:
        client, url = self._client, f"{self.base}/health"
        failures = 0
        while True:
            await asyncio.sleep(self.probe_interval)
            try:
                # wait_for as well as the client's own timeout: a hung peer must not
                # hang the probe, whatever the transport does with timeouts.
                r = await asyncio.wait_for(client.get(url), self.probe_interval * 1.5)
                ok = r.status_code == 200
            except (httpx.HTTPError, TimeoutError):
                ok = False
            if ok:
                failures = 0
                if self.connected:
                    self.last_contact = self.clock.time()  # alive and ready, poll in flight
                continue
            failures += 1
            if failures >= self.probe_failures:
                raise Unready(f"{self.base} stopped answering its health check")

    async def run(self) -> None:
        # Capped at 4 s (6 s with jitter): an edge that failed closed opens again within
        # seconds of a replica's return, and a few requests a second cost nobody.
        backoff = Backoff(0.5, 4.0, jitter=(0.5, 1.5))
        need_snapshot = True
        misses = 0  # replicas failed in a row: after a whole round, back off
        while True:
            try:
                if need_snapshot:
                    await self._snapshot()
                    need_snapshot = False
                    if self.after_apply is not None:
                        await self.after_apply()
                    self._mark_ok()
                    self._synced()
                    misses = 0
                await self._send_outbox()
                # Back from a failure: ask without waiting, so the answer (and with it the
                # edge's confirmation that it holds the current state) comes at once
                # instead of after a long-poll's silence.
                wait = self.poll_wait if self.connected else 0
                r = await self._guarded(
                    self._client.get(
                        "/changes", params={"since": self.state.revision, "wait": wait}
                    )
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
                # Only an answer counts as contact: a replica merely accepting the
                # connection must not hold the offline grace off.
                self._mark_ok()
                misses = 0
                if not need_snapshot:
                    self._synced()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except (httpx.HTTPError, OSError, Unready) as exc:
                if self.connected or self.last_error != str(exc):
                    log.warning(
                        "control plane at %s unreachable (%s); keeping the last known state",
                        self.base,
                        exc,
                    )
                self.connected = False
                self.last_error = str(exc)
                misses += 1
                if len(self._clients) > 1:
                    self._idx = (self._idx + 1) % len(self._clients)
                    self.failovers += 1
                    # Once per outage, not once per round while every replica is down.
                    level = logging.INFO if misses < len(self._clients) else logging.DEBUG
                    log.log(level, "trying the control plane at %s", self.base)
                if misses % len(self._clients) == 0:
                    await asyncio.sleep(backoff.next())
            except (ChangeError, ValueError, KeyError, TypeError) as exc:
                # An answer this edge cannot use (a snapshot that does not parse): the
                # state in force stays, the problem is reported, and a fresh snapshot is
                # tried after a pause. Never "unreachable", never retried in a tight loop.
                log.error("unusable answer from the control plane: %s", exc)
                self._report("the control plane's answer could not be used")
                need_snapshot = True
                await asyncio.sleep(backoff.next())

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

    def _synced(self) -> None:
        self.last_contact = self.clock.time()
        if self.on_synced is not None:
            self.on_synced()

    async def _send_outbox(self) -> None:
        while self.outbox:
            r = await self._client.post("/events", json=self.outbox[0])
            if r.status_code == 404:
                log.warning("the control plane takes no edge events (older version): dropped")
            else:
                self._raise_for(r)
            self.outbox.pop(0)

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
