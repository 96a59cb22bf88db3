"""Small clients: connect-echo-close rate (own process), idle connections, revoke, stall.

python -m bench.clients connrate --port P --sources 127.0.0.2,127.0.0.3 --concurrency 32 --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import select
import selectors
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, cast

from bench.common import client_socket, connect_from, echo_once, percentile

PAYLOAD = b"x" * 64


# --- connect-echo-close rate ---------------------------------------------------------------


class _Once(asyncio.Protocol):
    """Write 64 bytes, wait for them to come back, close."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.got = 0
        self.t: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)
        self.t.write(PAYLOAD)

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= len(PAYLOAD) and self.t is not None:
            self.t.close()
            if not self.done.done():
                self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed before the echo"))


async def connrate(
    port: int, sources: list[str], concurrency: int, duration: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    count = 0
    errors: dict[str, int] = {}
    t0 = loop.time()
    deadline = t0 + duration

    async def one(source: str) -> None:
        sock = client_socket(source, blocking=False)
        transport: asyncio.BaseTransport | None = None
        try:
            async with asyncio.timeout(5):
                await loop.sock_connect(sock, ("127.0.0.1", port))
                done: asyncio.Future[None] = loop.create_future()
                transport, _ = await loop.create_connection(lambda: _Once(done), sock=sock)
                await done
        except BaseException:
            if transport is not None:
                transport.abort()  # type: ignore[attr-defined]
            else:
                sock.close()
            raise

    async def worker(i: int) -> None:
        nonlocal count
        source = sources[i % len(sources)]
        while loop.time() < deadline:
            try:
                await one(source)
                count += 1
            except (OSError, TimeoutError) as exc:
                kind = type(exc).__name__
                errors[kind] = errors.get(kind, 0) + 1
                await asyncio.sleep(0.01)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = loop.time() - t0
    return {"count": count, "elapsed": elapsed, "rate": count / elapsed, "errors": errors}


def run_connrate(
    port: int, sources: list[str], concurrency: int, duration: float
) -> dict[str, Any]:
    try:
        import uvloop

        return uvloop.run(connrate(port, sources, concurrency, duration))
    except ImportError:
        return asyncio.run(connrate(port, sources, concurrency, duration))


# --- idle connections (memory) ----------------------------------------------------------------


def open_idle(
    port: int, sources: list[str], n: int, budget: float
) -> tuple[list[socket.socket], float]:
    """n connections, each proven end to end with a 1-byte echo; then left idle."""
    socks: list[socket.socket] = []
    t0 = time.monotonic()
    try:
        for i in range(n):
            if time.monotonic() - t0 > budget:
                raise TimeoutError(f"opened only {i} of {n} connections in {budget:g} s")
            s = connect_from(sources[i % len(sources)], port, timeout=10)
            socks.append(s)
            echo_once(s, b"x")
    except BaseException:
        close_all(socks)
        raise
    return socks, time.monotonic() - t0


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()
    socks.clear()


# --- revoke to reset --------------------------------------------------------------------------


def _http_request(method: str, host: str, port: int, path: str, token: str) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode()


def _response_done(buf: bytes) -> tuple[bool, int]:
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return False, 0
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    return len(body) >= length, status


def revoke_once(
    api_port: int, delete_path: str, token: str, victim: socket.socket, timeout: float = 5.0
) -> dict[str, Any]:
    """Send DELETE; time the victim's reset from the send and from the response (ms).

    One thread, one selector: both timestamps come from the same loop, no GIL hand-offs.
    """
    http = socket.create_connection(("127.0.0.1", api_port), timeout=5)
    http.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    victim.setblocking(False)
    http.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(victim, selectors.EVENT_READ, "victim")
    sel.register(http, selectors.EVENT_READ, "http")
    buf = b""
    t_reset = t_resp = None
    kind = "timeout"
    status = 0
    try:
        req = _http_request("DELETE", "127.0.0.1", api_port, delete_path, token)
        t0 = time.perf_counter()
        http.sendall(req)  # a few hundred bytes: never blocks on loopback
        deadline = t0 + timeout
        while (t_reset is None or t_resp is None) and time.perf_counter() < deadline:
            for key, _ in sel.select(max(0.0, deadline - time.perf_counter())):
                now = time.perf_counter()
                if key.data == "victim":
                    try:
                        data = victim.recv(4096)
                        kind = "eof" if not data else "data"
                    except ConnectionResetError:
                        kind = "reset"
                    except BlockingIOError:
                        continue
                    t_reset = now
                    sel.unregister(victim)
                else:
                    try:
                        chunk = http.recv(65536)
                    except BlockingIOError:
                        continue
                    buf += chunk
                    done, status = _response_done(buf)
                    if done or not chunk:
                        t_resp = now
                        sel.unregister(http)
    finally:
        sel.close()
        http.close()
    if status and status >= 300:
        raise RuntimeError(f"DELETE {delete_path}: HTTP {status}: {buf[-300:]!r}")
    return {
        "kind": kind,
        "from_send_ms": None if t_reset is None else (t_reset - t0) * 1000,
        "from_response_ms": None
        if t_reset is None or t_resp is None
        else (t_reset - t_resp) * 1000,
        "response_ms": None if t_resp is None else (t_resp - t0) * 1000,
    }


def revoke_trials(
    create_rule: Callable[[], int],
    api_port: int,
    token: str,
    tunnel_port: int,
    source: str,
    trials: int,
    budget: float,
) -> dict[str, Any]:
    """Per trial: add a static rule for `source`, prove a connection, delete the rule."""
    results: list[dict[str, Any]] = []
    t_start = time.monotonic()
    for _ in range(trials):
        if time.monotonic() - t_start > budget:
            break
        rule_id = create_rule()
        victim = None
        deadline = time.monotonic() + 5
        while victim is None:
            s = None
            try:
                s = connect_from(source, tunnel_port, timeout=2)
                echo_once(s, b"hello")
                victim = s
            except OSError:
                if s is not None:
                    s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        try:
            results.append(revoke_once(api_port, f"/api/v1/admin/rules/{rule_id}", token, victim))
        finally:
            victim.close()
    sends = [r["from_send_ms"] for r in results if r["kind"] == "reset"]
    resps = [r["from_response_ms"] for r in results if r["kind"] == "reset"]
    kinds: dict[str, int] = {}
    for r in results:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    return {
        "trials": len(results),
        "kinds": kinds,
        "p50_ms": percentile(sends, 50),
        "p99_ms": percentile(sends, 99),
        "max_ms": max(sends) if sends else None,
        "after_response_p50_ms": percentile(resps, 50),
        "after_response_p99_ms": percentile(resps, 99),
        "reset_before_response": sum(1 for v in resps if v <= 0),
        "response_p50_ms": percentile(
            [r["response_ms"] for r in results if r["response_ms"] is not None], 50
        ),
        "raw": results,
    }


# --- a stalled stream beside a live one ----------------------------------------------------------


def stall_echo(
    sink_port: int, echo_port: int, source: str, samples: int, flood_budget: float = 15.0
) -> dict[str, Any]:
    """Fill stream A (its target never reads) until it stalls; time 64-byte echoes on stream B."""
    a = connect_from(source, sink_port)
    b: socket.socket | None = None
    try:
        a.setblocking(False)
        chunk = b"\0" * 65536
        sent = 0
        t0 = last = time.monotonic()
        stalled = False
        while time.monotonic() - t0 < flood_budget and sent < (1 << 30):
            try:
                sent += a.send(chunk)
                last = time.monotonic()
            except BlockingIOError:
                if time.monotonic() - last > 0.3:
                    stalled = True
                    break
                select.select([], [a], [], 0.05)
        b = connect_from(source, echo_port)
        echo_once(b, PAYLOAD)  # warm: stream opened, target dialed
        rtts: list[float] = []
        t_end = time.monotonic() + 10
        for _ in range(samples):
            if time.monotonic() > t_end:
                break
            t = time.perf_counter()
            echo_once(b, PAYLOAD)
            rtts.append((time.perf_counter() - t) * 1000)
        still = True
        try:
            a.send(chunk)
            still = False
        except BlockingIOError:
            pass
        return {
            "p50_ms": percentile(rtts, 50),
            "p99_ms": percentile(rtts, 99),
            "max_ms": max(rtts) if rtts else None,
            "n": len(rtts),
            "stalled_after_bytes": sent,
            "stalled": stalled and still,
        }
    finally:
        # An abortive close (RST): the stalled stream goes away at once.
        with contextlib.suppress(OSError):
            a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        a.close()
        if b is not None:
            b.close()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.clients")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("connrate")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--sources", default="127.0.0.2")
    c.add_argument("--concurrency", type=int, default=32)
    c.add_argument("--duration", type=float, default=3.0)
    args = ap.parse_args()
    if args.cmd == "connrate":
        res = run_connrate(args.port, args.sources.split(","), args.concurrency, args.duration)
        print(json.dumps(res))


if __name__ == "__main__":
    main()
