"""What ``eg`` adds to a server error: the command that helps, looked up by error code.

The control plane's messages are plain sentences for every front end (the dashboard
shows them as they are); only the CLI knows its own commands, so the hints live here.
"""

from __future__ import annotations

HINTS: dict[str, str] = {
    "unauthorized": "run `eg login`",
    "no_active_session": "start one with `eg session start`",
    "user_not_found": "see `eg admin user list`",
    "role_not_found": "see `eg admin role list`",
    "resource_not_found": "see `eg admin resource list`",
    "apikey_not_found": "see `eg admin apikey list`",
    "rule_not_found": "see `eg admin rule list`",
    "guest_not_found": "see `eg admin guest list`",
    "session_not_found": "see `eg admin session list`",
    "command_not_found": "see `eg admin commands`",
    "command_already_retried": "see the newer command in `eg admin commands`",
}
"""Error code → what to run next, appended to the server's message after a colon."""


def with_hint(code: str | None, message: str) -> str:
    """``message``, followed by the CLI's hint for ``code`` if it has one."""
    hint = HINTS.get(code or "")
    return f"{message}: {hint}" if hint else message
