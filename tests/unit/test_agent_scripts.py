"""The script runner without a control plane: path checks, argv, output capture, kills."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from entryguard.agent.config import AgentConfig, parse_config
from entryguard.agent.scripts import (
    OUTPUT_LIMIT,
    Command,
    CommandRefused,
    ScriptRunner,
    resolve_script,
    script_argv,
)


def make_dir(path: Path, apply: str = '#!/bin/sh\necho applied "$1"\n') -> Path:
    path.mkdir(parents=True)
    for name in ("apply.sh", "revoke.sh"):
        (path / name).write_text(apply)
        (path / name).chmod(0o755)
    return path


def command(script_dir: Path | str, **kw: Any) -> Command:
    fields: dict[str, Any] = {
        "id": 1,
        "resource": "fw",
        "script_dir": str(script_dir),
        "action": "apply",
        "cidr": "203.0.113.7/32",
        "description": "session 1 a@example.com",
    }
    fields.update(kw)
    return Command(**fields)


def config(allowed: list[Path], timeout: str = "30s") -> AgentConfig:
    return parse_config(
        {
            "server": {"url": "http://127.0.0.1:9/api/v1", "api_key": "eg_abcdefgh_secret"},
            "agent": {"name": "a"},
            "scripts": {
                "enabled": True,
                "allowed_dirs": [str(p) for p in allowed],
                "timeout": timeout,
            },
        },
        Path("test.yml"),
    )


def test_resolve_accepts_scripts_under_allowed_dirs(tmp_path: Path) -> None:
    d = make_dir(tmp_path / "allowed" / "fw")
    # A symlink that stays inside is fine; what runs is the resolved path.
    (tmp_path / "allowed" / "alias").symlink_to(d)
    assert resolve_script(command(d), [str(tmp_path / "allowed")]) == d / "apply.sh"
    alias = command(tmp_path / "allowed" / "alias", action="revoke")
    assert resolve_script(alias, [str(tmp_path / "allowed")]) == d / "revoke.sh"
    assert script_argv(d / "apply.sh", "10.0.0.0/8", "x; y") == [
        str(d / "apply.sh"),
        "10.0.0.0/8",
        "x; y",
    ]


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("outside", "outside scripts.allowed_dirs"),
        ("symlinked script", "resolves to"),
        ("symlinked dir", "resolves to"),
        ("dotdot", "outside scripts.allowed_dirs"),
        ("missing outside", "outside scripts.allowed_dirs"),
        ("missing inside", "no script"),
        ("not executable", "is not executable"),
        ("relative", "not an absolute path"),
        ("bad cidr", "invalid CIDR"),
        ("bad action", "unknown action"),
        ("nul", "NUL"),
    ],
)
def test_resolve_refuses(tmp_path: Path, case: str, needle: str) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    outside = make_dir(tmp_path / "outside")
    cmd = {
        "outside": lambda: command(outside),
        "symlinked script": lambda: _symlinked_script(allowed, outside),
        "symlinked dir": lambda: _symlinked_dir(allowed, outside),
        "dotdot": lambda: command(f"{allowed}/../outside"),
        "missing outside": lambda: command(tmp_path / "nowhere"),
        "missing inside": lambda: command(allowed / "nothing"),
        "not executable": lambda: _not_executable(allowed),
        "relative": lambda: command("allowed/fw"),
        "bad cidr": lambda: command(outside, cidr="1.2.3.4; rm -rf /"),
        "bad action": lambda: command(outside, action="rm"),
        "nul": lambda: command(outside, description="a\x00b"),
    }[case]()
    with pytest.raises(CommandRefused, match=needle):
        resolve_script(cmd, [str(allowed)])


def _symlinked_script(allowed: Path, outside: Path) -> Command:
    (allowed / "esc").mkdir()
    (allowed / "esc" / "apply.sh").symlink_to(outside / "apply.sh")
    return command(allowed / "esc")


def _symlinked_dir(allowed: Path, outside: Path) -> Command:
    (allowed / "link").symlink_to(outside)
    return command(allowed / "link")


def _not_executable(allowed: Path) -> Command:
    d = make_dir(allowed / "noexec")
    (d / "apply.sh").chmod(0o644)
    return command(d)


async def test_output_is_capped_at_64_kib_and_exit_codes_are_reported(tmp_path: Path) -> None:
    d = make_dir(
        tmp_path / "big",
        "#!/bin/sh\nhead -c 200000 /dev/zero | tr '\\0' 'a'\necho oops >&2\nexit 7\n",
    )
    runner = ScriptRunner(config([tmp_path]), control=None)  # type: ignore[arg-type]
    out = await runner.execute(command(d))
    assert out.exit_code == 7 and out.error is None and not out.ok
    assert len(out.output.encode()) <= OUTPUT_LIMIT
    assert out.output.startswith("aaaa")
    assert out.output.endswith("[output truncated: 200005 bytes, the first 64 KiB kept]")


async def test_env_cwd_and_a_signal_death(tmp_path: Path) -> None:
    d = make_dir(
        tmp_path / "env",
        '#!/bin/sh\necho "$EG_ACTION|$EG_CIDR|$EG_DESCRIPTION|$EG_RESOURCE|$(pwd)"\n'
        "kill -USR1 $$\n",
    )
    runner = ScriptRunner(config([tmp_path]), control=None)  # type: ignore[arg-type]
    out = await runner.execute(command(d, description="it's $(x)"))
    assert out.output == f"apply|203.0.113.7/32|it's $(x)|fw|{d}\n"
    assert out.exit_code is None and out.error == "the script was killed by signal SIGUSR1"


async def test_a_background_child_is_killed_when_the_script_exits(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    d = make_dir(tmp_path / "bg", f'#!/bin/sh\nsleep 60 &\necho $! > "{pid_file}"\necho done\n')
    runner = ScriptRunner(config([tmp_path]), control=None)  # type: ignore[arg-type]
    out = await runner.execute(command(d))
    assert out.ok and out.output == "done\n" and out.duration_ms < 1500
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        _wait_gone(pid)


def _wait_gone(pid: int) -> None:
    import time

    for _ in range(100):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            raise ProcessLookupError(pid) from None
        if state == "Z":
            raise ProcessLookupError(pid)
        time.sleep(0.02)
    os.kill(pid, 0)


async def test_an_escaped_process_holding_the_output_does_not_hang_the_run(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "escaped.pid"
    d = make_dir(
        tmp_path / "esc",
        f"#!/bin/sh\nsetsid sh -c 'echo $$ > {pid_file}; exec sleep 5' &\n"
        f"while [ ! -s {pid_file} ]; do sleep 0.01; done\necho done\n",
    )
    runner = ScriptRunner(config([tmp_path]), control=None)  # type: ignore[arg-type]
    try:
        out = await runner.execute(command(d))
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert out.ok and out.duration_ms < 2500
    assert out.output.startswith("done\n") and "kept its output open" in out.output


def test_windows_runs_ps1_scripts_through_powershell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Windows the agent looks for apply.ps1/revoke.ps1 and runs them with
    `powershell -NoProfile -NonInteractive -File`, the CIDR and description as separate
    arguments (still an argument list, never a command line to parse)."""
    import entryguard.agent.scripts as scripts

    monkeypatch.setattr(scripts, "WINDOWS", True)
    d = tmp_path / "allowed" / "fw"
    d.mkdir(parents=True)
    for action in ("apply", "revoke"):
        (d / f"{action}.ps1").write_text("param([string]$Cidr, [string]$Description)\n")
    assert scripts.script_name("apply") == "apply.ps1"
    real = resolve_script(command(d, action="revoke"), [str(tmp_path / "allowed")])
    assert real == d / "revoke.ps1"
    assert script_argv(real, "10.0.0.0/8", "x; $(y)") == [
        "powershell",
        "-NoProfile",
        "-NonInteractive",
        "-File",
        str(d / "revoke.ps1"),
        "10.0.0.0/8",
        "x; $(y)",
    ]
    (d / "apply.ps1").unlink()
    with pytest.raises(CommandRefused, match=r"no script .*apply\.ps1"):
        resolve_script(command(d), [str(tmp_path / "allowed")])
