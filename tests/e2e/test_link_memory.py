"""Memory per agent link (issue 12): 1,000 client connections through one tunnel to a
target that writes without pause, none of them read, cost each process (the edge in
`entryguard up`, a real `eg-agent`) at most 128 MiB; then every client reads and the
data flows again, byte-exact.

Before the budget the same run grew the agent by 1,127 MiB (1 MiB windows × 1,000
streams, and a socket read's worth of bytes waiting per stream) and the edge by 93 MiB.
"""

from __future__ import annotations

import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_control_plane
from tests.e2e import firehose
from tests.e2e.tunnel_env import Stack, wait_until

STREAMS = 1000
LIMIT = 128 * 1024 * 1024
READ_EACH = 512 * 1024  # after the stall, every client reads this much at least


def _status(pid: int, key: str) -> int:
    """A /proc/<pid>/status size in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} for {pid}")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_idle(pids: list[int], timeout: float = 120.0) -> None:
    """Until none of the processes used more than 2% of a CPU for a second, twice."""
    deadline = time.monotonic() + timeout
    quiet = 0
    last = [_cpu(p) for p in pids]
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = [_cpu(p) for p in pids]
        quiet = quiet + 1 if all(b - a < 0.02 for a, b in zip(last, now, strict=True)) else 0
        last = now
        if quiet >= 2:
            return
    raise AssertionError("the flow never stopped")


@pytest.fixture
def fds() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * STREAMS + 1024  # clients here; the edge and the agent inherit it
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"needs {want} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port_file, count_file = tmp_path / "firehose.port", tmp_path / "firehose.count"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.firehose", str(port_file), str(count_file)],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert wait_until(port_file.exists, 10)
        yield int(port_file.read_text()), count_file
    finally:
        proc.kill()
        proc.wait(5)


def test_a_thousand_unread_firehose_streams_cost_each_side_at_most_128_mib(
    tmp_path: Path, fds: None, target: tuple[int, Path]
) -> None:
    tport, count_file = target
    cp = make_control_plane(tmp_path, None, ports=3)
    cp.start()
    st = Stack(cp=cp, tmp=tmp_path)
    clients: list[socket.socket] = []
    try:
        st.setup()
        port = st.tunnel("firehose", "127.0.0.1", tport, role=None)
        st.call("POST", "/admin/rules", json={"resource": "firehose", "cidr": "127.0.0.2/32"})
        st.start_agent("  link_memory: 64MiB\n  max_streams: 16384\n")
        st.wait_log(f"127.0.0.1:{tport}", 10)
        assert cp.proc is not None and st.agent_proc is not None
        pids = {"edge": cp.proc.pid, "agent": st.agent_proc.pid}
        # Warm up: one stream end to end, so the baseline has the relay's code loaded.
        warm = _client(port)
        _read_checked(warm, 0, 1 << 20)
        warm.close()
        _wait_idle(list(pids.values()))
        base = {name: _status(pid, "VmRSS") for name, pid in pids.items()}

        started = time.monotonic()
        clients = [_client(port) for _ in range(STREAMS)]
        _wait_idle(list(pids.values()))
        stalled_after = time.monotonic() - started
        sent_at_stall = int(count_file.read_text())
        growth = {name: _status(pid, "VmHWM") - base[name] for name, pid in pids.items()}
        now = {name: _status(pid, "VmRSS") - base[name] for name, pid in pids.items()}
        print(
            f"\n{STREAMS} unread streams stalled after {stalled_after:.1f} s, "
            f"{sent_at_stall / 2**20:.0f} MiB sent by the target; peak RSS growth: "
            + ", ".join(f"{n} {growth[n] / 2**20:.0f} MiB (now {now[n] / 2**20:.0f})" for n in pids)
        )
        for name in pids:
            assert growth[name] <= LIMIT, f"{name} grew by {growth[name] / 2**20:.0f} MiB"

        # Every client reads now: the flow resumes on every stream, byte-exact.
        got = _read_all(clients, READ_EACH)
        assert min(got) >= READ_EACH
        # The target writes again: what it sent before the stall sat in the kernels'
        # buffers on the way, which the reads above drained, and credit went back.
        assert wait_until(lambda: int(count_file.read_text()) > sent_at_stall, 10)
        sent_after = int(count_file.read_text())
        print(
            f"read {sum(got) / 2**20:.0f} MiB; the target sent "
            f"{(sent_after - sent_at_stall) / 2**20:.0f} MiB more"
        )
    finally:
        for s in clients:
            s.close()
        st.stop_agent()
        cp.stop()


def _client(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small receive buffer: what piles up should do so in the relay, not in the kernel.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.bind(("127.0.0.2", 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def _read_checked(s: socket.socket, offset: int, n: int) -> int:
    while n > 0:
        data = s.recv(min(n, 1 << 16))
        assert data, "the stream ended"
        assert data == firehose.expected(offset, len(data))
        offset += len(data)
        n -= len(data)
    return offset


def _read_all(clients: list[socket.socket], each: int, timeout: float = 120.0) -> list[int]:
    """Read every client until each has ``each`` bytes, checking every byte."""
    got = [0] * len(clients)
    sel = selectors.DefaultSelector()
    for i, s in enumerate(clients):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    deadline = time.monotonic() + timeout
    left = len(clients)
    while left:
        assert time.monotonic() < deadline, f"{left} streams did not flow again"
        for key, _ in sel.select(1.0):
            i = key.data
            data = clients[i].recv(1 << 18)
            assert data, f"stream {i} ended"
            assert data == firehose.expected(got[i], len(data)), f"stream {i}: wrong bytes"
            got[i] += len(data)
            if got[i] >= each:
                sel.unregister(clients[i])
                left -= 1
    sel.close()
    return got
