"""`entryguard up` as a user runs it: first start, edge tokens (restarts: test_restart.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import BIN, free_port, make_control_plane


def test_first_start_prints_admin_and_next_steps(tmp_path: Path) -> None:
    port, edge = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EG_")}
    proc = subprocess.Popen(
        [
            str(BIN / "entryguard"),
            "up",
            "--listen",
            f"127.0.0.1:{port}",
            "--edge-listen",
            f"127.0.0.1:{edge}",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("  eg session start"):
                break
        text = "".join(lines)
        assert "admin@localhost" in text
        pw_line = next(ln for ln in lines if ln.strip().startswith("password"))
        password = pw_line.split()[1]
        assert len(password) >= 12
        assert "eg login" in text and f"http://127.0.0.1:{port}" in text
        # The agent's line is complete: pasted with the real key, it configures and runs it.
        agent_line = next(ln.strip() for ln in lines if ln.strip().startswith("eg-agent init"))
        assert agent_line == (
            f"eg-agent init --config ./agent.yml --server-url http://127.0.0.1:{port} "
            f"--api-key eg_… --name prod-agent --tunnel --edge-url ws://127.0.0.1:{edge} "
            "&& eg-agent run --config ./agent.yml"
        )
        assert "eg admin apikey create prod-agent --scope agent:connect" in text
        assert (tmp_path / ".entryguard" / "entryguard.db").exists()
        assert oct((tmp_path / ".entryguard").stat().st_mode & 0o777) == "0o700"
        r = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/auth/login",
            json={"email": "admin@localhost", "password": password},
        )
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
    # A second start creates no admin, prints no password and no steps: one line to the README.
    proc = subprocess.Popen(
        [
            str(BIN / "entryguard"),
            "up",
            "--listen",
            f"127.0.0.1:{port}",
            "--edge-listen",
            f"127.0.0.1:{edge}",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "README" in line or not line:
                break
        text = "".join(lines)
        assert "EntryGuard is running" in text
        assert '  Next steps: README.md, "Five minutes"' in text, text
        assert "password" not in text and "eg-agent init" not in text
    finally:
        proc.terminate()
        proc.wait(10)
    # A taken port is one clear line.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        out = subprocess.run(
            [str(BIN / "entryguard"), "up", "--listen", f"127.0.0.1:{taken}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 1
    assert "password" not in out.stdout
    assert f"cannot listen on 127.0.0.1:{taken}" in out.stderr and "Traceback" not in out.stderr


def test_edge_token_create_prints_a_usable_token(tmp_path: Path) -> None:
    cp = make_control_plane(tmp_path, None, command="server")
    cp.start()
    try:
        out = subprocess.run(
            [str(BIN / "entryguard"), "edge-token", "create", "--data-dir", str(cp.data_dir)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        token = out.stdout.strip().splitlines()[-1]
        assert token.startswith("ege_")
        r = httpx.get(
            f"{cp.url}/api/v1/edge/snapshot", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200 and "revision" in r.json()
        out = subprocess.run(
            [
                str(BIN / "entryguard"),
                "edge-token",
                "create",
                "--name",
                "edge-2",
                "--json",
                "--data-dir",
                str(cp.data_dir),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        created = json.loads(out.stdout)
        assert created["name"] == "edge-2" and created["token"] != token
        r = httpx.get(
            f"{cp.url}/api/v1/edge/snapshot",
            headers={"Authorization": f"Bearer {created['token']}"},
        )
        assert r.status_code == 200
    finally:
        cp.stop()
    out = subprocess.run(
        [str(BIN / "entryguard"), "edge-token", "create", "--data-dir", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1 and "entryguard up" in out.stderr and "Traceback" not in out.stderr


def test_bad_flags_are_one_line_errors(tmp_path: Path) -> None:
    nothing = f"postgresql://postgres@127.0.0.1:{free_port()}/eg"  # no server listens there
    # Exit codes (README "Exit codes"): 2 for bad flags, 1 when something failed.
    for args, needle, code in [
        (["up", "--tunnel-ports", "5-2"], "port range", 2),
        (["up", "--database-url", nothing], "cannot reach the database server", 1),
        (["db", "upgrade", "--database-url", nothing], "cannot reach the database server", 1),
        (["up", "--listen", "0.0.0.0:8080"], "needs TLS", 2),
        (["server", "--trusted-proxy", "10.0.0.5/8"], "host bits", 2),
        (["up", "--no-such-flag"], "No such option", 2),
        (["up", "--database-url", "mysql://x@h/db"], "unsupported database", 2),
    ]:
        out = subprocess.run(
            [str(BIN / "entryguard"), *args, "--data-dir", str(tmp_path / "d")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == code, (args, out.returncode, out.stderr)
        assert needle in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
