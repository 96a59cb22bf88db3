"""Small real TCP targets for the tunnel tests, each on its own loopback port."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class Echo(socketserver.BaseRequestHandler):
    """Echoes until the client half-closes, then half-closes back."""

    def handle(self) -> None:
        s: socket.socket = self.request
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while data := s.recv(65536):
                s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class Greeter(Echo):
    """Server-first, like MySQL, SSH or SMTP: greets before reading anything."""

    def handle(self) -> None:
        self.request.sendall(b"220 hello from the target\r\n")
        super().handle()


class Sink(socketserver.BaseRequestHandler):
    """Accepts and never reads: its stream's window fills and must stall only itself."""

    def handle(self) -> None:
        self.server.held.append(self.request)  # type: ignore[attr-defined]
        threading.Event().wait(60)


@contextmanager
def serve(handler: type[socketserver.BaseRequestHandler]) -> Iterator[int]:
    srv = _Server(("127.0.0.1", 0), handler)
    srv.held = []  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield int(srv.server_address[1])
    finally:
        srv.shutdown()
        srv.server_close()
        for s in srv.held:  # type: ignore[attr-defined]
            s.close()
