"""Options every command shares, and how a command finds its server and token.

The server is ``--server``, else ``EG_SERVER``, else the server of the stored login,
else ``http://127.0.0.1:8080``. The token is ``EG_TOKEN`` (a login token or an API
key), else the stored login's token, but only when that login is for the same server:
a token is never sent to a server it was not issued by.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from entryguard.cli import credentials
from entryguard.cli.client import DEFAULT_SERVER, ApiClient, TokenSource, normalize_server
from entryguard.cli.errors import CliError

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="EG_SERVER",
        show_envvar=True,
        metavar="URL",
        help="EntryGuard server, e.g. http://127.0.0.1:8080 (default: the server you logged in to).",
    ),
]
CaFileOpt = Annotated[
    str | None,
    typer.Option(
        "--ca-file",
        envvar="EG_CA_FILE",
        show_envvar=True,
        metavar="PEM",
        help="Trust this CA for an https server with a self-signed certificate.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of text.")]


def resolve_server(server: str | None, stored: credentials.Credentials | None) -> str:
    if server:
        return normalize_server(server)
    if stored is not None:
        return normalize_server(stored.server)
    return DEFAULT_SERVER


def open_client(server: str | None, ca_file: str | None) -> ApiClient:
    """A client for an authenticated command; fails early when there is no token."""
    stored = credentials.load()
    url = resolve_server(server, stored)
    same_server = stored is not None and normalize_server(stored.server) == url
    env_token = os.environ.get("EG_TOKEN", "").strip()
    token: str | None = None
    source: TokenSource | None = None
    if env_token:
        token, source = env_token, "env"
    elif stored is not None and same_server:
        token, source = stored.token, "login"
    if token is None:
        where = "" if url == DEFAULT_SERVER else f" --server {url}"
        profile = credentials.active_profile()
        who = "" if profile == credentials.DEFAULT_PROFILE else f" with profile {profile}"
        raise CliError(
            f"not logged in to {url}{who}: run `eg login{credentials.profile_flag()}{where}` "
            "(or set EG_TOKEN)"
        )
    if ca_file is None and stored is not None and same_server:
        ca_file = stored.ca_file
    return ApiClient(url, token, token_source=source, ca_file=ca_file)


def call_api(
    server: str | None,
    ca_file: str | None,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> Any:
    """One authenticated request (most commands make exactly one)."""
    with open_client(server, ca_file) as api:
        return api.request(method, path, json=body, params=params)


def examples(*lines: str) -> str:
    """A help epilog listing example command lines, one per line (``\\b`` stops Click rewrapping)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
