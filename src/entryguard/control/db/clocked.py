"""The ORM session a :class:`~entryguard.control.db.database.Database` hands out: it
carries the Database's clock, so services read the time from the session they already
hold (:func:`clock_of`) and tests drive expiry with a ``FakeClock``.

New rows get their creation times (columns marked :data:`STAMP` in ``models.py``) from
the same clock at flush, instead of a column default that would read the system clock.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapper, Session, UOWTransaction

from entryguard.clock import SYSTEM, Clock

STAMP = {"stamp": True}
"""Column ``info`` of a timestamp the session fills with its clock's ``now()`` on insert."""

_stamped: dict[type, tuple[str, ...]] = {}


class ClockSession(Session):
    """A SQLAlchemy session that knows the clock of the Database that made it."""

    def __init__(self, *args: Any, clock: Clock = SYSTEM, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock


def clock_of(s: AsyncSession | Session) -> Clock:
    """The clock of the Database ``s`` came from (``db.read()``, ``db.write()``)."""
    sync = s.sync_session if isinstance(s, AsyncSession) else s
    if not isinstance(sync, ClockSession):
        raise TypeError("not a session of entryguard's Database: it has no clock")
    return sync.clock


def _stamped_attrs(cls: type) -> tuple[str, ...]:
    if cls not in _stamped:
        mapper: Mapper[Any] = inspect(cls)
        _stamped[cls] = tuple(
            attr.key
            for attr in mapper.column_attrs
            if any(col.info.get("stamp") for col in attr.columns)
        )
    return _stamped[cls]


@event.listens_for(ClockSession, "before_flush")
def _stamp_new_rows(session: Session, _flush: UOWTransaction, _instances: Any) -> None:
    assert isinstance(session, ClockSession)
    now = session.clock.now()
    for obj in session.new:
        for key in _stamped_attrs(type(obj)):
            if getattr(obj, key) is None:
                setattr(obj, key, now)
