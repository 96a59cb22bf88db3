"""Where ``eg`` keeps the login token: ``~/.config/entryguard/credentials.json`` (0600).

The directory follows ``EG_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/entryguard``, else
``~/.config/entryguard``. The file is written to a temporary name created with mode
0600 and renamed over the old one, so the token is never readable by others, not even
for a moment, and a crash mid-write never leaves half a file.

Profiles (``--profile NAME``, ``EG_PROFILE``) keep several logins side by side, say an
admin and a user: each is its own file, ``credentials-NAME.json``, in the same format.
The default profile is ``credentials.json`` itself, so logins saved before profiles
existed keep working unchanged.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from entryguard.cli.errors import CliError, UsageError

FILE_NAME = "credentials.json"
DEFAULT_PROFILE = "default"
_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_active_profile: str | None = None  # set by --profile; else EG_PROFILE; else the default


def check_profile_name(name: str) -> str:
    """A profile name is a file name part: letters, digits, ``_ . -``, at most 64."""
    text = name.strip()
    if not _PROFILE_NAME.fullmatch(text):
        raise UsageError(
            f"invalid profile name {name!r}: use letters, digits, '_', '.' and '-' "
            "(at most 64, starting with a letter or digit)"
        )
    return text


def set_profile(name: str | None) -> None:
    """Choose the profile for this run (None: back to EG_PROFILE or the default)."""
    global _active_profile
    _active_profile = check_profile_name(name) if name is not None else None


def active_profile() -> str:
    if _active_profile is not None:
        return _active_profile
    env = os.environ.get("EG_PROFILE", "").strip()
    return check_profile_name(env) if env else DEFAULT_PROFILE


def profile_flag() -> str:
    """`` --profile NAME`` for hints in messages, or nothing for the default profile."""
    name = active_profile()
    return "" if name == DEFAULT_PROFILE else f" --profile {name}"


@dataclass(frozen=True)
class Credentials:
    """A stored login: the server it is for, its token and who it belongs to."""

    server: str
    token: str
    email: str
    expires_at: str | None = None
    ca_file: str | None = None


def config_dir() -> Path:
    explicit = os.environ.get("EG_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "entryguard"


def file_name(profile: str | None = None) -> str:
    name = profile or active_profile()
    return FILE_NAME if name == DEFAULT_PROFILE else f"credentials-{name}.json"


def credentials_path(profile: str | None = None) -> Path:
    return config_dir() / file_name(profile)


def load(profile: str | None = None) -> Credentials | None:
    """The profile's stored login (the active profile's by default), or None."""
    path = credentials_path(profile)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw)
        return Credentials(
            server=str(data["server"]),
            token=str(data["token"]),
            email=str(data.get("email", "")),
            expires_at=data.get("expires_at"),
            ca_file=data.get("ca_file"),
        )
    except (ValueError, KeyError, TypeError) as exc:
        hint = "" if profile is not None else profile_flag()
        raise CliError(f"{path} is damaged: delete it and run `eg login{hint}` again") from exc


def save(creds: Credentials) -> Path:
    """Write the active profile's login with mode 0600 in a 0700 directory; return its path."""
    directory = config_dir()
    name = file_name()
    try:
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True)
        path = directory / name
        tmp = directory / f".{name}.{os.getpid()}.tmp"
        data = {k: v for k, v in asdict(creds).items() if v is not None}
        tmp.unlink(missing_ok=True)  # a stale file could carry a looser mode
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path
    except OSError as exc:
        raise CliError(f"cannot save the login in {directory}: {exc.strerror or exc}") from exc


def delete() -> bool:
    """Remove the active profile's stored login; True when there was one."""
    path = credentials_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise CliError(f"cannot remove {path}: {exc.strerror or exc}") from exc
    return True
