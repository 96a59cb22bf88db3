"""Follows the control plane: snapshot, then the change log pushed over a WebSocket
stream (or, from a replica too old to push, by long-poll; docs/sync.md), from one of
several replicas, moving to the next when the one in use fails.

While the control plane is unreachable the edge keeps what it has (fail-static) and
reports itself degraded; grant expiry keeps being enforced on the edge's own clock.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

from entryguard import __version__
from entryguard.backoff import Backoff
from entryguard.clock import SYSTEM, Clock
from entryguard.edge.state import EdgeState
from entryguard.sync.changes import ChangeError, ChangeRow
from entryguard.sync.stream import (
    MAX_MESSAGE,
    SILENCE_INTERVALS,
    Ack,
    Changes,
    Health,
    Heartbeat,
    Hello,
    StreamError,
    StreamFailure,
    encode,
    parse_server,
)

T = TypeVar("T")

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


class Refused(Exception):
    """The replica ended the stream on purpose (token refused, name taken): move on,
    with the reason on /health."""


class _Resync(Exception):
    """The replica no longer keeps the revision the edge is at: load the snapshot."""


class NoStream(Exception):
    """The replica predates the pushed stream: long-poll it instead."""


def ws_url(base: str) -> str:
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://")
    return "ws://" + base.removeprefix("http://")


def ws_ssl(verify: ssl.SSLContext | str | bool) -> ssl.SSLContext:
    """The TLS context for a ``wss://`` stream, from httpx's ``verify`` forms."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


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
        delivery: Literal["stream", "poll"] = "stream",
        name: str = "edge",
    ) -> None:
        self.clock = clock
        self.delivery = delivery
        self.name = name
        self.instance = uuid.uuid4().hex  # this process: a second one under our name is refused
        self.edge_token = edge_token
        self.verify = verify
        # What this edge reports with each acknowledgement (Edge sets it).
        self.health: Callable[[], Health] = lambda: "degraded" if self.problems else "ok"
        self._polling: set[int] = set()  # replicas (by index) that have no stream endpoint
        self._refusals: set[str] = set()  # problems a good stream clears
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

    async def _guarded(self, request: Awaitable[T]) -> T:
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
                # A deadline as well as the client's own timeout: a hung peer must not
                # hang the probe, whatever the transport does with timeouts. Not
                # wait_for: on Python 3.11 it can swallow the cancel that _guarded sends
                # when the answer lands at the same moment (bpo-42130), and the follower
                # then waits forever for a probe that never stops.
                async with asyncio.timeout(self.probe_interval * 1.5):
                    r = await client.get(url)
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
                if self.delivery == "stream" and self._idx not in self._polling:
                    try:
                        need_snapshot = await self._guarded(self._stream())
                    except NoStream:
                        log.warning(
                            "%s has no change stream (an older version): long-polling it",
                            self.base,
                        )
                        self._polling.add(self._idx)
                        continue
                    if not need_snapshot:
                        # The stream ended without a fault of the edge's (the replica is
                        # stopping): take the next replica at once.
                        raise Unready(f"{self.base} ended the change stream")
                    continue
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
            except (
                httpx.HTTPError,
                OSError,
                Unready,
                Refused,
                WebSocketException,
                TimeoutError,
            ) as exc:
                if self.connected:  # the replica in use served, then failed: a new outage
                    misses = 0
                    backoff.reset()
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

    async def _stream(self) -> bool:
        """Follow the pushed stream until it ends; True when a snapshot is needed.

        Raises on a dead, silent or refusing replica (the caller moves on), and
        :class:`NoStream` when the replica has no stream endpoint.
        """
        query = urlencode(
            {
                "since": self.state.revision,
                "name": self.name,
                "instance": self.instance,
                "version": __version__,
            }
        )
        url = f"{ws_url(self.base)}/edge/stream?{query}"
        try:
            ws = await connect(
                url,
                additional_headers={"Authorization": f"Bearer {self.edge_token}"},
                ssl=ws_ssl(self.verify) if url.startswith("wss://") else None,
                open_timeout=10,
                max_size=MAX_MESSAGE,
                ping_interval=None,  # heartbeats are the protocol's own
                close_timeout=1,
            )
        except InvalidStatus as exc:
            if exc.response.status_code in (403, 404):
                raise NoStream from exc
            raise
        try:
            async with ws:
                return await self._follow(ws)
        except _Resync:
            return True

    async def _follow(self, ws: ClientConnection) -> bool:
        hello = await self._receive(ws, 10.0)
        if not isinstance(hello, Hello):
            raise StreamError(f"expected hello, got {type(hello).__name__}")
        silence = SILENCE_INTERVALS * hello.interval
        self.problems = [p for p in self.problems if p not in self._refusals]
        self._refusals.clear()
        self._mark_ok()
        while True:
            msg = await self._receive(ws, silence)
            if isinstance(msg, Changes):
                need_snapshot = self._apply(msg.changes)
                if self.after_apply is not None:
                    await self.after_apply()
                if need_snapshot:
                    return True
            elif not isinstance(msg, Heartbeat):
                raise StreamError(f"unexpected {type(msg).__name__}")
            self._mark_ok()
            self._synced()
            await ws.send(encode(Ack(revision=self.state.revision, health=self.health())))
            if self.outbox:
                await self._send_outbox()

    async def _receive(self, ws: ClientConnection, timeout: float) -> Hello | Changes | Heartbeat:
        try:
            async with asyncio.timeout(timeout):  # not wait_for: see _probe
                raw = await ws.recv()
        except TimeoutError:
            raise Unready(f"{self.base} sent nothing for {timeout:g} s") from None
        msg = parse_server(raw)
        if isinstance(msg, StreamFailure):
            if msg.code == "revision_gone":
                log.warning(
                    "revision %d is gone on the control plane: refetching the snapshot",
                    self.state.revision,
                )
                raise _Resync
            if msg.code in ("invalid_edge_token", "edge_name_taken"):
                self._report_refusal(msg.message)
            raise Refused(f"{self.base} ended the stream: {msg.message}")
        return msg

    def _report_refusal(self, message: str) -> None:
        if message not in self.problems:  # logged once, not on every retry
            log.error("%s", message)
            self.problems = [*self.problems[-9:], message]
            self._refusals.add(message)

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
