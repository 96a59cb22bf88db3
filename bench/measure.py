"""The bench's environment (targets, stacks) and its measurements, one function each."""

from __future__ import annotations

import contextlib
import json
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import clients, tools
from bench.common import ROOT, Procs, child_env, free_port, rss_kib, wait_until
from bench.stack import Stack

SRC = "127.0.0.2"  # iperf3, sockperf, stall: a session covers it
PG_SRC = "127.0.0.1"  # pgbench cannot bind: a session covers 127.0.0.1
MANY_SRC = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]  # connection-heavy runs
REVOKE_SRC = "127.0.0.9"  # covered only by the static rule each revoke trial adds
SESSIONS = ["127.0.0.1", *MANY_SRC]
KEYS = ["memory", "iperf1", "iperf8", "iperfR", "rtt", "rtt_load", "pg1", "pg16", "pgC"]
KEYS += ["connrate", "stall", "revoke"]


@dataclass
class Plan:
    rounds: int
    iperf_s: float
    rtt_s: float
    pg_s: float
    connrate_s: float
    idle_conns: int
    revoke_trials: int
    stall_samples: int
    tls: bool
    settle_s: float = 0.5
    wait_quiet_s: float = 0.0  # wait up to this long for other processes' CPU to drop
    only: tuple[str, ...] = ()  # run just these measurements


@dataclass
class Env:
    procs: Procs
    tmp: Path
    direct: dict[str, int] = field(default_factory=dict)  # target name -> port
    stacks: dict[str, Stack] = field(default_factory=dict)  # "tunnel", "tls"
    socat2: dict[str, int] = field(default_factory=dict)  # target name -> port of the chain
    pg_db: str | None = None

    def port(self, mode: str, name: str) -> int:
        if mode == "direct":
            return self.direct[name]
        if mode == "socat2":
            return self.socat2[name]
        return self.stacks[mode].tunnels[name]

    def check_alive(self) -> None:
        for st in self.stacks.values():
            st.alive()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- setting up ----------------------------------------------------------------------------


def start_targets(env: Env) -> None:
    p = env.procs.spawn(
        [sys.executable, "-m", "bench.targets"],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        env=child_env(),
        cwd=ROOT,
    )
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], 20)
    if not ready:
        raise RuntimeError("bench.targets did not start")
    env.direct.update(json.loads(p.stdout.readline()))

    iperf_port, sp_port = free_port(), free_port()
    iperf_log = env.tmp / "iperf3-server.log"
    env.procs.spawn(
        ["iperf3", "-s", "--forceflush", "-B", "127.0.0.1", "-p", str(iperf_port)], iperf_log
    )
    env.procs.spawn(
        ["sockperf", "server", "--tcp", "-i", "127.0.0.1", "-p", str(sp_port)],
        env.tmp / "sockperf-server.log",
    )
    if not wait_until(lambda: "Server listening" in iperf_log.read_text(errors="replace"), 10):
        raise RuntimeError(f"iperf3 -s did not start: {iperf_log.read_text()[-500:]}")
    time.sleep(0.5)
    env.direct["iperf"], env.direct["sockperf"] = iperf_port, sp_port


def start_socat_chains(env: Env, with_pg: bool) -> None:
    """A reference with the tunnel's shape: two relays (socat, in C) between client and target.

    Client -> relay -> relay -> target crosses as many processes and sockets as
    client -> edge -> agent -> target, so its figures show what the two extra hops alone
    cost on this machine, whatever the relays are written in. socat forks per
    connection, so it is only used for long-lived connections (never for -C or connrate).
    """
    if shutil.which("socat") is None:
        log("socat not found: no two-relay reference rows")
        return
    targets = {"iperf": env.direct["iperf"], "sockperf": env.direct["sockperf"]}
    if with_pg:
        targets["pg"] = 5432
    for name, port in targets.items():
        for hop in (1, 2):
            listen = free_port()
            env.procs.spawn(
                [
                    "socat",
                    f"TCP-LISTEN:{listen},bind=127.0.0.1,reuseaddr,fork,nodelay",
                    f"TCP:127.0.0.1:{port},nodelay",
                ],
                env.tmp / f"socat-{name}-{hop}.log",
            )
            port = listen
        env.socat2[name] = port
    time.sleep(0.3)


def start_stack(env: Env, mode: str, tls: bool, with_pg: bool) -> Stack:
    st = Stack(mode, env.tmp / mode, env.procs, tls=tls)
    st.start()
    st.tunnel("iperf", "127.0.0.1", env.direct["iperf"])
    st.tunnel("echo", "127.0.0.1", env.direct["echo"])
    if not tls:
        st.tunnel("sockperf", "127.0.0.1", env.direct["sockperf"])
        st.tunnel("sink", "127.0.0.1", env.direct["sink"])
        st.tunnel("revoke", "127.0.0.1", env.direct["echo"], in_role=False)
        if with_pg:
            st.tunnel("pg", "127.0.0.1", 5432)
    for ip in SESSIONS if not tls else [SRC]:
        st.session_for(ip)
    st.start_agent()
    for ip in SESSIONS if not tls else [SRC]:
        st.wait_echo("echo", ip)
    env.stacks[mode] = st
    log(
        f"{mode} stack up: api :{st.api_port}, edge :{st.edge_port}, "
        f"pids entryguard={st.up_pid} eg-agent={st.agent_pid}, tunnels {st.tunnels}"
    )
    return st


# --- the measurements -------------------------------------------------------------------------


def m_rtt_under_load(env: Env, mode: str, plan: Plan) -> dict[str, float]:
    """sockperf while one iperf3 stream runs through the same agent link (or direct)."""
    args = tools.iperf3_args(env.port(mode, "iperf"), SRC, plan.rtt_s + 2, 1, False)
    load = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)
        res = tools.sockperf_rtt(env.port(mode, "sockperf"), SRC, plan.rtt_s)
        out, _ = load.communicate(timeout=plan.rtt_s + 30)
        with contextlib.suppress(tools.ToolError):
            res["load_mbps"] = tools.iperf3_mbps(out)
        return res
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(5)


def m_connrate(env: Env, mode: str, plan: Plan) -> dict[str, Any]:
    args = [
        sys.executable,
        "-m",
        "bench.clients",
        "connrate",
        "--port",
        str(env.port(mode, "echo")),
    ]
    args += ["--sources", ",".join(MANY_SRC), "--concurrency", "32"]
    args += ["--duration", f"{plan.connrate_s:g}"]
    p = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=plan.connrate_s + 60,
        env=child_env(),
        cwd=ROOT,
        check=False,
    )
    if p.returncode != 0:
        raise tools.ToolError(f"connrate client: {p.stderr[-800:]}")
    res: dict[str, Any] = json.loads(p.stdout)
    return res


def m_memory(env: Env, mode: str, plan: Plan) -> dict[str, Any]:
    """RSS growth of `entryguard up` and `eg-agent` for N idle connections through the tunnel.

    On freshly restarted processes: memory freed by earlier runs would otherwise be
    reused and hide the real cost (0.3 KiB/connection instead of ~5 in a trial run).
    Then one iperf3 stream on the heap those connections grew ("warm"), and a restart
    again, so that every other run of the round starts from fresh processes.
    """
    st = env.stacks[mode]
    st.restart()

    def streams() -> float:
        return st.metric("entryguard_edge_streams_open") or 0.0

    # Streams some earlier run left open (e.g. a stalled one whose client went away).
    baseline = streams()
    time.sleep(1.0)
    before = rss_kib(st.up_pid), rss_kib(st.agent_pid)
    socks, secs = clients.open_idle(st.tunnels["echo"], MANY_SRC[1:], plan.idle_conns, 300)
    try:
        time.sleep(1.5)
        open_seen = streams()
        after = rss_kib(st.up_pid), rss_kib(st.agent_pid)
    finally:
        clients.close_all(socks)
    t = time.monotonic()
    closed = wait_until(lambda: streams() <= baseline, 60, 0.2)
    log(f"memory: opened in {secs:.1f} s; closed again in {time.monotonic() - t:.1f} s")
    warm: float | None = None
    try:
        warm = tools.iperf3(st.tunnels["iperf"], SRC, plan.iperf_s)
    except tools.ToolError as exc:
        log(f"memory: warm iperf3 failed: {exc}")
    st.restart()
    n = plan.idle_conns
    d_edge, d_agent = after[0] - before[0], after[1] - before[1]
    return {
        "connections": n,
        "open_seconds": secs,
        "streams_open_before": baseline,
        "streams_open_seen": open_seen,
        "all_closed_after": closed,
        "edge_rss_kib": [before[0], after[0]],
        "agent_rss_kib": [before[1], after[1]],
        "edge_kib_per_conn": d_edge / n,
        "agent_kib_per_conn": d_agent / n,
        "kib_per_conn": (d_edge + d_agent) / n,
        "warm_iperf1": warm,
    }


def m_revoke(env: Env, mode: str, plan: Plan) -> dict[str, Any]:
    st = env.stacks[mode]

    def create_rule() -> int:
        rule = st.call(
            "POST", "/admin/rules", json={"resource": "revoke", "cidr": f"{REVOKE_SRC}/32"}
        )["rule"]
        return int(rule["id"])

    return clients.revoke_trials(
        create_rule,
        st.api_port,
        st.admin_token,
        st.tunnels["revoke"],
        REVOKE_SRC,
        plan.revoke_trials,
        budget=240,
    )


Measure = Callable[[Env, str, Plan], Any]


def measurements(env: Env, plan: Plan) -> list[tuple[str, list[str], Measure]]:
    both = ["direct", "tunnel"]
    ref = ["socat2"] if env.socat2 else []  # the two-relay reference, long-lived conns only
    iperf_modes = [*both, "tls"] if plan.tls else both
    ms: list[tuple[str, list[str], Measure]] = [
        (
            "iperf1",
            [*iperf_modes, *ref],
            lambda e, m, p: tools.iperf3(e.port(m, "iperf"), SRC, p.iperf_s),
        ),
        (
            "iperf8",
            iperf_modes,
            lambda e, m, p: tools.iperf3(e.port(m, "iperf"), SRC, p.iperf_s, streams=8),
        ),
        (
            "iperfR",
            iperf_modes,
            lambda e, m, p: tools.iperf3(e.port(m, "iperf"), SRC, p.iperf_s, reverse=True),
        ),
        (
            "rtt",
            [*both, *ref],
            lambda e, m, p: tools.sockperf_rtt(e.port(m, "sockperf"), SRC, p.rtt_s),
        ),
        ("rtt_load", both, m_rtt_under_load),
    ]
    if env.pg_db is not None:
        db = env.pg_db
        ms += [
            (
                "pg1",
                [*both, *ref],
                lambda e, m, p: tools.pgbench_tps(e.port(m, "pg"), db, p.pg_s, 1),
            ),
            ("pg16", both, lambda e, m, p: tools.pgbench_tps(e.port(m, "pg"), db, p.pg_s, 16)),
            (
                "pgC",
                both,
                lambda e, m, p: tools.pgbench_tps(e.port(m, "pg"), db, p.pg_s, 1, connect=True),
            ),
        ]
    ms += [
        ("connrate", both, m_connrate),
        (
            "stall",
            both,
            lambda e, m, p: clients.stall_echo(
                e.port(m, "sink"), e.port(m, "echo"), SRC, p.stall_samples
            ),
        ),
        ("revoke", ["tunnel"], m_revoke),
    ]
    # First in each round: it restarts the stack, so every round starts on fresh processes.
    return [("memory", ["tunnel"], m_memory), *ms]
