"""A cap on request bodies, before any route reads them.

Fields are bounded by their schemas, but a schema only looks at a body once it has
been read whole: without a cap, anyone (signed in or not) could make the server buffer
gigabytes. The largest legitimate body is an agent's command report (output up to
1 MiB of characters, which JSON escaping can make a few times larger), so the cap sits
well above that.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY = 8 * 1024 * 1024
DRAIN_MAX = 64 * 1024 * 1024  # past this, stop reading an oversized body and close


def _response(limit: int) -> tuple[dict[str, Any], bytes]:
    body = json.dumps(
        {
            "error": {
                "code": "body_too_large",
                "message": f"request body over {limit // (1024 * 1024)} MiB",
            }
        }
    ).encode()
    start = {
        "type": "http.response.start",
        "status": 413,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, body


class BodyLimit:
    """Refuse (413, JSON error) bodies over ``limit`` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.limit:
                    await self._refuse(receive, send)
                    return
        # Read the body here, up to the cap, and hand it on whole: routes would buffer
        # it anyway, and a chunked body that outgrows the cap is refused the same way
        # as a declared one, before any route has seen a byte of it.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                if message.get("more_body", False):
                    await self._refuse(receive, send)
                else:
                    await self._send_refusal(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, receive: Receive, send: Send) -> None:
        """Read and drop the rest of the body (bounded), then answer: a server that
        closes on a client still sending makes the kernel reset the connection, and
        the client never sees the 413."""
        dropped = 0
        while dropped <= DRAIN_MAX:
            message = await receive()
            if message["type"] != "http.request":
                return
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await self._send_refusal(send)

    async def _send_refusal(self, send: Send) -> None:
        start, body = _response(self.limit)
        await send(start)
        await send({"type": "http.response.body", "body": body})
