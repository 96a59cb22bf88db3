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

    def load_snapshot(self, snap: dict[str, Any]) -> None:
        old = dict(self.tunnels)
        self.tunnels, self.by_port, self.agents, self._grant_tunnel = {}, {}, {}, {}
        for a in snap["agents"]:
            self._agent_upsert(a)
        for t in snap["tunnels"]:
            tun = Tunnel(t["id"], t["name"], t["port"], t["agent_key_id"])
            self.tunnels[tun.id] = tun
            self.by_port[tun.port] = tun
        for g in snap["grants"]:
            self._grant_add(g)
        self.revision = int(snap["revision"])
        for tid, t in old.items():
            if tid not in self.tunnels or self.tunnels[tid].port != t.port:
                self.on_tunnel_removed(t)
        for tid, t in self.tunnels.items():
            if tid not in old or old[tid].port != t.port:
                self.on_tunnel_added(t)
            else:
                self.on_grant_removed(t)  # grants may have shrunk while we were away

    def apply(self, change: dict[str, Any]) -> bool:
        """Apply one change-log row as a batch of its own; False when already applied."""
        return self.apply_batch([change]) > 0

    def apply_batch(self, changes: list[dict[str, Any]]) -> int:
        """Apply the rows of one committed transaction together; returns how many were new.

        Connections are judged only once the whole batch is in: a grant removed and
        re-added, or moved to a new session, in one transaction cuts nobody
        (docs/sync.md, "Batches").
        """
        touched: set[int] = set()  # tunnels whose grants changed
        applied = 0
        for change in changes:
            rev = int(change["revision"])
            if rev <= self.revision:
                continue
            self._apply_one(change["op"], change["data"], touched)
            self.revision = rev
            applied += 1
        for tid in sorted(touched):
            tun = self.tunnels.get(tid)
            if tun is not None:
                self.on_grant_removed(tun)
        return applied

    def _apply_one(self, op: str, data: dict[str, Any], touched: set[int]) -> None:
        if op == "grant.add":
            tid = self._grant_add(data)
            if tid is not None:
                touched.add(tid)  # an upsert may shorten an expiry
        elif op == "grant.remove":
            tid = self._grant_tunnel.pop(data["id"], None)
            tun = self.tunnels.get(tid) if tid is not None else None
            if tun is not None:
                tun.allow.remove(str(data["id"]))
                touched.add(tun.id)
        elif op == "tunnel.upsert":
            self._tunnel_upsert(data)
        elif op == "tunnel.remove":
            tun = self.tunnels.pop(data["id"], None)
            if tun is not None:
                self.by_port.pop(tun.port, None)
                for gid in [g for g, t in self._grant_tunnel.items() if t == tun.id]:
                    del self._grant_tunnel[gid]
                self.on_tunnel_removed(tun)
                self.on_tunnels_changed(tun.agent_key_id)
        elif op == "agent.upsert":
            self._agent_upsert(data)
        elif op == "agent.remove":
            if self.agents.pop(data["key_id"], None) is not None:
                self.on_agent_removed(data["key_id"])

    def _agent_upsert(self, a: dict[str, Any]) -> None:
        self.agents[a["key_id"]] = AgentCredential(
            a["key_id"], a["name"], a["prefix"], a["key_sha256"], _ts(a.get("expires_at"))
        )

    def _tunnel_upsert(self, t: dict[str, Any]) -> None:
        old = self.tunnels.get(t["id"])
        if old is not None and old.port == t["port"] and old.agent_key_id == t["agent_key_id"]:
            old.name = t["name"]
            return
        tun = Tunnel(
            t["id"], t["name"], t["port"], t["agent_key_id"], old.allow if old else AllowList()
        )
        if old is not None:
            self.by_port.pop(old.port, None)
            self.on_tunnel_removed(old)
        self.tunnels[tun.id] = tun
        self.by_port[tun.port] = tun
        self.on_tunnel_added(tun)
        self.on_tunnels_changed(tun.agent_key_id)

    def _grant_add(self, g: dict[str, Any]) -> int | None:
        """Add or replace (by id) a grant; returns its tunnel id, None for script resources."""
        tun = self.tunnels.get(g["resource_id"])
        if tun is None:
            return None  # a script resource's grant: not the edge's business
        tun.allow.add(
            Entry(str(g["id"]), parse_cidr(g["cidr"], allow_any=True), _ts(g.get("expires_at")))
        )
        self._grant_tunnel[g["id"]] = tun.id
        return tun.id
