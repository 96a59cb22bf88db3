"""Engine and transactions, one code path for SQLite (embedded) and PostgreSQL.

Every transaction that changes access goes through :meth:`Database.write`. It
serialises writers: on PostgreSQL with a transaction-scoped advisory lock, on
SQLite with a process-wide asyncio lock (SQLite has one writer anyway). That is
what makes change-log revisions commit in order and keeps the audit hash chain
linear, and it makes "one active session per user" hold under concurrent starts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from entryguard.clock import SYSTEM, Clock
from entryguard.control.db.clocked import ClockSession
from entryguard.control.settings import DbTimeouts

WRITE_LOCK_KEY = 0x45475752  # "EGWR"
_CHANGES = "entryguard.changes"


@dataclass
class TxChanges:
    """What one write transaction did to the change log.

    Services only hold the session, so the transaction's record rides on it
    (:func:`tx_changes`); callers read it from the :class:`WriteTransaction` instead.
    """

    batch: int | None = None
    """The first change row's revision: every row of the transaction carries it."""
    revision: int | None = None
    """The last change row's revision: what the edges must reach to have applied it all."""
    wake: bool = False
    """Wake long-polls after commit (change rows were written, or commands queued)."""


def tx_changes(s: AsyncSession) -> TxChanges:
    """The change-log record of the write transaction ``s`` belongs to."""
    changes = s.info.get(_CHANGES)
    if not isinstance(changes, TxChanges):
        # A session opened outside Database.write (a test, a one-off script).
        changes = s.info[_CHANGES] = TxChanges()
    return changes


def async_url(url: str) -> str:
    """Accept the URLs users type (``postgresql://``, ``sqlite:///path``) and pick async drivers."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        u = u.set(drivername="postgresql+asyncpg")
    elif u.drivername == "sqlite":
        u = u.set(drivername="sqlite+aiosqlite")
    return u.render_as_string(hide_password=False)


def sqlite_url_for(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'entryguard.db').resolve()}"


DATABASE_ERRORS: tuple[type[Exception], ...] = (
    SQLAlchemyError,
    OSError,
    TimeoutError,
)
"""What a database that cannot serve raises: SQLAlchemy's errors (it wraps the
driver's), and the socket errors and timeouts asyncpg may raise unwrapped."""


def unavailable_reason(exc: BaseException) -> str | None:
    """A short reason when ``exc`` says the database cannot serve (unreachable, hung,
    pool exhausted, statement timed out), else None (a bug, a constraint violation)."""
    if isinstance(exc, PoolTimeout):
        return "no free database connection (pool timeout)"
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        cause = getattr(orig, "__cause__", None) or orig
        sqlstate = getattr(cause, "sqlstate", None) or getattr(orig, "sqlstate", None)
        if (
            exc.connection_invalidated
            or isinstance(exc, (OperationalError, InterfaceError))
            or isinstance(cause, (OSError, TimeoutError))
            or (isinstance(sqlstate, str) and sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES)
            or sqlstate == "57014"  # query_canceled: statement_timeout
        ):
            return _short(cause if isinstance(cause, BaseException) else exc)
        return None
    if isinstance(exc, DisconnectionError):
        return _short(exc)
    if isinstance(exc, (OSError, TimeoutError)) or type(exc).__module__.startswith("asyncpg"):
        # Raised unwrapped by the driver (asyncpg's connect and timeouts); the same
        # errors raised elsewhere (a socket of our own) are not the database's.
        return _short(exc) if _raised_by_driver(exc) else None
    return None


def _raised_by_driver(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith(("sqlalchemy.", "asyncpg")):
            return True
        tb = tb.tb_next
    return False


_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")
"""connection exception, insufficient resources, operator intervention (shutdown)."""


def _short(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    if isinstance(exc, SQLAlchemyError):
        text = text.split(" (Background on this error")[0]
    return f"{name}: {text}"[:200] if text else name


class Database:
    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        clock: Clock = SYSTEM,
        timeouts: DbTimeouts | None = None,
    ) -> None:
        self.url = async_url(url)
        self.clock = clock
        # Names this process in its NOTIFYs, so its own LISTEN ignores them: its commits
        # already ran on_commit_changes (one change-log read per change, not two).
        self.instance = uuid.uuid4().hex[:16]
        """The time every service reads, through the sessions (:func:`clock_of`)."""
        self.dialect = make_url(self.url).get_backend_name()
        self.timeouts = timeouts or DbTimeouts()
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": 30}
        else:
            t = self.timeouts
            kwargs.update(
                pool_size=10,
                max_overflow=20,
                pool_pre_ping=True,
                pool_timeout=t.pool,
                connect_args={
                    "timeout": t.connect,
                    "command_timeout": t.statement,
                    "server_settings": {"statement_timeout": str(int(t.statement * 1000))},
                },
            )
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(
            self.engine, expire_on_commit=False, sync_session_class=ClockSession, clock=clock
        )
        self._local_write_lock = asyncio.Lock()
        self.on_commit_changes: list[Callable[[], None]] = []

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as s:
            yield s

    def write(self) -> WriteTransaction:
        """A serialised read-write transaction: ``async with db.write() as s``.

        Commits on success, rolls back on error. When the transaction wrote change-log
        rows, the ``on_commit_changes`` callbacks run after the commit (they wake
        long-polling edges in this process; other replicas hear of it through NOTIFY,
        sent inside the transaction). After the block, the returned object's
        ``revision`` is the last change-log revision the transaction committed, which
        callers wait for the edges to reach.
        """
        return WriteTransaction(self)

    @asynccontextmanager
    async def _serialised(self, changes: TxChanges) -> AsyncIterator[AsyncSession]:
        async with self._local_write_lock, self.sessions() as s:
            s.info[_CHANGES] = changes
            async with s.begin():
                if self.is_postgres:
                    await s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": WRITE_LOCK_KEY})
                yield s
                if changes.wake and self.is_postgres:
                    await s.execute(
                        text("SELECT pg_notify('entryguard_changes', :me)"), {"me": self.instance}
                    )
        if changes.wake:
            for cb in self.on_commit_changes:
                cb()

    async def dispose(self) -> None:
        await self.engine.dispose()


class WriteTransaction:
    """One :meth:`Database.write` transaction; ``revision`` is set once it has committed."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._changes = TxChanges()
        self._cm: AbstractAsyncContextManager[AsyncSession] | None = None
        self.committed = False

    @property
    def revision(self) -> int | None:
        """The last change-log revision committed (None: no change row, or not committed)."""
        return self._changes.revision if self.committed else None

    async def __aenter__(self) -> AsyncSession:
        assert self._cm is None, "a WriteTransaction is entered once"
        self._cm = self._db._serialised(self._changes)
        return await self._cm.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._cm is not None
        suppressed = await self._cm.__aexit__(exc_type, exc, tb)
        self.committed = exc_type is None
        return suppressed


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
