"""EntryGuard tunnel benchmark: direct vs through the tunnel, in alternation, on loopback.

    .venv/bin/python bench/tunnel_bench.py               # full: 3 rounds, ~10 minutes
    .venv/bin/python bench/tunnel_bench.py --quick       # smoke run, ~1 minute
    .venv/bin/python bench/tunnel_bench.py --tls         # also a TLS stack: throughput vs plain

It starts `entryguard up` and `eg-agent run` on a fresh temp data dir with its own ports,
the targets (iperf3 -s, sockperf server, an echo/sink server, the machine's PostgreSQL),
runs every measurement direct and through the tunnel in alternation for N rounds, and
prints medians with the targets from issue 3. See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import `bench.*` from the repo root,
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # not bench/ (no stdlib shadowing)

from bench import clients, report, summary, tools
from bench import spy as pyspy
from bench.common import (
    ROOT,
    Procs,
    cpu_seconds,
    install_signal_handlers,
    median,
    raise_nofile,
    wait_quiet,
)
from bench.measure import (
    KEYS,
    REVOKE_SRC,
    SRC,
    Env,
    Plan,
    log,
    m_connrate,
    measurements,
    start_socat_chains,
    start_stack,
    start_targets,
)


def brief(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, dict):
        keys = ["value", "p50", "p99", "rate", "errors", "p50_ms", "p99_ms", "kib_per_conn"]
        keys += ["kinds", "stalled_after_bytes", "after_response_p99_ms", "load_mbps"]
        keys += ["warm_iperf1", "edge_cpu", "agent_cpu", "error"]
        parts = []
        for k in keys:
            if k in value:
                v = value[k]
                parts.append(f"{k}={v:,.2f}" if isinstance(v, float) else f"{k}={v}")
        return " ".join(parts)
    return str(value)


def run_rounds(env: Env, plan: Plan) -> dict[str, dict[str, list[Any]]]:
    raw: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    ms = [m for m in measurements(env, plan) if not plan.only or m[0] in plan.only]
    for r in range(plan.rounds):
        for key, modes, fn in ms:
            order = modes if r % 2 == 0 else list(reversed(modes))
            for mode in order:
                bg = wait_quiet(plan.settle_s, 0.25, plan.wait_quiet_s)
                raw["background_cpu"][f"{key}/{mode}"].append(round(bg, 3))
                st = env.stacks.get(mode)
                pids = (st.up_pid, st.agent_pid) if st is not None else ()
                c0, t0 = [cpu_seconds(p) for p in pids], time.monotonic()
                try:
                    got = fn(env, mode, plan)
                    value: dict[str, Any] = got if isinstance(got, dict) else {"value": got}
                except (tools.ToolError, OSError, RuntimeError, TimeoutError) as exc:
                    value = {"error": f"{type(exc).__name__}: {exc}"}
                    traceback.print_exc(limit=3)
                if pids and st is not None and pids == (st.up_pid, st.agent_pid):
                    # The edge's and the agent's CPU during the run, in cores (not
                    # across a restart: those processes are gone).
                    dt = time.monotonic() - t0
                    c1 = [cpu_seconds(p) for p in pids]
                    value["edge_cpu"] = round((c1[0] - c0[0]) / dt, 3)
                    value["agent_cpu"] = round((c1[1] - c0[1]) / dt, 3)
                raw[key][mode].append(value)
                log(
                    f"round {r + 1}/{plan.rounds} {key:<9} {mode:<6} {brief(value)}  [others' CPU {bg:.0%}]"
                )
                env.check_alive()
    return raw


def run_profiles(env: Env, plan: Plan, out_dir: Path) -> dict[str, Any]:
    st = env.stacks["tunnel"]
    pids = {"edge": st.up_pid, "agent": st.agent_pid}
    secs = max(3.0, plan.iperf_s)
    loads: dict[str, Callable[[], Any]] = {
        "iperf1": lambda: tools.iperf3(st.tunnels["iperf"], SRC, secs + 1),
        "connrate": lambda: m_connrate(
            env, "tunnel", Plan(**{**plan.__dict__, "connrate_s": secs + 1})
        ),
        "rtt": lambda: tools.sockperf_rtt(st.tunnels["sockperf"], SRC, secs + 1),
        "revoke": lambda: clients.revoke_trials(
            lambda: int(
                st.call(
                    "POST", "/admin/rules", json={"resource": "revoke", "cidr": f"{REVOKE_SRC}/32"}
                )["rule"]["id"]
            ),
            st.api_port,
            st.admin_token,
            st.tunnels["revoke"],
            REVOKE_SRC,
            1000,
            budget=secs + 1,
        ),
    }
    found: dict[str, Any] = {}
    for label, load in loads.items():
        time.sleep(plan.settle_s)
        result: dict[str, Any] = {}

        def run(load: Callable[[], Any] = load, result: dict[str, Any] = result) -> None:
            result["value"] = load()

        files = pyspy.record(pids, secs, out_dir, label, run)
        found[label] = {
            "load": result.get("value"),
            **{name: pyspy.summarize(path) for name, path in files.items()},
        }
        log(f"profile {label}: {brief(result.get('value'))}")
        for name in pids:
            s = found[label].get(name)
            if s:
                log(
                    f"  {name} ({s['samples']} samples) own: "
                    + "; ".join(f"{k} {v}%" for k, v in s["own"][:6])
                )
    return found


# --- main -----------------------------------------------------------------------------------------


def use_source(args: argparse.Namespace, tmp: Path) -> tuple[str, str]:
    """Point every child at one fixed copy of the entryguard package for the whole run.

    The tree is edited while benchmarks run; each round restarts the stack, so without
    a snapshot one run could mix two versions of the relay.
    """
    if args.src is not None:
        root = args.src.resolve()
        if not (root / "entryguard" / "__init__.py").exists():
            raise ValueError(f"--src {root}: no entryguard package there")
        shown = str(root)
    else:
        import importlib.util

        spec = importlib.util.find_spec("entryguard")
        if spec is None or spec.origin is None:
            raise ValueError("entryguard is not installed: pip install -e '.[dev,bench]'")
        pkg = Path(spec.origin).parent
        root = tmp / "src"
        if args.live_tree:
            root = pkg.parent
            shown = f"{root} (live tree)"
        else:
            shutil.copytree(pkg, root / "entryguard", ignore=shutil.ignore_patterns("__pycache__"))
            shown = f"snapshot of {pkg.parent} taken at the start"
    digest = hashlib.sha256()
    for f in sorted((root / "entryguard").rglob("*.py")):
        digest.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(root) + (os.pathsep + old if old else "")
    return shown, digest.hexdigest()[:16]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench/tunnel_bench.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3; 1 with --quick)")
    ap.add_argument(
        "--quick", action="store_true", help="short runs, fewer connections: a smoke test"
    )
    ap.add_argument(
        "--tls", action="store_true", help="also run iperf3 through a --tls-self-signed stack"
    )
    ap.add_argument("--idle-conns", type=int, default=None, help="idle connections (default 5000)")
    ap.add_argument("--revoke-trials", type=int, default=None, help="revoke trials per round (100)")
    ap.add_argument("--no-pg", action="store_true", help="skip the pgbench rows")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy the edge and agent into DIR")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "bench.json")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "bench.png")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each run wait up to S seconds until other processes use <25%% CPU",
    )
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated measurements to run: " + ",".join(KEYS),
    )
    ap.add_argument(
        "--replot",
        type=Path,
        default=None,
        metavar="JSON",
        help="measure nothing: print the table and redraw --png from an earlier JSON",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data dirs)")
    ap.add_argument(
        "--src",
        type=Path,
        default=None,
        help="run entryguard from this source dir (e.g. a `git archive` snapshot's src/) "
        "instead of a snapshot of the installed one",
    )
    ap.add_argument(
        "--live-tree",
        action="store_true",
        help="run the installed tree as it changes (default: a copy taken at the start)",
    )
    args = ap.parse_args(argv)
    unknown = set(filter(None, args.only.split(","))) - set(KEYS)
    if unknown:
        ap.error(f"--only: unknown measurement(s) {sorted(unknown)}; choose from {KEYS}")
    if args.rounds is not None and args.rounds < 1:
        ap.error("--rounds must be at least 1")
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    q = args.quick
    return Plan(
        rounds=args.rounds or (1 if q else 3),
        iperf_s=1.0 if q else 5.0,
        rtt_s=1.0 if q else 5.0,
        pg_s=1.0 if q else 5.0,
        connrate_s=1.0 if q else 3.0,
        idle_conns=args.idle_conns or (500 if q else 5000),
        revoke_trials=args.revoke_trials or (10 if q else 100),
        stall_samples=50 if q else 200,
        tls=args.tls,
        settle_s=0.3 if q else 0.5,
        wait_quiet_s=args.wait_quiet,
        only=tuple(filter(None, args.only.split(","))),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot is not None:
        doc = json.loads(args.replot.read_text())
        rows = report.rows_from_json(doc)
        report.print_table(rows, doc["meta"]["title"])
        report.write_chart(args.png, rows, doc["meta"]["title"])
        print(report.markdown_table(rows))
        return 0
    plan = make_plan(args)
    nofile = raise_nofile(65536)
    if nofile < 2 * plan.idle_conns + 512:
        print(
            f"RLIMIT_NOFILE is {nofile}: too low for {plan.idle_conns} connections", file=sys.stderr
        )
        return 2
    for tool in ("iperf3", "sockperf"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    install_signal_handlers()
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="eg-bench-"))
    try:
        src, src_sha = use_source(args, tmp)
    except (OSError, ValueError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        print(exc, file=sys.stderr)
        return 2
    env = Env(procs=procs, tmp=tmp)
    started = datetime.now(UTC)
    load_start = os.getloadavg()
    profiles: dict[str, Any] | None = None
    t0 = time.monotonic()
    try:
        log(f"temp dir {tmp}; plan {plan}")
        start_targets(env)
        with_pg = not args.no_pg and tools.pg_available()
        if with_pg:
            env.pg_db = tools.pg_create_bench_db(10)
            env.direct["pg"] = 5432
            log(f"pgbench database {env.pg_db} (scale 10)")
        else:
            log("PostgreSQL not used: the pgbench rows are skipped")
        start_stack(env, "tunnel", tls=False, with_pg=with_pg)
        start_socat_chains(env, with_pg)
        if plan.tls:
            start_stack(env, "tls", tls=True, with_pg=False)
        raw = run_rounds(env, plan)
        if args.profile is not None:
            profiles = run_profiles(env, plan, args.profile)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        for st in env.stacks.values():
            st.close()
        procs.stop_all()
        if env.pg_db is not None:
            with contextlib.suppress(tools.ToolError):
                tools.pg_drop_db(env.pg_db)
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    rows = [
        r
        for r in summary.summarize(raw, plan.idle_conns, plan.tls)
        if r.direct is not None or r.tunnel is not None
    ]
    ncpu = os.cpu_count() or 0
    title = (
        f"EntryGuard tunnel vs direct, loopback, {ncpu} cores"
        f" — medians of {plan.rounds} round{'s' if plan.rounds != 1 else ''}"
        f"{' (quick)' if args.quick else ''}, {started:%Y-%m-%d}"
    )
    report.print_table(rows, title)
    meta = {
        "title": title,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - t0, 1),
        "command": "python bench/tunnel_bench.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "plan": plan.__dict__,
        "host": {"cpus": ncpu, "cpu": summary.cpu_model(), "kernel": platform.release()},
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "others_cpu_median": median(
            [v for vs in raw.get("background_cpu", {}).values() for v in vs]
        ),
        "others_cpu_max": max(
            (v for vs in raw.get("background_cpu", {}).values() for v in vs), default=None
        ),
        "versions": summary.versions(),
        "src": src,
        "src_sha256": src_sha,
        "profiles": profiles,
    }
    report.write_json(args.json, meta, rows, raw)
    try:
        report.write_chart(args.png, rows, title)
        log(f"wrote {args.json} and {args.png}")
    except ImportError:
        log(f"wrote {args.json}; no chart: pip install -e '.[bench]' for matplotlib")
    print()
    print(report.markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
