"""EdgeState applies one committed transaction (a batch) at a time and judges live
connections only once the whole batch is in."""

from __future__ import annotations

import time
from typing import Any

from entryguard.edge.follower import batches
from entryguard.edge.state import EdgeState, Tunnel
from entryguard.net.allowlist import ip_of

IP = ip_of("203.0.113.7")


def snapshot() -> dict[str, Any]:
    return {
        "revision": 10,
        "tunnels": [
            {"id": 1, "name": "db", "port": 41000, "agent_key_id": 3},
            {"id": 2, "name": "web", "port": 41001, "agent_key_id": 3},
        ],
        "agents": [],
        "grants": [
            {
                "id": 7,
                "resource_id": 1,
                "cidr": "203.0.113.7/32",
                "source": "session",
                "source_id": 1,
                "expires_at": None,
            },
        ],
    }


def grant(gid: int, rev: int, batch: int, expires: str | None = None) -> dict[str, Any]:
    return {
        "revision": rev,
        "batch": batch,
        "op": "grant.add",
        "data": {
            "id": gid,
            "resource_id": 1,
            "cidr": "203.0.113.7/32",
            "source": "session",
            "source_id": 2,
            "expires_at": expires,
        },
    }


def remove(gid: int, rev: int, batch: int) -> dict[str, Any]:
    return {
        "revision": rev,
        "batch": batch,
        "op": "grant.remove",
        "data": {"id": gid, "resource_id": 1, "reason": "role_changed"},
    }


class Recorder:
    """Stands where the edge cuts connections: records whether the IP was covered
    each time it is asked to judge a tunnel."""

    def __init__(self, state: EdgeState) -> None:
        self.seen: list[tuple[int, bool]] = []
        state.on_grant_removed = self.judge

    def judge(self, t: Tunnel) -> None:
        self.seen.append((t.id, t.allow.covers(IP, time.time())))


def loaded() -> tuple[EdgeState, Recorder]:
    st = EdgeState()
    st.load_snapshot(snapshot())
    return st, Recorder(st)


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
    entry = st.tunnels[1].allow.entries()[0]
    assert entry.grant_id == "7" and entry.expires_at is not None and entry.expires_at > time.time()
    assert rec.seen == [(1, True)]


def test_a_replayed_batch_changes_nothing() -> None:
    st, rec = loaded()
    st.apply_batch([remove(7, 11, 11)])
    assert st.apply_batch([remove(7, 11, 11), grant(8, 12, 11)][:1]) == 0
    assert st.revision == 11 and len(rec.seen) == 1


def test_untouched_tunnels_are_not_judged() -> None:
    st, rec = loaded()
    st.apply_batch(
        [
            {
                "revision": 11,
                "batch": 11,
                "op": "agent.upsert",
                "data": {
                    "key_id": 3,
                    "name": "a",
                    "prefix": "eg_x",
                    "key_sha256": "0",
                    "expires_at": None,
                },
            }
        ]
    )
    assert rec.seen == []


def test_batches_group_consecutive_rows_of_one_transaction() -> None:
    rows = [
        remove(7, 11, 11),
        grant(8, 12, 11),
        grant(9, 13, 13),
        {"revision": 14, "op": "x", "data": {}},
    ]
    assert [[c["revision"] for c in b] for b in batches(rows)] == [[11, 12], [13], [14]]
