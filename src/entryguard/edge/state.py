"""The edge's in-memory picture of the control plane: tunnels, agents, grants.

Built from a snapshot and kept current by applying change-log rows in revision order.
Applying is idempotent and revisions at or below the applied one are ignored, so a
replay after a reconnect never applies anything twice. The owner is told about
effects through the ``on_*`` callbacks (open/close a listener, cut connections).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from entryguard.net import AllowList, parse_cidr
from entryguard.net.allowlist import Entry
from entryguard.sync.changes import (
    AgentRemove,
    AgentUpsert,
    ChangeError,
    ChangeRow,
    GrantAdd,
    GrantRemove,
    Payload,
    TunnelRemove,
    TunnelUpsert,
)


@dataclass
class Tunnel:
    id: int
    name: str
    port: int
    agent_key_id: int
    allow: AllowList = field(default_factory=AllowList)


@dataclass(frozen=True)
class AgentCredential:
    key_id: int
    name: str
    prefix: str
    key_sha256: str
    expires_at: float | None


def _ts(text: str | None) -> float | None:
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class EdgeState:
    def __init__(self) -> None:
        self.revision = 0
        self.tunnels: dict[int, Tunnel] = {}
        self.by_port: dict[int, Tunnel] = {}
        self.agents: dict[int, AgentCredential] = {}
        self._grant_tunnel: dict[int, int] = {}  # grant id -> tunnel id
        self.on_tunnel_added: Callable[[Tunnel], None] = lambda t: None
        self.on_tunnel_removed: Callable[[Tunnel], None] = lambda t: None
        self.on_grant_removed: Callable[[Tunnel], None] = lambda t: None
        self.on_agent_removed: Callable[[int], None] = lambda key_id: None
        self.on_tunnels_changed: Callable[[int], None] = lambda key_id: None

    # --- queries -------------------------------------------------------------

    def verify_agent(self, secret: str, now: float) -> AgentCredential | None:
        """The credential for a presented API key, checked in constant time."""
        parts = secret.split("_", 2)
        if len(parts) != 3:
            return None
        prefix = f"{parts[0]}_{parts[1]}"
        digest = hashlib.sha256(secret.encode()).hexdigest()
        for cred in self.agents.values():
            if cred.prefix == prefix and hmac.compare_digest(cred.key_sha256, digest):
                if cred.expires_at is not None and cred.expires_at <= now:
                    return None
                return cred
        return None

    # --- applying ------------------------------------------------------------

    def load_snapshot(self, snap: dict[str, Any]) -> list[str]:
        """Replace the whole state with a snapshot; returns the problems found in it.

        Built aside and swapped in at the end, so a snapshot that fails to parse leaves
        the current state as it was (``ChangeError`` or ``KeyError`` propagates). A single
        bad grant or agent row is skipped and reported instead: one poisoned row must not
        take every tunnel down.
        """
        problems: list[str] = []
        revision = snap["revision"]
        if not isinstance(revision, int) or isinstance(revision, bool):
            raise ChangeError("snapshot revision must be an integer")
        agents: dict[int, AgentCredential] = {}
        for a in snap["agents"]:
            try:
                cred = _credential(AgentUpsert.parse(a))
            except ChangeError as exc:
                problems.append(f"agent {a.get('key_id') if isinstance(a, dict) else a!r}: {exc}")
                continue
            agents[cred.key_id] = cred
        tunnels: dict[int, Tunnel] = {}
        for raw in snap["tunnels"]:
            tu = TunnelUpsert.parse(raw)  # a bad tunnel fails the load: ports are at stake
            tunnels[tu.id] = Tunnel(tu.id, tu.name, tu.port, tu.agent_key_id)
        grant_tunnel: dict[int, int] = {}
        for raw in snap["grants"]:
            try:
                g = GrantAdd.parse(raw)
            except ChangeError as exc:
                problems.append(str(exc))
                continue
            tun = tunnels.get(g.resource_id)
            if tun is not None:
                tun.allow.add(_entry(g))
                grant_tunnel[g.id] = tun.id

        # Swap. A tunnel that kept its port and agent keeps its object (its listener
        # holds it) and takes the new allowlist.
        old = self.tunnels
        for tid, tun in list(tunnels.items()):
            prev = old.get(tid)
            if prev is not None and prev.port == tun.port and prev.agent_key_id == tun.agent_key_id:
                prev.name, prev.allow = tun.name, tun.allow
                tunnels[tid] = prev
        self.tunnels = tunnels
        self.by_port = {t.port: t for t in tunnels.values()}
        self.agents = agents
        self._grant_tunnel = grant_tunnel
        self.revision = revision
        for tid, t in old.items():
            if tunnels.get(tid) is not t:
                self.on_tunnel_removed(t)
        for tid, t in tunnels.items():
            if old.get(tid) is not t:
                self.on_tunnel_added(t)
            else:
                self.on_grant_removed(t)  # grants may have shrunk while we were away
        return problems

    def apply(self, change: ChangeRow) -> bool:
        """Apply one change-log row as a batch of its own; False when already applied."""
        return self.apply_batch([change]) > 0

    def apply_batch(self, changes: list[ChangeRow]) -> int:
        """Apply the rows of one committed transaction together; returns how many were new.

        Connections are judged only once the whole batch is in: a grant removed and
        re-added, or moved to a new session, in one transaction cuts nobody
        (docs/sync.md, "Batches").
        """
        touched: set[int] = set()  # tunnels whose grants changed
        applied = 0
        for change in changes:
            if change.revision <= self.revision:
                continue
            self._apply_one(change.payload, touched)
            self.revision = change.revision
            applied += 1
        for tid in sorted(touched):
            tun = self.tunnels.get(tid)
            if tun is not None:
                self.on_grant_removed(tun)
        return applied

    def skip(self, revision: int) -> None:
        """Move past a row that could not be parsed (the owner resyncs from a snapshot)."""
        self.revision = max(self.revision, revision)

    def _apply_one(self, p: Payload, touched: set[int]) -> None:
        match p:
            case GrantAdd():
                tun = self.tunnels.get(p.resource_id)
                if tun is not None:  # else a script resource's grant: not the edge's business
                    tun.allow.add(_entry(p))
                    self._grant_tunnel[p.id] = tun.id
                    touched.add(tun.id)  # an upsert may shorten an expiry
            case GrantRemove():
                tid = self._grant_tunnel.pop(p.id, None)
                gone = self.tunnels.get(tid) if tid is not None else None
                if gone is not None:
                    gone.allow.remove(str(p.id))
                    touched.add(gone.id)
            case TunnelUpsert():
                self._tunnel_upsert(p)
            case TunnelRemove():
                removed = self.tunnels.pop(p.id, None)
                if removed is not None:
                    self.by_port.pop(removed.port, None)
                    for gid in [g for g, t in self._grant_tunnel.items() if t == removed.id]:
                        del self._grant_tunnel[gid]
                    self.on_tunnel_removed(removed)
                    self.on_tunnels_changed(removed.agent_key_id)
            case AgentUpsert():
                cred = _credential(p)
                self.agents[cred.key_id] = cred
            case AgentRemove():
                if self.agents.pop(p.key_id, None) is not None:
                    self.on_agent_removed(p.key_id)

    def _tunnel_upsert(self, t: TunnelUpsert) -> None:
        old = self.tunnels.get(t.id)
        if old is not None and old.port == t.port and old.agent_key_id == t.agent_key_id:
            old.name = t.name
            return
        tun = Tunnel(t.id, t.name, t.port, t.agent_key_id, old.allow if old else AllowList())
        if old is not None:
            self.by_port.pop(old.port, None)
            self.on_tunnel_removed(old)
        self.tunnels[tun.id] = tun
        self.by_port[tun.port] = tun
        self.on_tunnel_added(tun)
        self.on_tunnels_changed(tun.agent_key_id)


def _entry(g: GrantAdd) -> Entry:
    return Entry(
        str(g.id), parse_cidr(g.cidr, allow_any=True), _ts(g.expires_at), g.source == "rule"
    )


def _credential(a: AgentUpsert) -> AgentCredential:
    return AgentCredential(a.key_id, a.name, a.prefix, a.key_sha256, _ts(a.expires_at))
