"""Apply Alembic migrations (``entryguard db upgrade``; ``entryguard up`` runs it on start)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy.exc import SQLAlchemyError

from entryguard.errors import Unavailable

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Run in a worker thread when an event loop is already running (env.py uses asyncio.run)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        command.upgrade(alembic_config(url), revision)
        return
    raise RuntimeError("call upgrade_async() from async code")


class SchemaTooNew(Unavailable, SQLAlchemyError):
    """The database was migrated by a newer entryguard than this one.

    Still an ``SQLAlchemyError``, which is what the command line catches for a database
    it cannot use.
    """

    code = "schema_too_new"

    def __str__(self) -> str:
        # SQLAlchemyError would append a link to its docs for any ``code``; ours is not theirs.
        return self.message


async def upgrade_async(url: str, revision: str = "head") -> None:
    """Migrate to ``revision``. Replicas that start together are safe: env.py holds an
    advisory lock for the whole migration (PostgreSQL), so the second one waits, then
    finds the schema current."""
    try:
        await asyncio.to_thread(command.upgrade, alembic_config(url), revision)
    except CommandError as exc:
        if "Can't locate revision" in str(exc):
            raise SchemaTooNew(
                f"the database schema is newer than this entryguard knows ({exc}): "
                "upgrade entryguard on this host to the version the other replicas run"
            ) from exc
        raise
