"""Replicas on one PostgreSQL start safely: together on an empty database (migrations
take an advisory lock), and never on a schema newer than their code."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import asyncpg
import httpx

from tests.conftest import BIN, free_port


def server(url: str, port: int, log: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "entryguard"), "server", "--database-url", url, "--listen", f"127.0.0.1:{port}"],
        stdout=log,  # type: ignore[arg-type]
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "EG_ADMIN_EMAIL": "admin@example.com",
            "EG_ADMIN_PASSWORD": "pw-12345678",
        },
    )


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_three_replicas_started_together_on_an_empty_database_all_come_up(
    pg_url: str, tmp_path: object
) -> None:
    ports = [free_port() for _ in range(3)]
    logs = [open(f"{tmp_path}/replica{i}.log", "wb") for i in range(3)]  # noqa: SIM115
    procs = [server(pg_url, p, log) for p, log in zip(ports, logs, strict=True)]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(healthy(p) for p in ports):
            for i, pr in enumerate(procs):
                assert pr.poll() is None, Path(f"{tmp_path}/replica{i}.log").read_text()[-3000:]
            time.sleep(0.2)
        assert all(healthy(p) for p in ports)

        async def admins() -> int:
            conn = await asyncpg.connect(pg_url)
            try:
                return int(await conn.fetchval("SELECT count(*) FROM users WHERE is_admin"))
            finally:
                await conn.close()

        assert asyncio.run(admins()) == 1, "the first admin was created twice"
    finally:
        for pr in procs:
            pr.terminate()
        for pr in procs:
            pr.wait(20)
        for log in logs:
            log.close()
    # The replica that created the admin said so, with the password to use, once.
    printed = [Path(f"{tmp_path}/replica{i}.log").read_text() for i in range(3)]
    assert sum("First start: an admin was created" in p for p in printed) == 1, printed


def test_a_replica_refuses_a_schema_newer_than_its_code(pg_url: str) -> None:
    subprocess.run(
        [str(BIN / "entryguard"), "db", "upgrade", "--database-url", pg_url],
        check=True,
        capture_output=True,
    )

    async def stamp() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("UPDATE alembic_version SET version_num = '9999'")
        finally:
            await conn.close()

    asyncio.run(stamp())
    r = subprocess.run(
        [
            str(BIN / "entryguard"),
            "server",
            "--database-url",
            pg_url,
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1, r
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "newer than this entryguard" in lines[0], r.stderr
    assert "Traceback" not in r.stderr + r.stdout
