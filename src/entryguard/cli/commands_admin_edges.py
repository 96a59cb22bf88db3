"""``eg admin edges``: the edges following the change stream, their lag and health."""

from __future__ import annotations

from typing import Any

from entryguard.cli.options import CaFileOpt, JsonOpt, ServerOpt, call_api, examples
from entryguard.cli.output import format_relative, print_json, print_table
from entryguard.cli.standalone import new_app

edges_app = new_app(
    no_args_is_help=False,
    short_help="Edges: which are live, how far behind, their health.",
    help=(
        "The edges that follow the change stream, on every replica: the revision each has "
        "applied, how many revisions it is behind, its health (ok, degraded, fail-closed, "
        "offline) and when it was last heard from."
    ),
    epilog=examples("eg admin edges", "eg admin edges --json"),
)


def _lag(e: dict[str, Any]) -> str:
    if not e.get("live"):
        return "-"
    lag = e.get("lag")
    return "0" if not lag else f"{lag} behind"


@edges_app.callback(invoke_without_command=True)
def edges_list(
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List edges, by name."""
    data = call_api(server, ca_file, "GET", "/admin/edges")
    if json_output:
        print_json(data)
        return
    print_table(
        ["NAME", "TOKEN", "HEALTH", "REVISION", "LAG", "REPLICA", "ADDRESS", "VERSION", "SEEN"],
        (
            [
                e.get("name"),
                e.get("token"),
                e.get("health"),
                e.get("revision"),
                _lag(e),
                e.get("replica"),
                e.get("address") or "-",
                e.get("version") or "-",
                "now" if e.get("live") else format_relative(e.get("last_seen")),
            ]
            for e in data.get("items") or []
        ),
        empty=(
            "No edge has streamed yet: start one with `entryguard edge --control-url URL "
            "--edge-token ege_…` (an edge token comes from `entryguard edge-token create`)."
        ),
    )
