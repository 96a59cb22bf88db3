"""`eg-agent`: init, run, check, version."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from entryguard import __version__, aio
from entryguard.agent.config import (
    AgentConfig,
    ConfigError,
    default_config_path,
    dump_config,
    load_config,
    parse_config,
)
from entryguard.console import new_app, one_line, print_json, run_app

app = new_app("The EntryGuard agent: tunnels to private targets, and your apply/revoke scripts.")
# Whole lines (no wrapping at 80 columns when piped), nothing read as Rich markup.
out = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        metavar="PATH",
        help="Config file (default: /etc/eg-agent/config.yml or EG_AGENT_CONFIG).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of text.")]


def fail(message: str, code: int = 1) -> None:
    sys.stdout.flush()
    err.print(f"error: {one_line(message)}")
    raise typer.Exit(code)


def _config_path(config: Path | None) -> Path:
    return config or default_config_path()


@app.command()
def version(json_output: JsonOpt = False) -> None:
    """Print the agent's version."""
    if json_output:
        print_json({"name": "eg-agent", "version": __version__})
        return
    out.print(f"eg-agent {__version__}")


@app.command(short_help="Write a config file (mode 0600), asking for what is missing.")
def init(
    config: ConfigOpt = None,
    server_url: Annotated[
        str | None,
        typer.Option(
            "--server-url",
            metavar="URL",
            help="Control plane URL, e.g. https://entryguard.example.com",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", metavar="KEY", help="API key with the agent:connect scope (eg_…)."
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", metavar="NAME", help="Agent name shown to admins.")
    ] = None,
    tunnel: Annotated[bool, typer.Option("--tunnel", help="Enable tunnel mode.")] = False,
    edge_url: Annotated[
        str | None,
        typer.Option(
            "--edge-url", metavar="URL", help="Edge address (ws:// or wss://) for tunnel mode."
        ),
    ] = None,
    scripts_dir: Annotated[
        list[str],
        typer.Option(
            "--scripts-dir",
            metavar="DIR",
            help="Allowed script directory (repeatable); enables script mode.",
        ),
    ] = [],  # noqa: B006
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing config file.")
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Write a config file (mode 0600), asking for what is missing when on a terminal.

    With no mode flag (and no answers on a terminal) it writes the server and agent
    sections and prints the tunnel: and scripts: sections to add to the file.
    """
    path = _config_path(config)
    if path.exists() and not force:
        fail(f"{path} already exists: pass --force to overwrite it")
    interactive = sys.stdin.isatty()
    if not interactive:
        missing = [
            flag
            for flag, value in (
                ("--server-url URL", server_url),
                ("--api-key KEY", api_key),
                ("--name NAME", name),
                ("--edge-url URL", edge_url if tunnel else "-"),
            )
            if not value
        ]
        if missing:
            fail(
                f"stdin is not a terminal, so init cannot ask: pass {' '.join(missing)}"
                " (see `eg-agent init --help`)",
                2,
            )

    def ask(value: str | None, prompt: str, hide: bool = False, default: str | None = None) -> str:
        if value:
            return value
        return str(typer.prompt(prompt, hide_input=hide, default=default))

    import socket

    server_url = ask(server_url, "Server URL", default="http://127.0.0.1:8080")
    api_key = ask(api_key, "API key (eg_…)", hide=True)
    name = ask(name, "Agent name", default=socket.gethostname())
    if tunnel or edge_url:
        tunnel = True
        edge_url = ask(edge_url, "Edge URL (ws:// or wss://)", default=_edge_guess(server_url))
    if not tunnel and not scripts_dir and interactive:
        tunnel = typer.confirm("Enable tunnel mode?", default=True)
        if tunnel:
            edge_url = ask(None, "Edge URL (ws:// or wss://)", default=_edge_guess(server_url))
        d = typer.prompt(
            "Allowed script directory (empty: no script mode)", default="", show_default=False
        )
        if d:
            scripts_dir = [d]
    data: dict[str, Any] = {
        "server": {"url": server_url, "api_key": api_key},
        "agent": {"name": name},
    }
    if tunnel or scripts_dir:
        data["tunnel"] = {"enabled": bool(tunnel), **({"edge_url": edge_url} if edge_url else {})}
        data["scripts"] = {
            "enabled": bool(scripts_dir),
            "allowed_dirs": scripts_dir,
            "timeout": "30s",
        }
    # With no mode, the tunnel: and scripts: sections are left out so that the one the
    # user appends is the only one in the file.
    try:
        cfg = parse_config(data, path)
    except ConfigError as exc:
        fail(str(exc))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(dump_config(data))
    os.chmod(path, 0o600)
    to_add = {} if cfg.modes else _sections_to_add(cfg.server.url)
    if json_output:
        result: dict[str, Any] = {"config": str(path), "mode": "0600", "modes": cfg.modes}
        if to_add:
            result["add_one_of"] = to_add
        print_json(result)
        return
    out.print(f"✓ wrote {path} (mode 0600)")
    if to_add:
        out.print(f"  No mode is enabled yet: append one of these sections to {path}.")
        out.print("")
        out.print("  For tunnel mode (reach private targets through the edge):")
        out.print("")
        out.print(to_add["tunnel"], end="")
        out.print("")
        out.print("  For script mode (run your apply/revoke scripts):")
        out.print("")
        out.print(to_add["scripts"], end="")
        out.print("")
    out.print(f"  check it with: eg-agent check --config {path}")
    out.print(f"  run it with:   eg-agent run --config {path}")


def _edge_guess(server_url: str) -> str:
    """The edge `entryguard up` serves next to this control plane, as a starting point:
    same host, ws(s)://, and 8081 when the API is on the default 8080."""
    from urllib.parse import urlsplit

    try:
        u = urlsplit(server_url)
        host, port = u.hostname, u.port
    except ValueError:
        host, port = None, None
    if not host:
        return "ws://127.0.0.1:8081"
    scheme = "wss" if u.scheme == "https" else "ws"
    if ":" in host:
        host = f"[{host}]"
    if port == 8080 or (port is None and scheme == "ws"):
        return f"{scheme}://{host}:8081"
    return f"{scheme}://{host}"


def _sections_to_add(server_url: str) -> dict[str, str]:
    scripts_dir = r"C:\eg-agent\scripts" if sys.platform == "win32" else "/etc/eg-agent/scripts"
    return {
        "tunnel": (
            f'tunnel:\n  enabled: true\n  edge_url: "{_edge_guess(server_url)}"'
            "   # your edge's address: ws:// or wss://\n"
        ),
        "scripts": (
            # Single quotes: a Windows path's backslashes are not escapes there.
            f"scripts:\n  enabled: true\n  allowed_dirs: ['{scripts_dir}']\n  timeout: 30s\n"
        ),
    }


def _require_mode(cfg: AgentConfig, path: Path) -> None:
    if not cfg.modes:
        fail(
            f"no mode enabled in {path}: add a tunnel: section (enabled: true, edge_url: ws://…)"
            " or a scripts: section (enabled: true, allowed_dirs: [DIR])"
        )


@app.command(short_help="Validate the config, reach the control plane and the edge.")
def check(config: ConfigOpt = None, json_output: JsonOpt = False) -> None:
    """Validate the config, reach the control plane and (in tunnel mode) the edge."""
    from entryguard.agent.checks import run_checks

    path = _config_path(config)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        fail(str(exc))
    _require_mode(cfg, path)
    results: list[dict[str, Any]] = []

    def report(ok: bool, message: str) -> None:
        results.append({"ok": ok, "message": message})
        if not json_output:
            out.print(f"{'✓' if ok else '✗'} {message}")

    report(True, f"config {path} is valid (modes: {', '.join(cfg.modes)})")
    problems = asyncio.run(run_checks(cfg, report))
    if json_output:
        print_json(
            {
                "config": str(path),
                "modes": cfg.modes,
                "ok": not problems,
                "problems": problems,
                "checks": results,
            }
        )
    elif problems:
        out.print(f"{problems} problem(s) found")
    else:
        out.print("✓ all checks passed")
    if problems:
        raise typer.Exit(1)


@app.command()
def run(
    config: ConfigOpt = None,
    log_level: Annotated[
        str, typer.Option("--log-level", metavar="LEVEL", help="debug, info or warning.")
    ] = "info",
) -> None:
    """Run the agent in the foreground (systemd runs this)."""
    from entryguard.agent.runtime import run_agent

    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    path = _config_path(config)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        fail(str(exc))
    _require_mode(cfg, path)
    try:
        aio.run(run_agent(cfg))
    except KeyboardInterrupt:
        pass


def main() -> None:
    sys.exit(run_app(app, "eg-agent", sys.argv[1:]))
