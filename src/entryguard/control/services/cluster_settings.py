"""Settings every replica shares, kept in the database (table ``cluster_settings``).

The tunnel port range and the host shown in connection strings used to be flags of each
replica. With several replicas on one PostgreSQL, two ranges would allocate tunnel ports
from two pools, and two hosts would give users different connection strings for the same
tunnel, depending on the replica that answered. So they are stored once:

- the first replica to start stores its flag, or the default (:func:`reconcile`);
- a later replica started without the flag uses the stored value; one started with the
  flag set to another value refuses to start (:class:`SettingContradicted`): ignoring
  the flag, or letting the last replica to start win, would both hide a misconfiguration;
- an admin changes a value with :func:`set_setting`, audited as ``settings.set``.

Replicas read the values when they start and keep no watch on the table, so a change
takes effect on each replica at its next restart.

Everything here runs inside the caller's ``Database.write`` transaction (serialised):
replicas started together on an empty database store one value per key, and the others
find it stored.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import inspect, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard.control.db.clocked import clock_of
from entryguard.control.db.models import ClusterSetting, Resource
from entryguard.control.services.journal import audit, iso
from entryguard.control.settings import PortRange, Settings
from entryguard.errors import Conflict, Invalid, Unavailable

TUNNEL_PORTS = "tunnel-ports"
PUBLIC_HOST = "public-host"

# A DNS label (RFC 1123; "_" too, which real names carry); the last label is not all
# digits, so "10.0.0.256" is a bad address rather than a host name.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def check_tunnel_ports(value: str) -> str:
    """``FIRST-LAST``, inclusive, in its canonical form."""
    try:
        return str(PortRange.parse(value))
    except ValueError as exc:
        raise Invalid(str(exc), code="invalid_setting") from exc


def check_public_host(value: str) -> str:
    """A host name or an IP address (users type it with a tunnel's port): lower-cased,
    addresses in their canonical form. A URL, a port or a path is refused, since the
    connection strings would carry it."""
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    labels = value.split(".")
    if (
        0 < len(value) <= 253
        and all(_LABEL.match(label) for label in labels)
        and not labels[-1].isdigit()
    ):
        return value.lower()
    raise Invalid(
        f"invalid public host {value!r}: expected the host name or IP address users connect "
        "to, e.g. vpn.example.com or 203.0.113.7 (no scheme, port, path or spaces)",
        code="invalid_setting",
    )


@dataclass(frozen=True)
class Known:
    """A setting this version knows: its default and the check that canonicalises it."""

    default: str
    check: Callable[[str], str]


_DEFAULTS = Settings(database_url="")
KNOWN: dict[str, Known] = {
    PUBLIC_HOST: Known(_DEFAULTS.public_host, check_public_host),
    TUNNEL_PORTS: Known(str(_DEFAULTS.tunnel_ports), check_tunnel_ports),
}
"""The settings, by key; a replica's flag of the same name (``--tunnel-ports``) seeds one."""


def known_setting(key: str) -> Known:
    try:
        return KNOWN[key]
    except KeyError:
        raise Invalid(
            f"unknown setting {key!r}: the settings are {', '.join(sorted(KNOWN))}",
            code="unknown_setting",
        ) from None


class SettingContradicted(Conflict):
    """A replica was started with a value other than the one every replica shares."""

    code = "setting_contradicted"

    def __init__(self, key: str, given: str, stored: str) -> None:
        super().__init__(
            f"{key} is {given} on this replica but {stored} in the database, "
            "which every replica shares"
        )
        self.key = key
        self.given = given
        self.stored = stored


@dataclass(frozen=True)
class ClusterValues:
    """The values a replica serves with."""

    tunnel_ports: PortRange
    public_host: str

    def applied_to(self, settings: Settings) -> Settings:
        return dataclasses.replace(
            settings, tunnel_ports=self.tunnel_ports, public_host=self.public_host
        )


@dataclass(frozen=True)
class SettingView:
    key: str
    value: str
    default: str | None
    """None for a key this version does not know (stored by a newer one)."""
    stored: bool
    """False until a replica has started on this database: ``value`` is the default."""
    updated_at: str | None


@dataclass(frozen=True)
class SetResult:
    setting: SettingView
    previous: str | None
    """The value before (None: none was stored); equal to the new one when nothing changed."""


def _view(key: str, row: ClusterSetting | None) -> SettingView:
    default = KNOWN[key].default if key in KNOWN else None
    if row is None:
        return SettingView(key, default or "", default, False, None)
    return SettingView(key, row.value, default, True, iso(row.updated_at))


async def _stored(s: AsyncSession) -> dict[str, ClusterSetting]:
    return {r.key: r for r in (await s.execute(select(ClusterSetting))).scalars()}


async def list_settings(s: AsyncSession) -> list[SettingView]:
    """Every known setting (its default when none is stored yet), then any stored key a
    newer version wrote, by key."""
    present = await s.run_sync(
        lambda sync: inspect(sync.connection()).has_table(ClusterSetting.__tablename__)
    )
    if not present:
        raise Unavailable(
            "the database has no cluster settings: its schema is older than this entryguard",
            code="schema_too_old",
        )
    rows = await _stored(s)
    return [_view(key, rows.get(key)) for key in sorted(KNOWN.keys() | rows.keys())]


async def reconcile(s: AsyncSession, flags: Mapping[str, str | None]) -> ClusterValues:
    """At a replica's start: the values to serve with, given its flags (None: not given).

    A key not stored yet is stored from the flag, or the default. A stored key wins over
    an absent flag; a flag that names another value raises :class:`SettingContradicted`
    (nothing is written then: the caller's transaction rolls back).
    """
    for key in flags:
        known_setting(key)
    rows = await _stored(s)
    values: dict[str, str] = {}
    for key, k in KNOWN.items():
        given = flags.get(key)
        wanted = k.check(given) if given is not None else None
        row = rows.get(key)
        if row is None:
            value = wanted if wanted is not None else k.default
            s.add(ClusterSetting(key=key, value=value))
            origin = "flag" if wanted is not None else "default"
            await audit(s, "system", "settings.set", key, details={"new": value, "from": origin})
        else:
            try:
                value = k.check(row.value)
            except Invalid as exc:  # written by hand: say where it came from
                raise Invalid(f"the stored {key}: {exc.message}", code=exc.code) from exc
            if wanted is not None and wanted != value:
                raise SettingContradicted(key, wanted, value)
        values[key] = value
    await s.flush()
    return ClusterValues(PortRange.parse(values[TUNNEL_PORTS]), values[PUBLIC_HOST])


async def _check_tunnels_inside(s: AsyncSession, ports: PortRange) -> None:
    """Tunnel ports are kept for a tunnel's life: a range that drops one would leave a
    tunnel on a port the edges no longer consider ours."""
    outside = (
        await s.execute(
            select(Resource.name, Resource.port)
            .where(
                Resource.port.is_not(None),
                or_(Resource.port < ports.first, Resource.port > ports.last),
            )
            .order_by(Resource.port)
        )
    ).all()
    if not outside:
        return
    n = len(outside)
    shown = ", ".join(f"{name} (port {port})" for name, port in outside[:3])
    raise Conflict(
        f"{n} tunnel{'s have ports' if n > 1 else ' has a port'} outside {ports}: "
        f"{shown}{', …' if n > 3 else ''}; choose a range that includes "
        f"{'them' if n > 1 else 'it'}, or delete {'those tunnels' if n > 1 else 'that tunnel'} "
        "first",
        code="tunnels_outside_range",
    )


async def set_setting(s: AsyncSession, key: str, value: str, actor: str) -> SetResult:
    """Store a new value, audited; setting the value already stored changes nothing.

    Replicas read it at their next start.
    """
    new = known_setting(key).check(value)
    row = await s.get(ClusterSetting, key)
    previous = row.value if row is not None else None
    if previous == new:
        return SetResult(_view(key, row), previous)
    if key == TUNNEL_PORTS:
        await _check_tunnels_inside(s, PortRange.parse(new))
    if row is None:
        row = ClusterSetting(key=key, value=new)
        s.add(row)
    else:
        row.value = new
        row.updated_at = clock_of(s).now()
    await s.flush()
    await audit(s, actor, "settings.set", key, details={"old": previous, "new": new})
    return SetResult(_view(key, row), previous)
