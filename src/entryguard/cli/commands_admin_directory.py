"""``eg admin user|role|apikey``: who may do what."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from entryguard.cli.client import segment
from entryguard.cli.commands_auth import read_password_stdin
from entryguard.cli.options import CaFileOpt, JsonOpt, ServerOpt, call_api, examples
from entryguard.cli.output import (
    clean,
    format_time,
    print_json,
    print_line,
    print_ok,
    print_table,
    print_warning,
    seconds_until,
    yes_no,
)
from entryguard.cli.standalone import new_app
from entryguard.cli.validation import duration_flag
from entryguard.durations import format_duration

user_app = new_app("Users: create, list, disable.")
role_app = new_app("Roles: which users reach which resources, and for how long.")
apikey_app = new_app("API keys for agents and scripts (eg_…).")

Email = Annotated[str, typer.Argument(metavar="EMAIL", help="The user's email.")]
RoleName = Annotated[str, typer.Argument(metavar="ROLE", help="Role name.")]
ResourceName = Annotated[str, typer.Argument(metavar="RESOURCE", help="Resource name.")]


# --- users -----------------------------------------------------------------------------


@user_app.command(
    "create",
    short_help="Create a user (generated password unless --password-stdin).",
    epilog=examples(
        "eg admin user create alice@example.com",
        "printf '%s' \"$PW\" | eg admin user create bob@example.com --admin --password-stdin",
    ),
)
def user_create(
    email: Email,
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an admin.")] = False,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help="Read the password from stdin; without it the server generates one, printed once.",
        ),
    ] = False,
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Create a user (with a generated password unless --password-stdin)."""
    body: dict[str, Any] = {"email": email, "is_admin": admin}
    if password_stdin:
        body["password"] = read_password_stdin()
    data = call_api(server, ca_file, "POST", "/admin/users", body)
    if json_output:
        print_json(data)
        return
    user = data.get("user") or {}
    print_ok(f"Created user {clean(user.get('email'))}{' (admin)' if user.get('is_admin') else ''}")
    if data.get("password"):
        print_line(f"Password: {data['password']}")
        print_warning("copy the password now: it will not be shown again")


@user_app.command("list", epilog=examples("eg admin user list --json"))
def user_list(
    server: ServerOpt = None, ca_file: CaFileOpt = None, json_output: JsonOpt = False
) -> None:
    """List users."""
    data = call_api(server, ca_file, "GET", "/admin/users")
    if json_output:
        print_json(data)
        return
    print_table(
        ["EMAIL", "ADMIN", "STATUS", "CREATED"],
        (
            [
                u.get("email"),
                yes_no(u.get("is_admin")),
                "disabled" if u.get("disabled") else "active",
                format_time(u.get("created_at")),
            ]
            for u in data.get("items") or []
        ),
        empty="No users.",
    )


@user_app.command("disable", epilog=examples("eg admin user disable alice@example.com"))
def user_disable(
    email: Email, server: ServerOpt = None, ca_file: CaFileOpt = None, json_output: JsonOpt = False
) -> None:
    """Disable a user: ends their session and revokes their logins."""
    data = call_api(server, ca_file, "POST", f"/admin/users/{segment(email)}/disable")
    if json_output:
        print_json(data)
        return
    print_ok(
        f"Disabled {clean((data.get('user') or {}).get('email'))}: their session ended and their logins were revoked"
    )


# --- roles -----------------------------------------------------------------------------


def _role_summary(role: dict[str, Any]) -> str:
    resources = ", ".join(clean(r) for r in role.get("resources") or []) or "no resources"
    users = ", ".join(clean(u) for u in role.get("users") or []) or "no users"
    return f"role {clean(role.get('name'))}: {resources}; {users}"


@role_app.command(
    "create",
    epilog=examples("eg admin role create dba", "eg admin role create oncall --max-duration 2h"),
)
def role_create(
    name: RoleName,
    max_duration: Annotated[
        str,
        duration_flag(
            "--max-duration", help="Longest session the role allows (4 = hours, 30m, 8h, 1h30m)."
        ),
    ] = "8h",
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Create a role."""
    data = call_api(
        server, ca_file, "POST", "/admin/roles", {"name": name, "max_duration": max_duration}
    )
    if json_output:
        print_json(data)
        return
    role = data.get("role") or {}
    seconds = role.get("max_duration_seconds")
    limit = format_duration(seconds) if isinstance(seconds, int) else clean(seconds)
    print_ok(f"Created role {clean(role.get('name'))} (sessions up to {limit})")


@role_app.command("list", epilog=examples("eg admin role list"))
def role_list(
    server: ServerOpt = None, ca_file: CaFileOpt = None, json_output: JsonOpt = False
) -> None:
    """List roles: maximum session, resources, users."""
    data = call_api(server, ca_file, "GET", "/admin/roles")
    if json_output:
        print_json(data)
        return
    rows = []
    for r in data.get("items") or []:
        seconds = r.get("max_duration_seconds")
        rows.append(
            [
                r.get("name"),
                format_duration(seconds) if isinstance(seconds, int) else seconds,
                ", ".join(clean(x) for x in r.get("resources") or []),
                ", ".join(clean(x) for x in r.get("users") or []),
            ]
        )
    print_table(
        ["NAME", "MAX SESSION", "RESOURCES", "USERS"],
        rows,
        empty="No roles: create one with `eg admin role create NAME`.",
    )


def _role_change(
    server: str | None,
    ca_file: str | None,
    json_output: bool,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    done: str,
) -> None:
    data = call_api(server, ca_file, method, path, body)
    if json_output:
        print_json(data)
        return
    print_ok(done)
    print_line(f"  now {_role_summary(data.get('role') or {})}")


@role_app.command("add-resource", epilog=examples("eg admin role add-resource dba production-db"))
def role_add_resource(
    role: RoleName,
    resource: ResourceName,
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Let the role's users reach a resource."""
    _role_change(
        server,
        ca_file,
        json_output,
        "POST",
        f"/admin/roles/{segment(role)}/resources",
        {"resource": resource},
        f"Role {clean(role)} now gives {clean(resource)}",
    )


@role_app.command(
    "remove-resource", epilog=examples("eg admin role remove-resource dba production-db")
)
def role_remove_resource(
    role: RoleName,
    resource: ResourceName,
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Stop giving a resource through the role."""
    _role_change(
        server,
        ca_file,
        json_output,
        "DELETE",
        f"/admin/roles/{segment(role)}/resources/{segment(resource)}",
        None,
        f"Role {clean(role)} no longer gives {clean(resource)}",
    )


@role_app.command("add-user", epilog=examples("eg admin role add-user dba alice@example.com"))
def role_add_user(
    role: RoleName,
    email: Email,
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Add a user to the role."""
    _role_change(
        server,
        ca_file,
        json_output,
        "POST",
        f"/admin/roles/{segment(role)}/users",
        {"email": email},
        f"Added {clean(email)} to role {clean(role)}",
    )


@role_app.command("remove-user", epilog=examples("eg admin role remove-user dba alice@example.com"))
def role_remove_user(
    role: RoleName,
    email: Email,
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Remove a user from the role."""
    _role_change(
        server,
        ca_file,
        json_output,
        "DELETE",
        f"/admin/roles/{segment(role)}/users/{segment(email)}",
        None,
        f"Removed {clean(email)} from role {clean(role)}",
    )


# --- API keys --------------------------------------------------------------------------


@apikey_app.command(
    "create",
    epilog=examples(
        "eg admin apikey create prod-agent --scope agent:connect",
        "eg admin apikey create ci --scope sessions --expires-in 30d",
    ),
)
def apikey_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Key name (agents are named by it).")],
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope", metavar="SCOPE", help="agent:connect, sessions or admin (repeatable)."
        ),
    ],
    expires_in: Annotated[
        str | None,
        duration_flag("--expires-in", help="Expire the key after this long (e.g. 30d, 12h)."),
    ] = None,
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Create an API key and print it once."""
    body: dict[str, Any] = {"name": name, "scopes": scope}
    if expires_in:
        body["expires_in"] = expires_in
    data = call_api(server, ca_file, "POST", "/admin/apikeys", body)
    if json_output:
        print_json(data)
        return
    key = data.get("apikey") or {}
    print_ok(
        f"Created API key {clean(key.get('name'))} (scopes: {', '.join(clean(s) for s in key.get('scopes') or [])})"
    )
    print_line("")
    print_line(f"  {data.get('key')}")
    print_line("")
    print_warning("copy the key now: it will not be shown again")


def _key_status(k: dict[str, Any]) -> str:
    if k.get("revoked_at"):
        return "revoked"
    left = seconds_until(k.get("expires_at"))
    return "expired" if left is not None and left <= 0 else "active"


@apikey_app.command("list", epilog=examples("eg admin apikey list"))
def apikey_list(
    server: ServerOpt = None, ca_file: CaFileOpt = None, json_output: JsonOpt = False
) -> None:
    """List API keys (never the keys themselves)."""
    data = call_api(server, ca_file, "GET", "/admin/apikeys")
    if json_output:
        print_json(data)
        return
    print_table(
        ["NAME", "PREFIX", "SCOPES", "STATUS", "CREATED", "EXPIRES", "LAST USED"],
        (
            [
                k.get("name"),
                k.get("prefix"),
                ", ".join(clean(s) for s in k.get("scopes") or []),
                _key_status(k),
                format_time(k.get("created_at")),
                format_time(k.get("expires_at")),
                format_time(k.get("last_used_at")),
            ]
            for k in data.get("items") or []
        ),
        empty="No API keys.",
    )


@apikey_app.command("revoke", epilog=examples("eg admin apikey revoke prod-agent"))
def apikey_revoke(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Key name.")],
    server: ServerOpt = None,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Revoke an API key: it stops working at once."""
    data = call_api(server, ca_file, "DELETE", f"/admin/apikeys/{segment(name)}")
    if json_output:
        print_json(data)
        return
    print_ok(f"Revoked API key {clean((data.get('apikey') or {}).get('name'))}")
