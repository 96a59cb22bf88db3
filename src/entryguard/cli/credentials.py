"""Where ``eg`` keeps the login token: ``~/.config/entryguard/credentials.json`` (0600).

The directory follows ``EG_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/entryguard``, else
``~/.config/entryguard``. The file is written to a temporary name created with mode
0600 and renamed over the old one, so the token is never readable by others, not even
for a moment, and a crash mid-write never leaves half a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from entryguard.cli.errors import CliError

FILE_NAME = "credentials.json"


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


def credentials_path() -> Path:
    return config_dir() / FILE_NAME


def load() -> Credentials | None:
    """The stored login, or None when there is none."""
    path = credentials_path()
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
        raise CliError(f"{path} is damaged: delete it and run `eg login` again") from exc


def save(creds: Credentials) -> Path:
    """Write the login with mode 0600 in a 0700 directory; return the file's path."""
    directory = config_dir()
    try:
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True)
        path = directory / FILE_NAME
        tmp = directory / f".{FILE_NAME}.{os.getpid()}.tmp"
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
    """Remove the stored login; True when there was one."""
    path = credentials_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise CliError(f"cannot remove {path}: {exc.strerror or exc}") from exc
    return True
