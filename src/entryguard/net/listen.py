"""Listening addresses: ``HOST:PORT`` as typed on a command line, and the bound socket.

Library code: a bad address is a ``ValueError`` and a port that cannot be bound a
``ListenError`` (an ``OSError``); only the command-line modules turn them into exits.
"""

from __future__ import annotations

import socket

from entryguard.errors import Unavailable


class ListenError(Unavailable, OSError):
    """A listening address could not be bound; the message says what to do."""

    code = "listen_failed"


def parse_listen(text: str, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``HOST`` (the default port) or ``:PORT`` (127.0.0.1);
    a ``http://``, ``https://``, ``ws://`` or ``wss://`` prefix is ignored."""
    t = (
        text.removeprefix("http://")
        .removeprefix("https://")
        .removeprefix("ws://")
        .removeprefix("wss://")
    )
    host, sep, port = t.rpartition(":")
    if not sep:
        host, port = t, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ValueError(
            f"invalid listen address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080"
        )
    return host, int(port)


def bind_socket(host: str, port: int, flag: str) -> socket.socket:
    """A non-blocking listening TCP socket; ``flag`` names the option that chose the
    address, for the error message (``--listen``, ``--edge-listen``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ListenError(
            f"cannot listen on {host}:{port}: {reason.lower()} "
            f"(is another EntryGuard running? choose another address with {flag})"
        ) from exc
    sock.setblocking(False)
    return sock


def shown_host(host: str) -> str:
    """The host as it appears in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host
