"""Shared fixtures: real control planes on loopback (SQLite and the machine's PostgreSQL)."""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("EG_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


# The test prerequisites (README, "Two commands"). Locally a test whose tool is missing
# is skipped; in CI (CI=true: .ci/run exports it, as CI services do) it fails, so a run
# that silently tested less cannot pass.
INSTALL_HINTS = {
    "psql": "apt-get install postgresql-client",
    "redis-cli": "apt-get install redis-tools",
    "nginx": "apt-get install nginx-light",
    "chromium": "apt-get install chromium",
    "uvloop": "pip install -e '.[dev]'",
}


def require_tool(name: str, *, path: str | None = None, module: bool = False) -> None:
    """Skip the calling test (or fixture) when ``name`` is missing; fail it under CI=true.

    ``name`` is a command on PATH, or the file ``path`` when given, or with ``module`` a
    Python package to import.
    """
    if module:
        present = importlib.util.find_spec(name) is not None
    elif path is not None:
        present = Path(path).exists()
    else:
        present = shutil.which(name) is not None
    if present:
        return
    what = path or name
    hint = INSTALL_HINTS.get(name, 'see the README\'s "Two commands"')
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required in CI ({hint}; .ci/run installs it)", pytrace=False)
    pytest.skip(f"{what} is missing ({hint}; .ci/run installs it)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_range(n: int) -> tuple[int, int]:
    """A run of n ports that were free a moment ago, below the kernel's ephemeral range
    (so clients' source ports never land in it); probed with SO_REUSEADDR like the edge."""
    import random

    for _ in range(200):
        start = random.randrange(15000, 32000 - n)
        ok = True
        for p in range(start, start + n):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return start, start + n - 1
    raise RuntimeError("no free port range")


def pg_create_database() -> str:
    """A fresh database on the real PostgreSQL; returns its URL."""
    import asyncio

    import asyncpg

    name = f"eg_test_{secrets.token_hex(4)}"

    async def create() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A database of the test's own on the real PostgreSQL, dropped afterwards."""
    url = pg_create_database()
    try:
        yield url
    finally:
        pg_drop_database(url)


def pg_drop_database(url: str) -> None:
    import asyncio

    import asyncpg

    name = url.rsplit("/", 1)[1]

    async def drop() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


@dataclass
class ControlPlane:
    """A real `entryguard up` (or `server`) process on loopback."""

    url: str
    admin_email: str
    admin_password: str
    data_dir: Path
    database_url: str | None
    edge_url: str
    tunnel_ports: tuple[int, int]
    proc: subprocess.Popen[bytes] | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None

    def start(self) -> None:
        assert self.log_path is not None
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir.parent
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"entryguard exited: {self.log_path.read_text()[-3000:]}")
            try:
                if (
                    httpx.get(f"{self.url}/api/v1/health", timeout=1, verify=False).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"entryguard did not start: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    def login_token(self, email: str | None = None, password: str | None = None) -> str:
        r = httpx.post(
            f"{self.url}/api/v1/auth/login",
            json={"email": email or self.admin_email, "password": password or self.admin_password},
            verify=ssl.create_default_context(cafile=str(self.ca_file))
            if self.url.startswith("https")
            else True,
        )
        r.raise_for_status()
        return str(r.json()["token"])


def make_control_plane(
    tmp: Path, database_url: str | None, *, ports: int = 20, command: str = "up", tls: bool = False
) -> ControlPlane:
    data_dir = tmp / "data"
    api_port, edge_port = free_port(), free_port()
    first, last = free_port_range(ports)
    password = "admin-" + secrets.token_hex(8)
    env = {
        **os.environ,
        "EG_ADMIN_EMAIL": "admin@example.com",
        "EG_ADMIN_PASSWORD": password,
        "PYTHONUNBUFFERED": "1",
    }
    args = [
        str(BIN / "entryguard"),
        command,
        "--data-dir",
        str(data_dir),
        "--listen",
        f"127.0.0.1:{api_port}",
        "--tunnel-ports",
        f"{first}-{last}",
    ]
    if command == "up":
        args += ["--edge-listen", f"127.0.0.1:{edge_port}"]
    if database_url:
        args += ["--database-url", database_url]
    if tls:
        args += ["--tls-self-signed"]
    cp = ControlPlane(
        url=f"{'https' if tls else 'http'}://127.0.0.1:{api_port}",
        admin_email="admin@example.com",
        admin_password=password,
        data_dir=data_dir,
        database_url=database_url,
        edge_url=f"{'wss' if tls else 'ws'}://127.0.0.1:{edge_port}",
        tunnel_ports=(first, last),
        args=args,
        env=env,
        log_path=tmp / "entryguard.log",
    )
    return cp


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = make_control_plane(tmp_path_factory.mktemp("cp"), None)
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="module")
def control_plane_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    url = pg_create_database()
    cp = make_control_plane(tmp_path_factory.mktemp("cppg"), url)
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()
        pg_drop_database(url)
