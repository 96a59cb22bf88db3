"""A target that writes without pause to every connection, in its own process:

    python -m tests.e2e.firehose PORT_FILE COUNT_FILE

Every connection carries the same pattern (``PATTERN[i % len(PATTERN)]`` at offset i), so
a reader can check each byte. The total written so far goes to COUNT_FILE every 0.2 s.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

PATTERN = bytes(range(251))
# A whole number of periods, so every chunk continues the pattern where the last ended.
CHUNK = PATTERN * 261


def expected(offset: int, n: int) -> bytes:
    """The n bytes a connection carries from ``offset`` on."""
    start = offset % len(PATTERN)
    reps = (start + n) // len(PATTERN) + 1
    return (PATTERN * reps)[start : start + n]


async def main(port_file: Path, count_file: Path) -> None:
    total = 0

    async def serve(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal total
        sock = w.get_extra_info("socket")
        # Keep the kernel's share small: the point is what the relay holds.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        try:
            while True:
                w.write(CHUNK)
                total += len(CHUNK)
                await w.drain()
        except (ConnectionError, OSError):
            w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=4096)
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(server.sockets[0].getsockname()[1]))
    os.replace(tmp, port_file)
    while True:
        await asyncio.sleep(0.2)
        tmp = count_file.with_suffix(".tmp")
        tmp.write_text(str(total))
        os.replace(tmp, count_file)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
