"""``eg admin commands``: the apply/revoke commands queued for script agents; retry failures."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from entryguard.cli.options import CaFileOpt, JsonOpt, ServerOpt, call_api, examples
from entryguard.cli.output import (
    clean,
    format_relative,
    format_time,
    print_json,
    print_line,
    print_ok,
    print_table,
)
from entryguard.cli.standalone import new_app

RETRY_HINT = "Run one again with `eg admin commands retry ID`."

commands_app = new_app(
    no_args_is_help=False,
    short_help="Script commands queued for agents: list, failures, retry.",
    help=(
        "Script commands queued for agents (apply/revoke): list them, see failures with "
        "their output, retry."
    ),
    epilog=examples(
        "eg admin commands",
        "eg admin commands --failed",
        "eg admin commands retry 12",
    ),
)


def _status(c: dict[str, Any]) -> str:
    status = clean(c.get("status"))
    if status == "running":
        # Still running long after its claim: the agent probably died mid-run.
        return f"running since {format_relative(c.get('claimed_at'))}"
    if status == "failed" and c.get("exit_code") is not None:
        return f"failed (exit {c.get('exit_code')})"
    return status


def _took(c: dict[str, Any]) -> str:
    ms = c.get("duration_ms")
    if not isinstance(ms, int):
        return "-"
    return f"{ms} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def _print_with_output(items: list[dict[str, Any]]) -> None:
    for c in items:
        print_line(
            f"#{clean(c.get('id'))}  {clean(c.get('action'))} {clean(c.get('cidr'))} on "
            f"{clean(c.get('resource'))} (agent {clean(c.get('agent'))}): {_status(c)}, "
            f"{_took(c)}, {format_time(c.get('finished_at') or c.get('created_at'))}"
        )
        output = str(c.get("output") or "").rstrip("\n")
        for line in output.splitlines() or ["(no output)"]:
            print_line(f"  | {clean(line) if line else ''}")
        print_line()


@commands_app.callback(invoke_without_command=True)
def commands_list(
    ctx: typer.Context,
    failed: Annotated[
        bool, typer.Option("--failed", help="Only failed commands, with their output.")
    ] = False,
    agent: Annotated[
        str | None, typer.Option("--agent", metavar="KEYNAME", help="Only this agent's commands.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", min=1, max=1000, help="At most this many.")
    ] = 50,
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List script commands, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    data = call_api(
        server,
        ca_file,
        "GET",
        "/admin/commands",
        params={"failed": "true" if failed else None, "agent": agent, "limit": limit},
    )
    if json_output:
        print_json(data)
        return
    items = data.get("items") or []
    if failed:
        if not items:
            print_line("No failed commands.")
            return
        _print_with_output(items)
        print_line(RETRY_HINT)
        return
    print_table(
        ["ID", "AGENT", "RESOURCE", "ACTION", "CIDR", "STATUS", "TOOK", "QUEUED"],
        (
            [
                c.get("id"),
                c.get("agent"),
                c.get("resource"),
                c.get("action"),
                c.get("cidr"),
                _status(c),
                _took(c),
                format_time(c.get("created_at")),
            ]
            for c in items
        ),
        empty="No script commands yet: they are queued when access to a script resource changes.",
    )


@commands_app.command("show", epilog=examples("eg admin commands show 12"))
def commands_show(
    command_id: Annotated[int, typer.Argument(metavar="ID", help="The command's id.")],
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Show one command with its output."""
    data = call_api(server, ca_file, "GET", f"/admin/commands/{command_id}")
    if json_output:
        print_json(data)
        return
    _print_with_output([data.get("command") or {}])


@commands_app.command("retry", epilog=examples("eg admin commands retry 12"))
def commands_retry(
    command_id: Annotated[
        int, typer.Argument(metavar="ID", help="A failed command (or one stuck running).")
    ],
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Queue a failed command again, at the end of its agent's queue."""
    data = call_api(server, ca_file, "POST", f"/admin/commands/{command_id}/retry")
    if json_output:
        print_json(data)
        return
    c = data.get("command") or {}
    print_ok(
        f"Command {command_id} queued again as command {clean(c.get('id'))}: "
        f"{clean(c.get('action'))} {clean(c.get('cidr'))} on {clean(c.get('resource'))} "
        f"(agent {clean(c.get('agent'))})"
    )
