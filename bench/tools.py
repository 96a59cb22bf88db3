"""Wrappers around the C tools: iperf3, sockperf, pgbench (and psql for the scratch database)."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
from typing import Any

PG = ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"]


class ToolError(RuntimeError):
    pass


def _run(args: list[str], timeout: float) -> str:
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{args[0]} timed out after {timeout:g} s") from exc
    if p.returncode != 0:
        raise ToolError(f"{' '.join(args)}: exit {p.returncode}: {(p.stderr or p.stdout)[-800:]}")
    return p.stdout


# --- iperf3 ------------------------------------------------------------------------------


def iperf3_args(port: int, source: str, seconds: float, streams: int, reverse: bool) -> list[str]:
    args = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-B", source, "-J"]
    args += ["-t", f"{seconds:g}", "--connect-timeout", "5000"]
    if seconds >= 3:
        args += ["-O", "1"]  # leave slow start out of the figure
    if streams > 1:
        args += ["-P", str(streams)]
    if reverse:
        args.append("-R")
    return args


def iperf3_mbps(out: str) -> float:
    """MB/s (10^6 bytes) received, from iperf3's JSON."""
    try:
        doc: dict[str, Any] = json.loads(out)
    except ValueError as exc:
        raise ToolError(f"iperf3 gave no JSON: {out[-400:]}") from exc
    if doc.get("error"):
        raise ToolError(f"iperf3: {doc['error']}")
    return float(doc["end"]["sum_received"]["bits_per_second"]) / 8e6


def iperf3(
    port: int, source: str, seconds: float, streams: int = 1, reverse: bool = False
) -> float:
    args = iperf3_args(port, source, seconds, streams, reverse)
    return iperf3_mbps(_run(args, seconds + 30))


# --- sockperf --------------------------------------------------------------------------------

_PCT = re.compile(r"percentile\s+(\d+\.\d+)\s*=\s*([\d.]+)")


def sockperf_rtt(port: int, source: str, seconds: float, size: int = 64) -> dict[str, float]:
    """64-byte TCP ping-pong round trips (µs): p50, p99 and the observation count."""
    args = ["sockperf", "ping-pong", "--tcp", "-i", "127.0.0.1", "-p", str(port)]
    args += ["--client_ip", source, "-m", str(size), "-t", str(max(1, round(seconds)))]
    args += ["--full-rtt"]
    out = _run(args, seconds + 30)
    pct = {float(q): float(v) for q, v in _PCT.findall(out)}
    if 50.0 not in pct or 99.0 not in pct:
        raise ToolError(f"sockperf: no percentiles in its output: {out[-600:]}")
    m = re.search(r"Total (\d+) observations", out)
    return {"p50": pct[50.0], "p99": pct[99.0], "n": float(m.group(1)) if m else 0.0}


# --- PostgreSQL ---------------------------------------------------------------------------------


def pg_available() -> bool:
    if not (shutil.which("psql") and shutil.which("pgbench")):
        return False
    try:
        _run(["psql", *PG, "-d", "postgres", "-Atc", "select 1"], 10)
        return True
    except ToolError:
        return False


def pg_create_bench_db(scale: int = 10) -> str:
    name = f"eg_bench_{secrets.token_hex(4)}"
    _run(["psql", *PG, "-d", "postgres", "-Atc", f'CREATE DATABASE "{name}"'], 30)
    _run(["pgbench", *PG, "-i", "-s", str(scale), "-q", name], 300)
    return name


def pg_drop_db(name: str) -> None:
    _run(
        ["psql", *PG, "-d", "postgres", "-Atc", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'],
        60,
    )


def pgbench_tps(port: int, db: str, seconds: float, clients: int, connect: bool = False) -> float:
    """Select-only TPS (-S); with ``connect`` a new connection per transaction (-C)."""
    args = ["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-n", "-S"]
    args += ["-T", str(max(1, round(seconds))), "-c", str(clients), "-j", str(min(clients, 2))]
    if connect:
        args.append("-C")
    args.append(db)
    out = _run(args, seconds + 60)
    m = re.search(r"tps = ([\d.]+)", out)
    if not m:
        raise ToolError(f"pgbench: no tps in its output: {out[-600:]}")
    fail = re.search(r"number of failed transactions: (\d+)", out)
    if fail and int(fail.group(1)):
        raise ToolError(f"pgbench: {fail.group(1)} failed transactions")
    return float(m.group(1))
