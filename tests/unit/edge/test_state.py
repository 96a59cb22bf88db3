"""EdgeState: one committed transaction (a batch) applied at a time, connections judged
once the whole batch is in; snapshots built aside and swapped in; bad rows reported."""

from __future__ import annotations

import time
from typing import Any

import pytest

from entryguard.edge.follower import batches
from entryguard.edge.state import EdgeState, Tunnel
from entryguard.net.allowlist import ip_of
from entryguard.sync.changes import ChangeError, ChangeRow

IP = ip_of("203.0.113.7")


def grant_json(
    gid: int, cidr: str = "203.0.113.7/32", expires: str | None = None
) -> dict[str, Any]:
    return {
        "id": gid,
        "resource_id": 1,
        "cidr": cidr,
        "source": "session",
        "source_id": 2,
        "expires_at": expires,
    }


def snapshot(grants: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "revision": 10,
        "tunnels": [
            {"id": 1, "name": "db", "port": 41000, "agent_key_id": 3},
            {"id": 2, "name": "web", "port": 41001, "agent_key_id": 3},
        ],
        "agents": [],
        "grants": [grant_json(7)] if grants is None else grants,
    }


def grant(gid: int, rev: int, batch: int, expires: str | None = None) -> ChangeRow:
    data = grant_json(gid, expires=expires)
    return ChangeRow.parse({"revision": rev, "batch": batch, "op": "grant.add", "data": data})


def remove(gid: int, rev: int, batch: int) -> ChangeRow:
    data = {"id": gid, "resource_id": 1, "reason": "role_changed"}
    return ChangeRow.parse({"revision": rev, "batch": batch, "op": "grant.remove", "data": data})


class Recorder:
    """Stands where the edge cuts connections: records whether the IP was covered
    each time it is asked to judge a tunnel."""

    def __init__(self, state: EdgeState) -> None:
        self.seen: list[tuple[int, bool]] = []
        self.added: list[int] = []
        self.removed: list[int] = []
        state.on_grant_removed = self.judge
        state.on_tunnel_added = lambda t: self.added.append(t.id)
        state.on_tunnel_removed = lambda t: self.removed.append(t.id)

    def judge(self, t: Tunnel) -> None:
        self.seen.append((t.id, t.allow.covers(IP, time.time())))


def loaded() -> tuple[EdgeState, Recorder]:
    st = EdgeState()
    rec = Recorder(st)
    assert st.load_snapshot(snapshot()) == []
    rec.seen.clear()
    return st, rec


def test_remove_and_re_add_in_one_batch_is_judged_once_and_still_covered() -> None:
    st, rec = loaded()
    assert st.apply_batch([remove(7, 11, 11), grant(8, 12, 11)]) == 2
    assert rec.seen == [(1, True)]
    assert st.revision == 12


def test_the_same_rows_one_at_a_time_would_cut() -> None:
    st, rec = loaded()
    st.apply(remove(7, 11, 11))
    st.apply(grant(8, 12, 11))
    assert rec.seen[0] == (1, False)


def test_a_moved_grant_keeps_its_id_and_takes_the_new_expiry() -> None:
    st, rec = loaded()
    st.apply_batch([grant(7, 11, 11, expires="2099-01-01T00:00:00Z")])
    (entry,) = st.tunnels[1].allow.entries()
    assert entry.grant_id == "7" and entry.expires_at is not None and entry.expires_at > time.time()
    assert rec.seen == [(1, True)]


def test_a_replayed_batch_changes_nothing() -> None:
    st, rec = loaded()
    st.apply_batch([remove(7, 11, 11)])
    assert st.apply_batch([remove(7, 11, 11)]) == 0
    assert st.revision == 11 and len(rec.seen) == 1


def test_untouched_tunnels_are_not_judged() -> None:
    st, rec = loaded()
    agent = {"key_id": 3, "name": "a", "prefix": "eg_x", "key_sha256": "0", "expires_at": None}
    st.apply_batch([ChangeRow.parse({"revision": 11, "op": "agent.upsert", "data": agent})])
    assert rec.seen == [] and 3 in st.agents


def test_batches_group_consecutive_rows_of_one_transaction() -> None:
    rows = [remove(7, 11, 11), grant(8, 12, 11), grant(9, 13, 13), grant(10, 14, 14)]
    assert [[c.revision for c in b] for b in batches(rows)] == [[11, 12], [13], [14]]


@pytest.mark.parametrize(
    "raw",
    [
        {"revision": 5, "op": "grant.frobnicate", "data": {}},
        {"revision": 5, "op": "grant.add", "data": grant_json(1, cidr="fe80::1%eth0/128")},
        {"revision": 5, "op": "grant.add", "data": grant_json(1, expires="tomorrow")},
        {"revision": 5, "op": "grant.remove", "data": {"id": "7"}},
        {"revision": 5, "op": "tunnel.upsert", "data": {"id": 1, "name": "x", "port": 70000}},
        {"revision": "5", "op": "agent.remove", "data": {"key_id": 1}},
        {"revision": 5, "op": "agent.remove", "data": None},
    ],
)
def test_unknown_or_malformed_rows_are_errors_never_silent(raw: dict[str, Any]) -> None:
    with pytest.raises(ChangeError):
        ChangeRow.parse(raw)


def test_a_poisoned_grant_in_a_snapshot_is_skipped_and_reported() -> None:
    st = EdgeState()
    problems = st.load_snapshot(snapshot([grant_json(7), grant_json(8, cidr="fe80::1%eth0/128")]))
    assert len(problems) == 1 and "fe80::1%eth0" in problems[0]
    assert st.tunnels[1].allow.covers(IP, time.time())
    assert sorted(st.by_port) == [41000, 41001]


def test_a_snapshot_that_fails_leaves_the_state_in_force() -> None:
    st, _rec = loaded()
    bad = snapshot()
    bad["revision"] = 99
    bad["tunnels"][1]["port"] = "x"
    with pytest.raises(ChangeError):
        st.load_snapshot(bad)
    assert st.revision == 10 and sorted(st.by_port) == [41000, 41001]
    assert st.tunnels[1].allow.covers(IP, time.time())


def test_a_reloaded_tunnel_keeps_its_object_and_takes_the_new_grants() -> None:
    st, rec = loaded()
    tunnel = st.tunnels[1]
    st.load_snapshot(snapshot(grants=[]))
    assert st.tunnels[1] is tunnel, "the listener holds this object"
    assert not tunnel.allow.covers(IP, time.time())
    assert rec.added == [1, 2] and rec.removed == []
    assert (1, False) in rec.seen
