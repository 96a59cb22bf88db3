"""The change stream's messages (sync/stream.py) and the tail's batch slicing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entryguard.control.services.change_tail import ChangeTail
from entryguard.control.services.edge_sync import ChangeRow
from entryguard.sync.stream import (
    Ack,
    Changes,
    Heartbeat,
    Hello,
    StreamError,
    StreamFailure,
    encode,
    parse_edge,
    parse_server,
)


@pytest.mark.parametrize(
    "msg",
    [
        Hello(revision=3, interval=1.0, edge_id=7),
        Changes(revision=9, changes=[{"revision": 9, "batch": 8, "op": "grant.add", "data": {}}]),
        Heartbeat(revision=9),
        StreamFailure(code="revision_gone", message="fetch the snapshot"),
    ],
)
def test_server_messages_round_trip(msg: Any) -> None:
    assert parse_server(encode(msg)) == msg


def test_acks_round_trip_and_default_to_ok() -> None:
    assert parse_edge(encode(Ack(revision=4, health="fail-closed"))) == Ack(4, "fail-closed")
    assert parse_edge('{"type":"ack","revision":4}') == Ack(4, "ok")


@pytest.mark.parametrize(
    ("parse", "raw"),
    [
        (parse_edge, "{not json"),
        (parse_edge, "[]"),
        (parse_edge, '{"type":"ack"}'),
        (parse_edge, '{"type":"ack","revision":-1}'),
        (parse_edge, '{"type":"ack","revision":true}'),
        (parse_edge, '{"type":"ack","revision":1,"health":"great"}'),
        (parse_edge, '{"type":"heartbeat","revision":1}'),  # the replica's, not the edge's
        (parse_server, '{"type":"hello","revision":1,"interval":0,"edge_id":1}'),
        (parse_server, '{"type":"changes","revision":1,"changes":[1]}'),
        (parse_server, '{"type":"nope","revision":1}'),
    ],
)
def test_bad_messages_are_refused_with_a_reason(parse: Any, raw: str) -> None:
    with pytest.raises(StreamError):
        parse(raw)


@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        max_leaves=8,
    )
)
def test_nothing_parses_into_a_crash(value: object) -> None:
    raw = json.dumps(value)
    for parse in (parse_edge, parse_server):
        try:
            parse(raw)
        except StreamError:
            pass


def rows(*batches: int) -> list[ChangeRow]:
    """One row per entry, revisions 1…n, each carrying the given batch number."""
    return [
        ChangeRow(revision=i + 1, batch=b, op="grant.remove", data={})
        for i, b in enumerate(batches)
    ]


def tail_with(kept: list[ChangeRow], floor: int) -> ChangeTail:
    t = ChangeTail(db=None)  # type: ignore[arg-type]  # after() reads memory only
    t.rows, t._revs = kept, [r.revision for r in kept]
    t.floor, t.head = floor, kept[-1].revision if kept else floor
    return t


def test_the_tail_never_splits_a_batch_and_knows_what_it_does_not_keep() -> None:
    t = tail_with(rows(1, 2, 2, 2, 5, 6)[1:], floor=1)  # keeps revisions 2..6
    got = t.after(1, limit=2)
    assert got is not None and [r.revision for r in got] == [2, 3, 4]  # batch 2 whole
    got = t.after(4, limit=1)
    assert got is not None and [r.revision for r in got] == [5]
    assert t.after(6) == []
    assert t.after(0) is None  # before the floor: the caller reads the database
