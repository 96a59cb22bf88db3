"""Help of all three CLIs, every command, at 80 columns: `-h` works like `--help`, one plain
style (no Rich boxes), no truncated option names, no `<str>`/TEXT type noise; and the
exit-code convention (README "Exit codes") on samples of each class."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import typer

from entryguard.agent import cli as agent_cli
from entryguard.cli import main as eg_main
from entryguard.cli.standalone import build_command, click_core, run_app
from entryguard.server_cli import app as server_app
from tests.conftest import BIN, free_port

APPS: dict[str, typer.Typer] = {
    "entryguard": server_app,
    "eg": eg_main.app,
    "eg-agent": agent_cli.app,
}
# Typer's type labels (<str>, <path>, <int range>) and Click's default metavars; TEXT is
# left out: INTERFACE.md spells `--description TEXT` and `--note TEXT` that way on purpose.
TYPE_NOISE = re.compile(r"<[a-z][a-z_\[\]|, ]*>|\b(INTEGER|BOOLEAN|FLOAT)\b")


def _commands(
    command: click_core.Command, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click_core.Command]]:
    found = [(path, command)]
    for name, sub in (getattr(command, "commands", None) or {}).items():
        found.extend(_commands(sub, (*path, name)))
    return found


def _run(prog: str, args: list[str]) -> int:
    if prog == "eg":
        return eg_main.run(args)
    return run_app(APPS[prog], prog, args)


def _all_commands() -> list[tuple[str, tuple[str, ...]]]:
    return [(prog, path) for prog, app in APPS.items() for path, _ in _commands(build_command(app))]


@pytest.mark.parametrize(("prog", "path"), _all_commands(), ids=lambda v: str(v))
def test_help_at_80_columns(
    prog: str,
    path: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    root = build_command(APPS[prog])
    if prog == "eg":
        eg_main.add_profile_option(root)
    command = dict(_commands(root))[path]
    texts = []
    for flag in ("--help", "-h"):
        assert _run(prog, [*path, flag]) == 0
        out, err = capsys.readouterr()
        assert err == ""
        texts.append(out)
    long_help, short_help = texts
    assert long_help == short_help
    assert long_help.startswith(f"Usage: {' '.join([prog, *path])} ")
    assert "╭" not in long_help and "│" not in long_help  # one plain style, no Rich boxes
    assert not TYPE_NOISE.search(long_help), TYPE_NOISE.search(long_help)
    assert "-h, --help" in long_help
    # Every option is shown by its whole name, and no listed command is cut short.
    for param in command.params:
        for opt in [*param.opts, *param.secondary_opts]:
            if opt.startswith("-"):
                assert re.search(rf"(^|[\s,/]){re.escape(opt)}([\s,=/]|$)", long_help, re.M), (
                    opt,
                    long_help,
                )
    body = long_help.split("\n", 1)[1]  # the usage line ends in "[ARGS]..." by design
    assert not re.search(r"\.\.\.$", body, re.M), body


def test_no_arguments_prints_help() -> None:
    for prog, args in [("entryguard", ["db"]), ("eg", ["admin"]), ("eg-agent", [])]:
        out = subprocess.run(
            [str(BIN / prog), *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "COLUMNS": "80"},
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"Usage: {' '.join([prog, *args])} ")


def _cli(
    prog: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / prog), *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def test_exit_codes(tmp_path: Path) -> None:
    """0 success, 1 refused or failed, 2 usage error: samples of each on each CLI, through
    the real console scripts."""
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {"EG_CONFIG_DIR": str(tmp_path / "eg"), "EG_SERVER": nowhere}
    env = {**env, "EG_TOKEN": "", "EG_PROFILE": ""}
    cfg = tmp_path / "agent.yml"
    cfg.write_text(
        f'server:\n  url: "{nowhere}"\n  api_key: "eg_x"\nagent:\n  name: "a"\n'
        'tunnel:\n  enabled: true\n  edge_url: "ws://127.0.0.1:1"\n'
    )
    cases: list[tuple[str, list[str], int]] = [
        ("eg", ["--version"], 0),
        ("eg", ["session", "start"], 1),  # not logged in
        ("eg", ["login", "--email", "a@b", "--password-stdin"], 2),  # nothing on stdin
        ("eg", ["session", "start", "--duration", "abc"], 2),
        ("eg", ["admin", "rule", "add", "db", "10.0.0.5/8"], 2),  # host bits set
        ("eg", ["no-such-command"], 2),
        ("eg", ["--profile", "a/b", "whoami"], 2),
        ("entryguard", ["version"], 0),
        ("entryguard", ["edge-token", "create", "--data-dir", str(tmp_path / "none")], 1),
        ("entryguard", ["up", "--tunnel-ports", "9-1", "--data-dir", str(tmp_path / "d")], 2),
        ("entryguard", ["up", "--bogus"], 2),
        ("eg-agent", ["version"], 0),
        ("eg-agent", ["check", "--config", str(cfg)], 1),  # server and edge unreachable
        ("eg-agent", ["check", "--config", str(tmp_path / "missing.yml")], 1),
        ("eg-agent", ["run", "--bogus"], 2),
        ("eg-agent", ["init", "--config", str(tmp_path / "new.yml")], 2),  # no terminal, no flags
    ]
    for prog, args, code in cases:
        r = _cli(prog, *args, env=env)
        assert r.returncode == code, (prog, args, r.returncode, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
        if code:
            assert r.stderr.strip(), (prog, args)
