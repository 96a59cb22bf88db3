"""``eg login``, ``eg logout``, ``eg whoami``."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from entryguard.cli import credentials
from entryguard.cli.client import ApiClient, is_loopback_url, not_logged_in
from entryguard.cli.errors import CliError, UsageError
from entryguard.cli.options import CaFileOpt, JsonOpt, ServerOpt, open_client, resolve_server
from entryguard.cli.output import (
    clean,
    format_relative,
    format_time,
    print_json,
    print_line,
    print_ok,
    print_warning,
)


def _stored_or_none(profile: str | None = None) -> credentials.Credentials | None:
    # A damaged file must not stop the user from logging in again (which replaces it).
    try:
        return credentials.load(profile)
    except CliError:
        return None


def read_password_stdin() -> str:
    """The password piped in (``--password-stdin``), without its trailing newline."""
    password = sys.stdin.read().rstrip("\r\n")
    if not password:
        raise UsageError(
            "no password on stdin: pipe it in, e.g. `eg login --password-stdin < file`"
        )
    return password


def _ask(what: str, *, hide: bool = False) -> str:
    if not sys.stdin.isatty():
        flag = "--password-stdin" if hide else "--email"
        raise UsageError(f"no terminal to ask for the {what.lower()}: pass {flag}")
    value = str(typer.prompt(what, hide_input=hide))
    if not hide:
        value = value.strip()
    if not value:
        raise UsageError(f"{what.lower()} must not be empty")
    return value


def login(
    server: ServerOpt = None,
    email: Annotated[
        str | None,
        typer.Option("--email", metavar="EMAIL", help="Your email (asked when missing)."),
    ] = None,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from stdin instead of asking."),
    ] = False,
    ca_file: CaFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Log in and save the token (mode 0600).

    The token is kept in ~/.config/entryguard/credentials.json (or $XDG_CONFIG_HOME,
    or EG_CONFIG_DIR); with --profile NAME in credentials-NAME.json, beside the
    default login. The password is asked on the terminal, or read from stdin with
    --password-stdin. The server defaults to EG_SERVER, else the server you last logged in to, else
    http://127.0.0.1:8080. Give it with or without /api/v1.
    """
    stored = _stored_or_none()
    if stored is None and credentials.active_profile() != credentials.DEFAULT_PROFILE:
        # A new profile starts from the server of the default login, if there is one.
        stored = _stored_or_none(credentials.DEFAULT_PROFILE)
    url = resolve_server(server, stored)
    if ca_file is None and stored is not None and stored.server == url:
        ca_file = stored.ca_file
    if password_stdin and not email:
        raise UsageError("--password-stdin needs --email (stdin carries the password)")
    email = email.strip() if email else _ask("Email")
    password = read_password_stdin() if password_stdin else _ask("Password", hide=True)
    if not is_loopback_url(url) and url.startswith("http://"):
        print_warning(f"{url} is not https: your password and token cross the network unencrypted")
    with ApiClient(url, ca_file=ca_file) as api:
        data = api.request(
            "POST", "/auth/login", json={"email": email, "password": password}, login=True
        )
    token, user = data.get("token"), data.get("user") or {}
    if not isinstance(token, str) or not token:
        raise CliError(f"{url} answered the login without a token: is it an EntryGuard server?")
    stored_email = str(user.get("email") or email)
    path = credentials.save(
        credentials.Credentials(
            server=url,
            token=token,
            email=stored_email,
            expires_at=data.get("expires_at"),
            ca_file=os.path.abspath(ca_file) if ca_file else None,
        )
    )
    if json_output:
        print_json(
            {
                "server": url,
                "email": stored_email,
                "expires_at": data.get("expires_at"),
                "user": user,
                "credentials_file": str(path),
                "profile": credentials.active_profile(),
            }
        )
        return
    role = " (admin)" if user.get("is_admin") else ""
    profile = credentials.active_profile()
    shown = "" if profile == credentials.DEFAULT_PROFILE else f" (profile {profile})"
    print_ok(f"Logged in to {url} as {clean(stored_email)}{role}{shown}")
    print_line(f"Login expires {format_relative(data.get('expires_at'))}; token saved in {path}")
    print_line(f"Next: eg{credentials.profile_flag()} session start")


def logout(json_output: JsonOpt = False) -> None:
    """Log out: revoke the saved token and delete it.

    Only the profile's own login is removed (the default one, or --profile NAME).
    """
    stored = credentials.load()
    profile = credentials.active_profile()
    shown = "" if profile == credentials.DEFAULT_PROFILE else f" (profile {profile})"
    if stored is None:
        if json_output:
            print_json({"logged_out": False, "server": None, "revoked": False, "profile": profile})
        else:
            print_line(f"Not logged in{shown}.")
        return
    revoked = True
    try:
        with ApiClient(
            stored.server, stored.token, token_source="login", ca_file=stored.ca_file
        ) as api:
            api.request("POST", "/auth/logout")
    except CliError as exc:
        # An expired or already revoked token is as good as revoked.
        if exc.message != not_logged_in():
            revoked = False
            print_warning(
                f"could not revoke the token on the server ({exc.message}); removed it here anyway"
            )
    credentials.delete()
    if json_output:
        print_json(
            {"logged_out": True, "server": stored.server, "revoked": revoked, "profile": profile}
        )
    else:
        print_ok(f"Logged out of {stored.server}{shown}")


def _credential_line(data: dict[str, Any]) -> str:
    if data.get("credential") == "api_key":
        source = " (from EG_TOKEN)" if os.environ.get("EG_TOKEN") else ""
        return f"API key {clean(data.get('api_key'))}{source}"
    stored = _stored_or_none()
    if os.environ.get("EG_TOKEN"):
        return "login token (from EG_TOKEN)"
    if stored is not None and stored.expires_at:
        return f"login token, expires {format_relative(stored.expires_at)} ({format_time(stored.expires_at)})"
    return "login token"


def whoami(
    server: ServerOpt = None, ca_file: CaFileOpt = None, json_output: JsonOpt = False
) -> None:
    """Show your user, profile, server, scopes and IP."""
    with open_client(server, ca_file) as api:
        data = api.get("/auth/whoami")
        url = api.server
    profile = credentials.active_profile()
    if json_output:
        print_json({**data, "profile": profile})
        return
    user = data.get("user") or {}
    org = data.get("organization") or {}
    role = " (admin)" if user.get("is_admin") else ""
    print_line(f"{clean(user.get('email'))}{role}")
    rows = [
        ("Profile", profile),
        ("Server", url),
        ("Organization", clean(org.get("name"))),
        ("Scopes", ", ".join(clean(s) for s in data.get("scopes") or []) or "-"),
        ("Credential", _credential_line(data)),
        ("Your IP", clean(data.get("ip"))),
    ]
    for label, value in rows:
        print_line(f"  {label + ':':<15}{value}")
