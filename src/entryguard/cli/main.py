"""``eg``: the EntryGuard command line for users and admins.

Every failure leaves as one line on stderr and a non-zero exit code: :class:`CliError`
from the commands (1), usage errors from Typer/Click (2), Ctrl-C (130). No traceback
reaches the user. ``--profile NAME`` (``EG_PROFILE``) is accepted by every command,
before or after the command's name, and picks which stored login to use.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from entryguard import __version__
from entryguard.cli import commands_admin_access as access
from entryguard.cli import commands_admin_directory as directory
from entryguard.cli import commands_auth, commands_session, credentials
from entryguard.cli.commands_admin_commands import commands_app
from entryguard.cli.commands_admin_edges import edges_app
from entryguard.cli.commands_audit import audit
from entryguard.cli.errors import CliError
from entryguard.cli.options import examples
from entryguard.cli.output import print_line
from entryguard.cli.standalone import click_core, new_app, run_app, walk

HELP = """EntryGuard: just-in-time access to private resources.

Log in, start a session, connect to your resources; the session ends by itself.

\b
  eg login --server http://127.0.0.1:8080
  eg session start --duration 2h
  eg resources

The server and the token can also come from EG_SERVER and EG_TOKEN (a login token or an API key).
--profile NAME (or EG_PROFILE) keeps a second login, say an admin and a user, side by
side: `eg login --profile dev`, then `eg session start --profile dev`.
"""

app = new_app(HELP)
admin_app = new_app(
    "Admin commands (need an admin login or a key with the admin scope).",
    short_help="Admin commands: users, roles, keys, resources, rules, audit…",
)

app.command(
    epilog=examples(
        "eg login",
        "eg login --server https://eg.example.com --email me@example.com",
        "eg login --email me@example.com --password-stdin < pw.txt",
    )
)(commands_auth.login)
app.command(epilog=examples("eg logout"))(commands_auth.logout)
app.command(epilog=examples("eg whoami", "EG_TOKEN=eg_… eg whoami --json"))(commands_auth.whoami)
app.add_typer(commands_session.app, name="session")
app.command(epilog=examples("eg resources", "eg resources --json"))(commands_session.resources)
app.add_typer(admin_app, name="admin")

admin_app.add_typer(directory.user_app, name="user")
admin_app.add_typer(directory.role_app, name="role")
admin_app.add_typer(directory.apikey_app, name="apikey")
admin_app.add_typer(access.resource_app, name="resource")
admin_app.add_typer(access.rule_app, name="rule")
admin_app.add_typer(access.guest_app, name="guest")
admin_app.add_typer(access.session_app, name="session")
admin_app.command(epilog=examples("eg admin agents"))(access.agents)
admin_app.add_typer(commands_app, name="commands")
admin_app.add_typer(edges_app, name="edges")
admin_app.command(
    epilog=examples(
        "eg admin audit --since 1h", "eg admin audit --follow", "eg admin audit --verify"
    )
)(audit)


def _version(value: bool) -> None:
    if value:
        print_line(f"eg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    pass


def _set_profile(value: str | None) -> str | None:
    if value is not None:
        try:
            credentials.set_profile(value)
        except CliError as exc:
            raise typer.BadParameter(exc.message) from exc
    return value


PROFILE_HELP = "Use this stored login instead of the default one (e.g. an admin and a user)."


def _profile_opt(from_env: bool) -> Any:
    return typer.Option(
        "--profile",
        metavar="NAME",
        envvar="EG_PROFILE" if from_env else None,
        show_envvar=from_env,
        is_eager=True,
        callback=_set_profile,
        help=PROFILE_HELP,
    )


RootProfileOpt = Annotated[str | None, _profile_opt(True)]
ProfileOpt = Annotated[str | None, _profile_opt(False)]


def _root_probe(profile: RootProfileOpt = None) -> None:
    pass


def _probe(profile: ProfileOpt = None) -> None:
    pass


def _profile_option(probe: Callable[..., None]) -> click_core.Parameter:
    """``--profile NAME`` made by Typer itself (so it renders like every other option),
    taken off a probe command; its value goes to :func:`credentials.set_profile`."""
    probe_app = typer.Typer(add_completion=False)
    probe_app.command()(probe)
    (param,) = typer.main.get_command(probe_app).params
    param.expose_value = False  # the commands themselves never see it
    return param


def add_profile_option(root: click_core.Command) -> None:
    """``--profile NAME`` on every command, so it can go before or after the command name
    (`eg --profile dev session start`, `eg session start --profile dev`). The root's also
    reads EG_PROFILE; the one closest to the command wins."""
    on_root, elsewhere = _profile_option(_root_probe), _profile_option(_probe)
    for command in walk(root):
        command.params.append(on_root if command is root else elsewhere)


def run(args: list[str]) -> int:
    """Run ``eg`` with ``args``; return the exit code."""
    credentials.set_profile(None)
    try:
        return run_app(app, "eg", args, prepare=add_profile_option)
    finally:
        credentials.set_profile(None)


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
