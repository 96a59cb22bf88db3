"""Preparing a control plane to serve: data dir, migrations, first organisation and admin."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from entryguard.control.db.database import Database
from entryguard.control.db.migrate import upgrade_async
from entryguard.control.services.users import bootstrap


@dataclass
class FirstAdmin:
    email: str
    password: str | None  # None when it came from EG_ADMIN_PASSWORD (not echoed)


def prepare_data_dir(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)


async def migrate_and_bootstrap(db: Database, url: str) -> FirstAdmin | None:
    await upgrade_async(url)
    email = os.environ.get("EG_ADMIN_EMAIL") or "admin@localhost"
    password = os.environ.get("EG_ADMIN_PASSWORD") or None
    async with db.write() as s:
        made = await bootstrap(s, email, password)
    if made is None:
        return None
    user, generated = made
    return FirstAdmin(user.email, generated)
