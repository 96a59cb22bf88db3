"""``eg session start|stop|status`` and ``eg resources``: a user's own access."""

from __future__ import annotations

from typing import Annotated, Any

from rich.cells import cell_len

from entryguard.cli.options import CaFileOpt, JsonOpt, ServerOpt, examples, open_client
from entryguard.cli.output import (
    clean,
    format_hours,
    format_time,
    parse_time,
    print_json,
    print_line,
    print_ok,
    print_table,
    seconds_until,
)
from entryguard.cli.standalone import new_app
from entryguard.cli.validation import duration_flag

app = new_app("Start, stop and inspect your access session.")

NO_RESOURCES = "Your roles give you no resources yet: ask an EntryGuard admin to add you to a role."


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - cell_len(text))


def resource_lines(resources: list[dict[str, Any]]) -> list[str]:
    """The ``Tunnel resources:`` / ``Script resources:`` blocks, names padded to one width."""
    if not resources:
        return [NO_RESOURCES]
    tunnels = [r for r in resources if r.get("type") == "tunnel"]
    scripts = [r for r in resources if r.get("type") != "tunnel"]
    width = max(cell_len(clean(r.get("name"))) for r in resources)
    lines: list[str] = []
    if tunnels:
        lines.append("Tunnel resources:")
        for r in tunnels:
            conn = r.get("connection") or "(no port assigned yet)"
            lines.append(f"  {_pad(clean(r.get('name')), width)}  {clean(conn)}")
    if scripts:
        if lines:
            lines.append("")
        lines.append("Script resources:")
        lines.extend(f"  {clean(r.get('name'))}" for r in scripts)
    return lines


def granted_seconds(session: dict[str, Any]) -> float | None:
    start, end = parse_time(session.get("started_at")), parse_time(session.get("expires_at"))
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def started_lines(data: dict[str, Any]) -> list[str]:
    """Everything after ``✓ Session started`` (the shape in INTERFACE.md)."""
    session = data.get("session") or {}
    lines = ["", *resource_lines(data.get("resources") or []), ""]
    granted = granted_seconds(session)
    if granted is None:
        granted = seconds_until(session.get("expires_at")) or 0
    lines.append(f"Session expires in {format_hours(granted)}")
    if data.get("capped"):
        requested = data.get("requested_seconds")
        asked = f" (asked for {format_hours(requested)})" if isinstance(requested, int) else ""
        lines.append(f"Duration capped at {format_hours(granted)} by your role's maximum{asked}")
    return lines


DurationOpt = Annotated[
    str,
    duration_flag(
        "--duration",
        "-d",
        help="How long: hours by default (4), or 90s, 30m, 2h, 1h30m. Capped at your role's maximum.",
    ),
]


@app.command(
    short_help="Open your resources to your current IP for a while.",
    epilog=examples(
        "eg session start", "eg session start --duration 30m", "eg session start -d 1h30m"
    ),
)
def start(
    duration: DurationOpt = "4",
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Open your resources to your current IP for a while (replaces an active session)."""
    with open_client(server, ca_file) as api:
        data = api.post("/sessions", {"duration": duration})
    if json_output:
        print_json(data)
        return
    print_ok("Session started")
    for line in started_lines(data):
        print_line(line)


@app.command(epilog=examples("eg session stop"))
def stop(server: ServerOpt = None, ca_file: CaFileOpt = None, json_output: JsonOpt = False) -> None:
    """End your session now: your IP loses access to every resource."""
    with open_client(server, ca_file) as api:
        data = api.delete("/sessions/current")
    if json_output:
        print_json(data)
        return
    ip = (data.get("session") or {}).get("ip")
    print_ok(f"Session stopped: access for {clean(ip)} removed" if ip else "Session stopped")


def status_lines(data: dict[str, Any]) -> list[str]:
    session = data.get("session")
    if session and session.get("active"):
        left = seconds_until(session.get("expires_at")) or 0
        head = [
            "Session active",
            f"  IP:          {clean(session.get('ip'))}",
            f"  Started:     {format_time(session.get('started_at'))}",
            f"  Expires in:  {format_hours(left)} ({format_time(session.get('expires_at'))})",
        ]
    else:
        head = ["No active session: start one with `eg session start`"]
    return [*head, "", *resource_lines(data.get("resources") or [])]


@app.command(
    short_help="Show your session (IP, time left) and your resources.",
    epilog=examples("eg session status", "eg session status --json"),
)
def status(
    server: ServerOpt = None, ca_file: CaFileOpt = None, json_output: JsonOpt = False
) -> None:
    """Show whether you have an active session, for which IP, for how long, and your resources."""
    with open_client(server, ca_file) as api:
        data = api.get("/sessions/current")
    if json_output:
        print_json(data)
        return
    for line in status_lines(data):
        print_line(line)


def resources(
    server: ServerOpt = None, ca_file: CaFileOpt = None, json_output: JsonOpt = False
) -> None:
    """List your resources and their connection strings."""
    with open_client(server, ca_file) as api:
        data = api.get("/me/resources")
    if json_output:
        print_json(data)
        return
    items = data.get("items") or []
    print_table(
        ["NAME", "TYPE", "CONNECTION"],
        ([r.get("name"), r.get("type"), r.get("connection")] for r in items),
        empty=NO_RESOURCES,
    )
