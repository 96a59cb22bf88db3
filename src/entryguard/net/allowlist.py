"""An allowlist of grants keyed by id, answering "does any live grant cover this IP?"."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from entryguard.net.cidr import IPAddress, IPNetwork, normalize_ip


@dataclass(frozen=True, slots=True)
class Entry:
    grant_id: str
    network: IPNetwork
    expires_at: float | None  # unix time; None = no expiry
    static: bool = False  # a static rule: still admitted when the edge fails closed


class AllowList:
    """Grants of one resource. Expiry is checked against the caller's clock (``now``)."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._entries: dict[str, Entry] = {e.grant_id: e for e in entries}

    def add(self, entry: Entry) -> None:
        self._entries[entry.grant_id] = entry

    def remove(self, grant_id: str) -> Entry | None:
        return self._entries.pop(grant_id, None)

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def covers(self, ip: IPAddress, now: float, *, static_only: bool = False) -> bool:
        """True when a live grant covers ``ip``; with ``static_only``, only a static rule
        counts (an edge that fails closed without its control plane)."""
        ip = normalize_ip(ip)
        for e in self._entries.values():
            if e.expires_at is not None and e.expires_at <= now:
                continue
            if static_only and not e.static:
                continue
            if ip.version == e.network.version and ip in e.network:
                return True
        return False

    def expired(self, now: float) -> list[Entry]:
        return [
            e for e in self._entries.values() if e.expires_at is not None and e.expires_at <= now
        ]

    def next_expiry(self) -> float | None:
        times = [e.expires_at for e in self._entries.values() if e.expires_at is not None]
        return min(times) if times else None


def ip_of(text: str) -> IPAddress:
    """Parse a socket's peer address (possibly with a zone id) and normalise it."""
    return normalize_ip(ipaddress.ip_address(text.split("%", 1)[0]))
