"""Small shared pieces: ports, child processes, loopback sockets, statistics."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IP_BIND_ADDRESS_NO_PORT = 24  # Linux: pick the port at connect() time (4-tuple aware)


# --- numbers -------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return float(s[k])


def median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(statistics.median(vals)) if vals else None


# --- ports and sockets ---------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_range(n: int) -> tuple[int, int]:
    """A run of n ports, free a moment ago, outside the ephemeral range if possible."""
    for start in range(20000, 32000 - n, 97):
        ok = True
        for p in range(start, start + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return start, start + n - 1
    raise RuntimeError("no free port range")


def client_socket(source: str, *, blocking: bool = True, timeout: float = 5.0) -> socket.socket:
    """A TCP socket bound to a loopback source address, port chosen at connect()."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.bind((source, 0))
        if blocking:
            s.settimeout(timeout)
        else:
            s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def connect_from(source: str, port: int, timeout: float = 5.0) -> socket.socket:
    s = client_socket(source, timeout=timeout)
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        s.close()
        raise
    return s


def echo_once(s: socket.socket, payload: bytes) -> None:
    s.sendall(payload)
    got = 0
    while got < len(payload):
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("EOF before the echo")
        got += len(chunk)


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --- child processes ---------------------------------------------------------------------


class Procs:
    """Every child this run starts, stopped in reverse order on exit (also on Ctrl-C)."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[Any]] = []
        self._logs: list[IO[bytes]] = []

    def spawn(
        self,
        args: Sequence[str],
        log: Path | None = None,
        *,
        stdout: int | None = None,
        stdin: int | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[Any]:
        out: Any = stdout
        if log is not None:
            fh = open(log, "ab")  # noqa: SIM115 - owned by the child, closed in stop_all
            self._logs.append(fh)
            out = fh
        p = subprocess.Popen(
            list(args),
            stdout=out if out is not None else subprocess.DEVNULL,
            # A log file takes both streams; a pipe (read by us) leaves stderr on ours.
            stderr=subprocess.STDOUT
            if log is not None
            else None
            if out is not None
            else subprocess.DEVNULL,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            env=env,
            cwd=cwd,
        )
        self.children.append(p)
        return p

    @staticmethod
    def stop(p: subprocess.Popen[Any], timeout: float = 10.0) -> None:
        if p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)

    def stop_all(self) -> None:
        for p in reversed(self.children):
            self.stop(p)
        self.children.clear()
        for fh in self._logs:
            with contextlib.suppress(OSError):
                fh.close()
        self._logs.clear()


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP behave like Ctrl-C: unwind through the cleanup code."""

    def _raise(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)


def raise_nofile(want: int = 65536) -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = str(ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


def _cpu_snapshot() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return idle, sum(fields[:8])


def cpu_busy(interval: float) -> float:
    """Machine-wide CPU busy fraction over `interval` seconds (0..1)."""
    i0, t0 = _cpu_snapshot()
    time.sleep(interval)
    i1, t1 = _cpu_snapshot()
    return 0.0 if t1 == t0 else max(0.0, 1.0 - (i1 - i0) / (t1 - t0))


def wait_quiet(interval: float, limit: float, max_wait: float) -> float:
    """Busy fraction while we are idle (others' load); waits up to `max_wait` s for < `limit`."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy(interval)
    while busy > limit and time.monotonic() < deadline:
        busy = cpu_busy(max(interval, 1.0))
    return busy


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)
