"""``eg admin resource|rule|guest|session`` and ``eg admin agents``: what is reachable, by whom."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from entryguard.cli.client import segment
from entryguard.cli.commands_admin_directory import ResourceName
from entryguard.cli.errors import UsageError
from entryguard.cli.options import CaFileOpt, JsonOpt, ServerOpt, call_api, examples
from entryguard.cli.output import (
    clean,
    format_relative,
    format_time,
    print_json,
    print_line,
    print_ok,
    print_table,
    yes_no,
)
from entryguard.cli.standalone import new_app
from entryguard.cli.validation import cidr_body, duration_flag, parse_target

resource_app = new_app("Resources: tunnels to private targets, and agent scripts.")
rule_app = new_app("Static rules: CIDRs that may always reach a resource.")
guest_app = new_app("Guest access: a CIDR may reach a resource for a while.")
session_app = new_app("Everyone's sessions: list and revoke.")

Cidr = Annotated[
    str,
    typer.Argument(
        metavar="CIDR", help="Network or address: 10.0.0.0/8, 203.0.113.7, 2001:db8::/32."
    ),
]
AllowAny = Annotated[
    bool, typer.Option("--allow-any", help="Confirm a /0 network (every address on the internet).")
]
Id = Annotated[int, typer.Argument(metavar="ID", help="The id shown by the list command.")]


def connection_string(r: dict[str, Any]) -> str:
    """``127.0.0.1:41000 → 10.0.1.50:5432`` for a tunnel, the script directory for a script."""
    if r.get("type") == "tunnel":
        return f"{clean(r.get('connection') or 'no port')} → {clean(r.get('target'))}"
    return clean(r.get("script_dir"))


# --- resources -------------------------------------------------------------------------


@resource_app.command(
    "create",
    epilog=examples(
        "eg admin resource create production-db --type tunnel --agent prod-agent --target 10.0.1.50:5432",
        "eg admin resource create office-fw --type script --agent fw-agent --script-dir /etc/eg-agent/scripts/ufw",
    ),
)
def resource_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Resource name users see.")],
    type_: Annotated[
        str, typer.Option("--type", metavar="tunnel|script", help="tunnel or script.")
    ],
    agent: Annotated[
        str, typer.Option("--agent", metavar="KEYNAME", help="Name of the agent's API key.")
    ],
    target: Annotated[
        str | None,
        typer.Option(
            "--target", metavar="HOST:PORT", help="Tunnel target, as the agent reaches it."
        ),
    ] = None,
    script_dir: Annotated[
        str | None,
        typer.Option("--script-dir", metavar="DIR", help="Script directory on the agent."),
    ] = None,
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Create a tunnel (gets a port on the edge) or a script resource."""
    kind = type_.strip().lower()
    body: dict[str, Any] = {"name": name, "type": kind, "agent": agent, "provider": "AGENT"}
    if kind == "tunnel":
        if not target or script_dir:
            raise UsageError("a tunnel resource needs --target HOST:PORT (and no --script-dir)")
        body["target_host"], body["target_port"] = parse_target(target)
    elif kind == "script":
        if not script_dir or target:
            raise UsageError("a script resource needs --script-dir DIR (and no --target)")
        body["script_dir"] = script_dir
    else:
        raise UsageError(f"invalid --type {type_!r}: use tunnel or script")
    data = call_api(server, ca_file, "POST", "/admin/resources", body)
    if json_output:
        print_json(data)
        return
    r = data.get("resource") or {}
    print_ok(
        f"Created {clean(r.get('type'))} resource {clean(r.get('name'))}: {connection_string(r)}"
    )


@resource_app.command("list", epilog=examples("eg admin resource list"))
def resource_list(
    server: ServerOpt = None, ca_file: CaFileOpt = None, json_output: JsonOpt = False
) -> None:
    """List resources with their edge port and connection string."""
    data = call_api(server, ca_file, "GET", "/admin/resources")
    if json_output:
        print_json(data)
        return
    print_table(
        ["NAME", "TYPE", "AGENT", "PORT", "CONNECTION"],
        (
            [r.get("name"), r.get("type"), r.get("agent"), r.get("port"), connection_string(r)]
            for r in data.get("items") or []
        ),
        empty="No resources: create one with `eg admin resource create`.",
    )


@resource_app.command("delete", epilog=examples("eg admin resource delete production-db"))
def resource_delete(
    name: ResourceName,
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Delete a resource: its port closes and every grant to it ends."""
    data = call_api(server, ca_file, "DELETE", f"/admin/resources/{segment(name)}")
    if json_output:
        print_json(data)
        return
    print_ok(f"Deleted resource {clean((data.get('resource') or {}).get('name'))}")


# --- static rules ----------------------------------------------------------------------


@rule_app.command(
    "add",
    epilog=examples(
        "eg admin rule add production-db 10.20.0.0/16 --description 'office VPN'",
        "eg admin rule add status-page 0.0.0.0/0 --allow-any",
    ),
)
def rule_add(
    resource: ResourceName,
    cidr: Cidr,
    description: Annotated[
        str | None, typer.Option("--description", metavar="TEXT", help="Why this rule exists.")
    ] = None,
    allow_any: AllowAny = False,
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Let a network always reach a resource (no session needed)."""
    body = cidr_body(resource, cidr, allow_any, description=description)
    data = call_api(server, ca_file, "POST", "/admin/rules", body)
    if json_output:
        print_json(data)
        return
    rule = data.get("rule") or {}
    print_ok(
        f"Rule {clean(rule.get('id'))}: {clean(rule.get('cidr'))} may reach {clean(rule.get('resource'))}"
    )


@rule_app.command("list", epilog=examples("eg admin rule list", "eg admin rule list production-db"))
def rule_list(
    resource: Annotated[
        str | None, typer.Argument(metavar="[RESOURCE]", help="Only this resource's rules.")
    ] = None,
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List static rules."""
    data = call_api(server, ca_file, "GET", "/admin/rules", params={"resource": resource})
    if json_output:
        print_json(data)
        return
    print_table(
        ["ID", "RESOURCE", "CIDR", "DESCRIPTION", "CREATED"],
        (
            [
                r.get("id"),
                r.get("resource"),
                r.get("cidr"),
                r.get("description"),
                format_time(r.get("created_at")),
            ]
            for r in data.get("items") or []
        ),
        empty="No static rules.",
    )


@rule_app.command("remove", epilog=examples("eg admin rule remove 3"))
def rule_remove(
    rule_id: Id, server: ServerOpt = None, ca_file: CaFileOpt = None, json_output: JsonOpt = False
) -> None:
    """Remove a static rule."""
    data = call_api(server, ca_file, "DELETE", f"/admin/rules/{rule_id}")
    if json_output:
        print_json(data)
        return
    rule = data.get("rule") or {}
    print_ok(
        f"Removed rule {clean(rule.get('id'))} ({clean(rule.get('cidr'))} → {clean(rule.get('resource'))})"
    )


# --- guest access ----------------------------------------------------------------------


@guest_app.command(
    "grant",
    short_help="Let a network reach a resource for a limited time.",
    epilog=examples(
        "eg admin guest grant production-db 203.0.113.7 --duration 2h --note 'vendor support'"
    ),
)
def guest_grant(
    resource: ResourceName,
    cidr: Cidr,
    duration: Annotated[
        str, duration_flag("--duration", "-d", help="How long (4 = hours, 90s, 30m, 2h, 1h30m).")
    ],
    note: Annotated[
        str | None, typer.Option("--note", metavar="TEXT", help="Who this is for.")
    ] = None,
    allow_any: AllowAny = False,
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Let a network reach a resource for a limited time, without an account."""
    body = cidr_body(resource, cidr, allow_any, duration=duration, note=note)
    data = call_api(server, ca_file, "POST", "/admin/guests", body)
    if json_output:
        print_json(data)
        return
    g = data.get("guest") or {}
    print_ok(
        f"Guest access {clean(g.get('id'))}: {clean(g.get('cidr'))} may reach {clean(g.get('resource'))} "
        f"until {format_time(g.get('expires_at'))} ({format_relative(g.get('expires_at'))})"
    )


def _guest_status(g: dict[str, Any]) -> str:
    if g.get("active"):
        return "active"
    return clean(g.get("end_reason") or "expired")


@guest_app.command("list", epilog=examples("eg admin guest list", "eg admin guest list --active"))
def guest_list(
    active: Annotated[bool, typer.Option("--active", help="Only grants still in force.")] = False,
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List guest access grants."""
    data = call_api(
        server, ca_file, "GET", "/admin/guests", params={"active": "true" if active else None}
    )
    if json_output:
        print_json(data)
        return
    print_table(
        ["ID", "RESOURCE", "CIDR", "NOTE", "STATUS", "EXPIRES"],
        (
            [
                g.get("id"),
                g.get("resource"),
                g.get("cidr"),
                g.get("note"),
                _guest_status(g),
                format_time(g.get("expires_at")),
            ]
            for g in data.get("items") or []
        ),
        empty="No guest access.",
    )


@guest_app.command("revoke", epilog=examples("eg admin guest revoke 4"))
def guest_revoke(
    guest_id: Id, server: ServerOpt = None, ca_file: CaFileOpt = None, json_output: JsonOpt = False
) -> None:
    """End a guest grant now."""
    data = call_api(server, ca_file, "DELETE", f"/admin/guests/{guest_id}")
    if json_output:
        print_json(data)
        return
    g = data.get("guest") or {}
    what = (
        f"guest access {clean(g.get('id'))} ({clean(g.get('cidr'))} → {clean(g.get('resource'))})"
    )
    if data.get("revoked") is False or g.get("end_reason") not in (None, "revoked"):
        print_line(f"{what[0].upper()}{what[1:]} had already ended ({clean(g.get('end_reason'))})")
    else:
        print_ok(f"Revoked {what}")


# --- sessions --------------------------------------------------------------------------


def _session_status(s: dict[str, Any]) -> str:
    if s.get("active"):
        return f"active, ends {format_relative(s.get('expires_at'))}"
    return clean(s.get("end_reason") or "expired")


@session_app.command(
    "list", epilog=examples("eg admin session list", "eg admin session list --active")
)
def session_list(
    active: Annotated[bool, typer.Option("--active", help="Only active sessions.")] = False,
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List sessions, newest first."""
    data = call_api(
        server, ca_file, "GET", "/admin/sessions", params={"active": "true" if active else None}
    )
    if json_output:
        print_json(data)
        return
    print_table(
        ["ID", "USER", "IP", "STARTED", "STATUS"],
        (
            [
                s.get("id"),
                s.get("user_email"),
                s.get("ip"),
                format_time(s.get("started_at")),
                _session_status(s),
            ]
            for s in data.get("items") or []
        ),
        empty="No active sessions." if active else "No sessions.",
    )


@session_app.command("revoke", epilog=examples("eg admin session revoke 12"))
def session_revoke(
    session_id: Id,
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """End someone's session now."""
    data = call_api(server, ca_file, "DELETE", f"/admin/sessions/{session_id}")
    if json_output:
        print_json(data)
        return
    s = data.get("session") or {}
    what = f"{clean(s.get('id'))} of {clean(s.get('user_email'))} ({clean(s.get('ip'))})"
    if data.get("revoked") is False or s.get("end_reason") not in (None, "revoked"):
        print_line(f"Session {what} had already ended ({clean(s.get('end_reason'))})")
    else:
        print_ok(f"Revoked session {what}")


# --- agents ----------------------------------------------------------------------------


def agents(
    server: ServerOpt = None, ca_file: CaFileOpt = None, json_output: JsonOpt = False
) -> None:
    """List agents: connected, last heartbeat, version, targets."""
    data = call_api(server, ca_file, "GET", "/admin/agents")
    if json_output:
        print_json(data)
        return
    print_table(
        ["NAME", "KEY", "CONNECTED", "LAST HEARTBEAT", "VERSION", "TARGETS"],
        (
            [
                a.get("name"),
                a.get("key_name"),
                yes_no(a.get("connected")),
                format_time(a.get("last_heartbeat")),
                a.get("version"),
                ", ".join(clean(t) for t in a.get("targets") or []),
            ]
            for a in data.get("items") or []
        ),
        empty="No agents: create a key with `eg admin apikey create NAME --scope agent:connect`.",
    )
