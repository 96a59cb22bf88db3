"""The link's memory budget in the sans-I/O mux (docs/protocol.md, "Memory per link"),
and the settings that size it (``relay.limits``, ``tunnel.link_memory``)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from entryguard.agent.config import ConfigError, parse_config
from entryguard.mux import INITIAL_WINDOW, WINDOW_FLOOR, MuxConnection, StreamReset
from entryguard.relay.limits import LinkLimits, SizeError, format_size, parse_size
from tests.unit.test_mux_protocol import Pair

KiB, MiB = 1024, 1024 * 1024


def budget_pair(budget: int, **kw: int) -> Pair:
    return Pair(
        window=INITIAL_WINDOW, max_window=MiB, link_memory=budget, window_floor=WINDOW_FLOOR, **kw
    )


def held(mux: MuxConnection) -> int:
    """Credit granted and unused plus bytes received and unconsumed, from the streams."""
    return sum(st.recv_window + st.recv_buffered for st in mux._streams.values())


def push(p: Pair, sid: int, n: int) -> None:
    """The edge sends n bytes (as its window allows) and the agent consumes them."""
    while n:
        taken = p.edge.send_data(sid, b"x" * min(n, 256 * KiB))
        assert taken, "the edge has no window: the stream stalled"
        p.pump()
        p.agent.consumed(sid, taken)
        p.pump()
        n -= taken


def test_a_window_starts_small_and_grows_to_the_max_while_the_budget_allows() -> None:
    p = budget_pair(64 * MiB)
    sid = p.open()
    assert p.edge.send_room(sid) == INITIAL_WINDOW
    push(p, sid, INITIAL_WINDOW // 4 - 1)  # not worth a frame yet
    assert p.edge.send_room(sid) == INITIAL_WINDOW * 3 // 4 + 1
    push(p, sid, 1)  # a quarter consumed: the window is topped up to 1 MiB
    assert p.edge.send_room(sid) == MiB
    assert p.agent.memory_committed == held(p.agent) == MiB


def test_windows_shrink_when_the_budget_is_tight_and_grow_back_when_it_frees() -> None:
    p = budget_pair(MiB, max_streams=100)
    sids = [p.open() for _ in range(32)]  # 32 × 64 KiB granted at open: 2 MiB
    for sid in sids:
        push(p, sid, INITIAL_WINDOW)
    rooms = [p.edge.send_room(sid) for sid in sids]
    # A fair share (1 MiB / 32 = 32 KiB) at most, the floor at least.
    assert all(WINDOW_FLOOR <= r <= 32 * KiB for r in rooms), rooms
    assert p.agent.memory_committed == held(p.agent) <= MiB
    # The others go: the last one's window grows back on its next credit.
    for sid in sids[:-1]:
        p.edge.send_reset(sid, 1)
    p.pump()
    last = sids[-1]
    push(p, last, p.edge.send_room(last))
    assert p.edge.send_room(last) == MiB


def test_credit_already_granted_is_never_taken_back() -> None:
    p = budget_pair(2 * MiB, max_streams=100)
    first = p.open()
    push(p, first, INITIAL_WINDOW // 4)
    assert p.edge.send_room(first) == MiB  # granted while the link was empty
    others = [p.open() for _ in range(20)]  # now the budget is tight
    for sid in others:
        push(p, sid, INITIAL_WINDOW)
    # The whole megabyte can still be sent: no fault, no reset.
    assert p.edge.send_data(first, b"y" * MiB) == MiB
    at_edge, at_agent = p.pump()
    assert not [e for e in at_edge + at_agent if isinstance(e, StreamReset)]
    p.agent.consumed(first, MiB)
    p.pump()
    assert p.edge.send_room(first) < MiB  # the new window is the tight one


def test_the_peers_fin_releases_the_credit_it_can_no_longer_use() -> None:
    p = budget_pair(64 * MiB)
    sid = p.open()
    assert p.agent.memory_committed == INITIAL_WINDOW
    p.edge.send_fin(sid)
    p.pump()
    assert p.agent.memory_committed == 0


@pytest.mark.parametrize("seed", range(5))
def test_random_traffic_keeps_the_budget_and_every_stream_progresses(seed: int) -> None:
    rnd = random.Random(seed)
    budget = 2 * MiB
    p = budget_pair(budget, max_streams=1000)
    live: list[int] = []
    unconsumed: dict[int, int] = {}
    for _ in range(600):
        op = rnd.random()
        if op < 0.15 or not live:
            live.append(p.open())
            unconsumed[live[-1]] = 0
        elif op < 0.2:
            sid = live.pop(rnd.randrange(len(live)))
            p.edge.send_reset(sid, 1)
            del unconsumed[sid]
        elif op < 0.7:
            sid = rnd.choice(live)
            unconsumed[sid] += p.edge.send_data(sid, b"z" * rnd.randrange(1, 300 * KiB))
        else:
            sid = rnd.choice(live)
            n = rnd.randrange(0, unconsumed[sid] + 1)
            p.pump()
            p.agent.consumed(sid, n)
            unconsumed[sid] -= n
        p.pump()
        committed = p.agent.memory_committed
        assert committed == held(p.agent)
        n = len(live)
        # Over the budget only by what is granted whatever it says: each stream's
        # initial window (or the floor that keeps it moving, which is less).
        assert committed <= budget + n * INITIAL_WINDOW
    # Consuming everything gives every stream a window again: nothing is stuck.
    for sid in live:
        p.agent.consumed(sid, unconsumed[sid])
        p.pump()
    for sid in live:
        assert p.edge.send_room(sid) >= WINDOW_FLOOR * 3 // 4


def test_sizes_are_binary_units_or_bytes() -> None:
    assert parse_size("64MiB") == 64 * MiB
    assert parse_size(" 512 kib ") == 512 * KiB
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("4096") == 4096
    for bad in ("64MB", "1.5GiB", "-1MiB", "lots", ""):
        with pytest.raises(SizeError, match="is not a size"):
            parse_size(bad)
    assert format_size(64 * MiB) == "64MiB"
    assert format_size(1000) == "1000B"


def test_link_limits_build_the_mux_and_refuse_nonsense() -> None:
    mux = LinkLimits(link_memory=32 * MiB, max_streams=50_000).new_mux("edge")
    assert (mux.link_memory, mux.max_streams) == (32 * MiB, 50_000)
    assert (mux.initial_window, mux.max_window) == (INITIAL_WINDOW, MiB)
    with pytest.raises(ValueError, match="at least 64KiB"):
        LinkLimits(link_memory=1024)
    with pytest.raises(ValueError, match="max streams"):
        LinkLimits(max_streams=0)


def test_the_agent_config_takes_the_link_limits_strictly() -> None:
    base = {"server": {"url": "http://cp", "api_key": "eg_a_b"}, "agent": {"name": "a"}}
    path = Path("agent.yml")
    cfg = parse_config(base, path)
    assert cfg.tunnel.link_limits() == LinkLimits()
    cfg = parse_config({**base, "tunnel": {"link_memory": "16MiB", "max_streams": 50_000}}, path)
    assert cfg.tunnel.link_limits() == LinkLimits(link_memory=16 * MiB, max_streams=50_000)
    for tunnel, message in (
        ({"link_memory": "64MB"}, "tunnel.link_memory: '64MB' is not a size"),
        ({"link_memory": True}, "tunnel.link_memory: must be a size"),
        ({"max_streams": "many"}, "tunnel.max_streams: must be a whole number"),
        ({"max_streams": 0}, "tunnel.max_streams: max streams must be 1"),
        ({"link_memroy": "1MiB"}, "unknown key 'tunnel.link_memroy'"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config({**base, "tunnel": tunnel}, path)
