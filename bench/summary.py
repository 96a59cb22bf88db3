"""From the rounds' raw values to the table's rows; the machine and versions for the JSON."""

from __future__ import annotations

import contextlib
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench import report
from bench.common import ROOT, median


def med(
    raw: dict[str, dict[str, list[Any]]], key: str, mode: str, field_: str | None = None
) -> float | None:
    vals: list[float | None] = []
    for v in raw.get(key, {}).get(mode, []):
        x = v.get(field_ or "value") if isinstance(v, dict) else v
        vals.append(float(x) if isinstance(x, int | float) else None)
    return median(vals)


def summarize(raw: dict[str, dict[str, list[Any]]], idle_conns: int, tls: bool) -> list[report.Row]:
    R = report.Row

    def row(
        key: str, label: str, unit: str, src: str, fld: str | None = None, **kw: Any
    ) -> report.Row:
        return R(key, label, unit, med(raw, src, "direct", fld), med(raw, src, "tunnel", fld), **kw)

    def cpu_row(src: str, who: str, what: str) -> report.Row:
        v = med(raw, src, "tunnel", f"{who}_cpu")
        return R(
            f"{src}_{who}_cpu",
            f"  {who} CPU during {what}",
            "% of a core",
            None,
            None if v is None else v * 100,
        )

    n = f"{idle_conns:,}"
    rows = [
        row("iperf1", "iperf3, 1 stream", "MB/s", "iperf1", spec=("ratio_min", 0.25)),
        R(
            "iperf1_warm",
            f"iperf3, 1 stream, after {n} conns (warm heap)",
            "MB/s",
            med(raw, "iperf1", "direct"),
            med(raw, "memory", "tunnel", "warm_iperf1"),
        ),
        cpu_row("iperf1", "edge", "iperf3 1 stream"),
        cpu_row("iperf1", "agent", "iperf3 1 stream"),
        row("iperf8", "iperf3, 8 streams (-P 8)", "MB/s", "iperf8"),
        row("iperfR", "iperf3, reverse (-R)", "MB/s", "iperfR"),
        row("rtt_p50", "64 B round trip p50, idle", "µs", "rtt", "p50", spec=("ratio_max", 2.5)),
        row("rtt_p99", "64 B round trip p99, idle", "µs", "rtt", "p99"),
        row("rtt_load_p50", "64 B round trip p50, iperf3 running", "µs", "rtt_load", "p50"),
        row("rtt_load_p99", "64 B round trip p99, iperf3 running", "µs", "rtt_load", "p99"),
    ]
    if "pg1" in raw:
        rows += [
            row("pg1", "pgbench -S, 1 client", "TPS", "pg1", spec=("ratio_min", 0.60)),
            row("pg16", "pgbench -S, 16 clients", "TPS", "pg16"),
            row("pgC", "pgbench -S -C, 1 client", "TPS", "pgC", spec=("ratio_min", 0.70)),
        ]
    rows += [
        row(
            "connrate",
            "connect-echo-close, 32 clients",
            "conn/s",
            "connrate",
            "rate",
            spec=("abs_min", 4000.0),
        ),
        cpu_row("connrate", "edge", "connect-echo-close"),
        cpu_row("connrate", "agent", "connect-echo-close"),
        R(
            "mem",
            f"edge+agent RSS per idle conn ({n})",
            "KiB",
            None,
            med(raw, "memory", "tunnel", "kib_per_conn"),
            spec=("abs_max", 16.0),
        ),
        R(
            "mem_edge",
            "  of which edge",
            "KiB",
            None,
            med(raw, "memory", "tunnel", "edge_kib_per_conn"),
        ),
        R(
            "mem_agent",
            "  of which agent",
            "KiB",
            None,
            med(raw, "memory", "tunnel", "agent_kib_per_conn"),
        ),
        R(
            "revoke_p50",
            "revoke → reset p50 (from DELETE sent)",
            "ms",
            None,
            med(raw, "revoke", "tunnel", "p50_ms"),
        ),
        R(
            "revoke_p99",
            "revoke → reset p99 (from DELETE sent)",
            "ms",
            None,
            med(raw, "revoke", "tunnel", "p99_ms"),
            spec=("abs_max", 100.0),
        ),
        R(
            "revoke_resp_p50",
            "  reset after the DELETE response, p50",
            "ms",
            None,
            med(raw, "revoke", "tunnel", "after_response_p50_ms"),
        ),
        R(
            "revoke_resp_p99",
            "  reset after the DELETE response, p99",
            "ms",
            None,
            med(raw, "revoke", "tunnel", "after_response_p99_ms"),
        ),
        R(
            "revoke_http",
            "  DELETE /admin/rules/{id} response time, p50",
            "ms",
            None,
            med(raw, "revoke", "tunnel", "response_p50_ms"),
        ),
        row("stall_p50", "2nd stream echo p50, 1st stalled", "ms", "stall", "p50_ms"),
        row(
            "stall_p99",
            "2nd stream echo p99, 1st stalled",
            "ms",
            "stall",
            "p99_ms",
            spec=("abs_lt", 10.0),
        ),
    ]
    for key, src, label, unit, fld in (
        ("ref_iperf1", "iperf1", "iperf3, 1 stream", "MB/s", None),
        ("ref_rtt_p50", "rtt", "64 B round trip p50, idle", "µs", "p50"),
        ("ref_pg1", "pg1", "pgbench -S, 1 client", "TPS", None),
    ):
        v = med(raw, src, "socat2", fld)
        if v is not None:
            # Reference: the same path shape with two C relays (socat) instead of
            # edge + agent; what any two-hop design pays on this machine.
            rows.append(R(key, f"{label}: two socat hops", unit, med(raw, src, "direct", fld), v))
    if tls:
        for key, src, label, spec in (
            ("tls1", "iperf1", "TLS tunnel vs plain, 1 stream", ("ratio_min", 0.70)),
            ("tls8", "iperf8", "TLS tunnel vs plain, 8 streams", None),
            ("tlsR", "iperfR", "TLS tunnel vs plain, reverse", None),
        ):
            rows.append(
                R(
                    key,
                    label,
                    "MB/s",
                    med(raw, src, "tunnel"),
                    med(raw, src, "tls"),
                    spec=spec,
                    ref_label="plain",
                )
            )
    return rows


def versions() -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version()}
    for mod in ("entryguard", "uvloop", "websockets"):
        with contextlib.suppress(Exception):
            out[mod] = str(__import__(mod).__version__)
    with contextlib.suppress(Exception):
        import websockets.speedups  # noqa: F401

        out["websockets.speedups"] = "loaded"
    for tool, flag in (
        ("iperf3", "--version"),
        ("sockperf", "--version"),
        ("pgbench", "--version"),
    ):
        with contextlib.suppress(Exception):
            p = subprocess.run([tool, flag], capture_output=True, text=True, timeout=5, check=False)
            out[tool] = (p.stdout or p.stderr).strip().splitlines()[0]
    with contextlib.suppress(Exception):
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "src"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
        out["git"] = head + (" (src/ has uncommitted changes)" if dirty else "")
    return out


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()
