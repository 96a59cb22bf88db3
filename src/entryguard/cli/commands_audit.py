"""``eg admin audit``: read, follow and verify the hash-chained audit log."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from entryguard.cli.client import ApiClient
from entryguard.cli.errors import CliError, UsageError
from entryguard.cli.options import CaFileOpt, JsonOpt, ServerOpt, open_client
from entryguard.cli.output import (
    clean,
    format_time,
    print_json,
    print_json_line,
    print_line,
    print_ok,
    print_table,
    print_warning,
)
from entryguard.cli.validation import duration_flag

POLL_SECONDS = 1.0


def _details(event: dict[str, Any]) -> str:
    details = event.get("details")
    if not details:
        return ""
    return json.dumps(details, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def event_line(event: dict[str, Any]) -> str:
    parts = [
        format_time(event.get("ts")),
        f"#{clean(event.get('id'))}",
        clean(event.get("actor")),
        clean(event.get("action")),
        clean(event.get("target")),
    ]
    if event.get("ip"):
        parts.append(f"ip={clean(event['ip'])}")
    details = _details(event)
    if details:
        parts.append(clean(details))
    return "  ".join(parts)


def _print_events(events: list[dict[str, Any]], json_output: bool) -> None:
    for event in events:
        if json_output:
            print_json_line(event)
        else:
            print_line(event_line(event))


def _verify(api: ApiClient, json_output: bool) -> None:
    data = api.get("/admin/audit/verify")
    ok = bool(data.get("ok"))
    if json_output:
        print_json(data)
    elif ok:
        print_ok(f"audit chain intact ({clean(data.get('checked'))} events)")
    else:
        line = Text.assemble(
            ("✗", "red"),
            f" audit chain broken at event {clean(data.get('bad_id'))}: "
            f"{clean(data.get('message'))}",
        )
        Console(file=sys.stderr, highlight=False, soft_wrap=True, markup=False).print(line)
    if not ok:
        raise typer.Exit(1)


def _follow(api: ApiClient, last_id: int, filters: dict[str, Any], json_output: bool) -> None:
    """Poll for events after ``last_id`` every second until Ctrl-C; ride out server restarts."""
    down = False
    try:
        while True:
            time.sleep(POLL_SECONDS)
            try:
                data = api.get("/admin/audit", {**filters, "after_id": last_id, "limit": 1000})
            except CliError as exc:
                if not exc.transient:
                    raise
                if not down:
                    print_warning(f"{exc.message}; retrying every second (Ctrl-C to stop)")
                down = True
                continue
            if down:
                print_warning("reconnected")
                down = False
            events = data.get("items") or []
            _print_events(events, json_output)
            last_id = max(
                [last_id, *(int(e["id"]) for e in events if isinstance(e.get("id"), int))]
            )
    except KeyboardInterrupt:
        return


def audit(
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Keep printing new events (one per line) until Ctrl-C."
        ),
    ] = False,
    since: Annotated[
        str | None,
        duration_flag("--since", help="Only events from the last DURATION (1h, 30m, 7d…)."),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Check the hash chain; exit 1 naming the first bad event."),
    ] = False,
    limit: Annotated[
        int,
        typer.Option(
            "--limit", metavar="N", min=1, max=5000, help="At most this many (the newest)."
        ),
    ] = 200,
    actor: Annotated[
        str | None,
        typer.Option("--actor", metavar="TEXT", help="Only events whose actor contains TEXT."),
    ] = None,
    action: Annotated[
        str | None,
        typer.Option(
            "--action",
            metavar="PREFIX",
            help="Only actions starting with PREFIX (session., auth.login…).",
        ),
    ] = None,
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Show, follow or verify the audit log.

    Events are shown oldest first (the newest --limit of them). --follow keeps
    printing new ones, one per line, until Ctrl-C (as JSON lines with --json).
    --verify checks the hash chain and exits 1 naming the first bad event.
    """
    if verify and (follow or since or actor or action):
        raise UsageError(
            "--verify checks the whole chain: use it without --follow, --since, --actor or --action"
        )
    with open_client(server, ca_file) as api:
        if verify:
            _verify(api, json_output)
            return
        filters = {"actor": actor, "action": action}
        data = api.get("/admin/audit", {**filters, "since": since, "limit": limit})
        events: list[dict[str, Any]] = data.get("items") or []
        if follow:
            _print_events(events, json_output)
            last_id = max([0, *(int(e["id"]) for e in events if isinstance(e.get("id"), int))])
            _follow(api, last_id, filters, json_output)
            return
        if json_output:
            print_json(data)
            return
        print_table(
            ["ID", "TIME", "ACTOR", "ACTION", "TARGET", "IP", "DETAILS"],
            (
                [
                    e.get("id"),
                    format_time(e.get("ts")),
                    e.get("actor"),
                    e.get("action"),
                    e.get("target"),
                    e.get("ip"),
                    _details(e),
                ]
                for e in events
            ),
            empty="No audit events.",
        )
