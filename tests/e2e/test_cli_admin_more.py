"""The admin commands test_cli_flow leaves out, through the real `eg` against a real
`entryguard up`, on SQLite and PostgreSQL: admins creating admins, taking resources and
users out of roles, deleting resources, listing and revoking sessions, the audit log's
time filter.

The command under test always runs as `eg`; what it changed is read back over the REST
API with the same login (a process per check would make the module slow), and what the
edge would admit from the snapshot the local edge follows (its token is in the data
dir), so "removed" means the edge stops letting the IP in, not only that a list changed.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.test_cli_flow import (
    DEV_EMAIL,
    Eg,
    World,
    assert_one_line_error,
    login,
    parallel,
    world,
)

__all__ = ["world"]  # the module-scoped fixture (SQLite and PostgreSQL), set up through `eg`


def api(world: World, eg: Eg, method: str, path: str, **kwargs: Any) -> Any:
    """The REST API as `eg`'s stored login of ``eg``."""
    token = json.loads((eg.config_dir / "credentials.json").read_text())["token"]
    r = httpx.request(
        method,
        f"{world.cp.url}/api/v1{path}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
        **kwargs,
    )
    r.raise_for_status()
    return r.json()


def edge_snapshot(world: World) -> dict[str, Any]:
    token = (world.cp.data_dir / "edge-token").read_text().strip()
    r = httpx.get(
        f"{world.cp.url}/api/v1/edge/snapshot",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    r.raise_for_status()
    return dict(r.json())


def admitted(world: World, resource: str, session_id: int) -> bool:
    """Does the edge's view hold a grant of this session on this tunnel resource?"""
    snap = edge_snapshot(world)
    ids = [t["id"] for t in snap["tunnels"] if t["name"] == resource]
    return any(
        g["source"] == "session" and g["source_id"] == session_id and g["resource_id"] in ids
        for g in snap["grants"]
    )


def start_session(world: World) -> dict[str, Any]:
    """The developer starts a 1 h session (not the command under test here)."""
    return dict(api(world, world.dev, "POST", "/sessions", json={"duration": "1h"}))


def my_resources(world: World) -> list[str]:
    return [r["name"] for r in api(world, world.dev, "GET", "/me/resources")["items"]]


def role(world: World, name: str) -> dict[str, Any]:
    (r,) = [r for r in api(world, world.admin, "GET", "/admin/roles")["items"] if r["name"] == name]
    return dict(r)


def outputs(calls: list[tuple[Eg, tuple[str, ...]]]) -> list[str]:
    """Run independent `eg` commands at once; each must succeed without a traceback."""
    results = parallel(calls)
    for (_, args), r in zip(calls, results, strict=True):
        assert r.returncode == 0, f"eg {' '.join(args)}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
        assert "Traceback" not in r.stderr
    return [r.stdout for r in results]


def test_user_create_admin_makes_an_admin(world: World, tmp_path: Path) -> None:
    admin = world.admin
    email = "boss@example.com"
    out = admin.ok(
        "admin", "user", "create", email, "--admin", "--password-stdin", stdin="boss-password-1"
    )
    assert out == f"✓ Created user {email} (admin)\n"
    generated_run, as_json, duplicate = parallel(
        [
            (admin, ("admin", "user", "create", "boss2@example.com", "--admin", "--json")),
            (admin, ("admin", "user", "list", "--json")),
            (admin, ("admin", "user", "create", email, "--admin")),
        ]
    )
    assert generated_run.returncode == 0, generated_run.stderr
    created = json.loads(generated_run.stdout)
    assert created["user"]["is_admin"] is True and created["password"]
    users = {u["email"]: u for u in json.loads(as_json.stdout)["items"]}
    assert users[email]["is_admin"] is True and users[DEV_EMAIL]["is_admin"] is False
    assert_one_line_error(duplicate, 1, "already exists")
    listed = admin.ok("admin", "user", "list")
    assert re.search(rf"^{re.escape(email)}\s+yes\s+active", listed, re.M)
    assert re.search(r"^boss2@example\.com\s+yes\s+active", listed, re.M)
    assert re.search(rf"^{re.escape(DEV_EMAIL)}\s+no\s+active", listed, re.M)
    # The new admin logs in with the generated password and can run admin commands.
    boss = Eg(tmp_path)
    assert "(admin)" in login(boss, world.cp.url, "boss2@example.com", created["password"])
    assert email in [u["email"] for u in boss.json("admin", "user", "list")["items"]]


def test_role_remove_resource_cuts_live_sessions(world: World) -> None:
    admin = world.admin
    sid = start_session(world)["session"]["id"]
    assert admitted(world, "production-db", sid)
    out = admin.ok("admin", "role", "remove-resource", "developers", "production-db")
    assert out == (
        "✓ Role developers no longer gives production-db\n"
        f"  now role developers: office-fw; {DEV_EMAIL}\n"
    )
    try:
        assert not admitted(world, "production-db", sid)
        assert my_resources(world) == ["office-fw"]
        status = api(world, world.dev, "GET", "/sessions/current")
        assert status["session"]["active"] and [r["name"] for r in status["resources"]] == [
            "office-fw"
        ]
        missing, no_role, no_resource, as_json = parallel(
            [
                (admin, ("admin", "role", "remove-resource", "developers", "production-db")),
                (admin, ("admin", "role", "remove-resource", "nosuch", "production-db")),
                (admin, ("admin", "role", "remove-resource", "developers", "nosuch")),
                (admin, ("admin", "role", "remove-resource", "developers", "office-fw", "--json")),
            ]
        )
        assert_one_line_error(missing, 1, "role 'developers' does not have resource")
        assert_one_line_error(no_role, 1, "no role 'nosuch'")
        assert_one_line_error(no_resource, 1, "no resource 'nosuch'")
        removed = json.loads(as_json.stdout)["role"]
        assert removed["resources"] == [] and removed["users"] == [DEV_EMAIL]
        assert my_resources(world) == []
    finally:
        for name in ("production-db", "office-fw"):
            api(world, admin, "POST", "/admin/roles/developers/resources", json={"resource": name})
    # Given back: the running session is admitted again without a restart.
    assert admitted(world, "production-db", sid)


def test_role_remove_user_cuts_their_session(world: World) -> None:
    admin = world.admin
    sid = start_session(world)["session"]["id"]
    assert admitted(world, "production-db", sid)
    out = admin.ok("admin", "role", "remove-user", "developers", DEV_EMAIL)
    assert out == (
        f"✓ Removed {DEV_EMAIL} from role developers\n"
        "  now role developers: office-fw, production-db; no users\n"
    )
    try:
        assert not admitted(world, "production-db", sid)
        assert my_resources(world) == []
        assert api(world, world.dev, "GET", "/sessions/current")["resources"] == []
        again, no_user, no_role = parallel(
            [
                (admin, ("admin", "role", "remove-user", "developers", DEV_EMAIL)),
                (admin, ("admin", "role", "remove-user", "developers", "nobody@example.com")),
                (admin, ("admin", "role", "remove-user", "nosuch", DEV_EMAIL)),
            ]
        )
        assert_one_line_error(again, 1, f"{DEV_EMAIL} is not in role 'developers'")
        assert_one_line_error(no_user, 1, "no user 'nobody@example.com'")
        assert_one_line_error(no_role, 1, "no role 'nosuch'")
    finally:
        api(world, admin, "POST", "/admin/roles/developers/users", json={"email": DEV_EMAIL})
    assert admitted(world, "production-db", sid)
    removed = admin.json("admin", "role", "remove-user", "developers", DEV_EMAIL)["role"]
    assert removed["users"] == [] and removed["resources"] == ["office-fw", "production-db"]
    assert not admitted(world, "production-db", sid)
    api(world, admin, "POST", "/admin/roles/developers/users", json={"email": DEV_EMAIL})


def test_resource_delete_frees_the_port_and_ends_access(world: World) -> None:
    admin = world.admin

    def create(name: str, target: str) -> int:
        body = {"name": name, "type": "tunnel", "agent": "prod-agent"}
        host, port = target.split(":")
        body |= {"target_host": host, "target_port": int(port)}
        return int(api(world, admin, "POST", "/admin/resources", json=body)["resource"]["port"])

    port = create("scratch-db", "10.0.1.60:5432")
    api(world, admin, "POST", "/admin/roles/developers/resources", json={"resource": "scratch-db"})
    sid = start_session(world)["session"]["id"]
    assert admitted(world, "scratch-db", sid)
    assert (
        admin.ok("admin", "resource", "delete", "scratch-db") == "✓ Deleted resource scratch-db\n"
    )
    assert port not in [t["port"] for t in edge_snapshot(world)["tunnels"]]
    assert not admitted(world, "scratch-db", sid)
    assert admitted(world, "production-db", sid)  # the session's other resource is untouched
    names = [r["name"] for r in api(world, admin, "GET", "/admin/resources")["items"]]
    assert "scratch-db" not in names
    assert role(world, "developers")["resources"] == ["office-fw", "production-db"]
    status = api(world, world.dev, "GET", "/sessions/current")
    assert status["session"]["id"] == sid and "scratch-db" not in [
        r["name"] for r in status["resources"]
    ]
    events = api(world, admin, "GET", "/admin/audit", params={"since": "1h"})["items"]
    assert any(
        e["action"] == "resource.delete"
        and e["target"] == "scratch-db"
        and e["details"] == {"port": port}
        for e in events
    )
    again, no_arg = parallel(
        [
            (admin, ("admin", "resource", "delete", "scratch-db")),
            (admin, ("admin", "resource", "delete")),
        ]
    )
    assert_one_line_error(again, 1, "no resource 'scratch-db'")
    assert_one_line_error(no_arg, 2, "Missing argument 'RESOURCE'")
    # The freed port is the lowest free one again; --json on delete.
    assert create("scratch-2", "10.0.1.61:5432") == port
    deleted = admin.json("admin", "resource", "delete", "scratch-2")["resource"]
    assert deleted["name"] == "scratch-2" and deleted["port"] == port
    assert port not in [t["port"] for t in edge_snapshot(world)["tunnels"]]


def test_session_list_active_and_revoke(world: World) -> None:
    admin = world.admin
    old = start_session(world)["session"]["id"]
    sid = start_session(world)["session"]["id"]  # replaces `old`
    active_json, all_json, active_text, all_text = outputs(
        [
            (admin, ("admin", "session", "list", "--active", "--json")),
            (admin, ("admin", "session", "list", "--json")),
            (admin, ("admin", "session", "list", "--active")),
            (admin, ("admin", "session", "list")),
        ]
    )
    active = json.loads(active_json)["items"]
    assert [s["id"] for s in active if s["user_email"] == DEV_EMAIL] == [sid]
    assert all(s["active"] for s in active)
    everything = {s["id"]: s for s in json.loads(all_json)["items"]}
    assert everything[old]["end_reason"] == "replaced" and everything[sid]["active"]
    row = rf"\s+{re.escape(DEV_EMAIL)}\s+127\.0\.0\.1\s+\S+ \S+Z\s+"
    assert re.search(rf"^{sid}{row}active, ends in ", active_text, re.M)
    assert not re.search(rf"^{old}\s", active_text, re.M)
    assert re.search(rf"^{old}{row}replaced$", all_text, re.M)

    out = admin.ok("admin", "session", "revoke", str(sid))
    assert out == f"✓ Revoked session {sid} of {DEV_EMAIL} (127.0.0.1)\n"
    assert not admitted(world, "production-db", sid)
    assert api(world, world.dev, "GET", "/sessions/current")["session"] is None
    stops = [
        e
        for e in api(world, admin, "GET", "/admin/audit", params={"since": "1h"})["items"]
        if e["action"] == "session.stop" and e["target"] == f"session {sid}"
    ]
    assert len(stops) == 1 and stops[0]["actor"] == world.cp.admin_email
    assert stops[0]["details"]["reason"] == "revoked"
    again, old_json, unknown, bad = parallel(
        [
            (admin, ("admin", "session", "revoke", str(sid))),
            (admin, ("admin", "session", "revoke", str(old), "--json")),
            (admin, ("admin", "session", "revoke", "999999")),
            (admin, ("admin", "session", "revoke", "abc")),
        ]
    )
    # A second revoke changes nothing and says so.
    assert again.stdout == f"Session {sid} of {DEV_EMAIL} (127.0.0.1) had already ended (revoked)\n"
    data = json.loads(old_json.stdout)
    assert data["revoked"] is False and data["session"]["end_reason"] == "replaced"
    assert_one_line_error(unknown, 1, "no session 999999")
    assert_one_line_error(bad, 2, "'ID'")
    audit = api(world, admin, "GET", "/admin/audit", params={"since": "1h"})["items"]
    assert [e for e in audit if e["target"] == f"session {sid}"][-1]["id"] == stops[0]["id"]
    # --json on a live session.
    sid = start_session(world)["session"]["id"]
    data = admin.json("admin", "session", "revoke", str(sid))
    assert data["revoked"] is True and data["session"]["end_reason"] == "revoked"
    assert data["session"]["active"] is False and not admitted(world, "production-db", sid)


def test_guest_revoke_twice_says_it_had_ended(world: World) -> None:
    admin = world.admin
    body = {"resource": "production-db", "cidr": "198.51.100.7", "duration": "1h"}
    gid = api(world, admin, "POST", "/admin/guests", json=body)["guest"]["id"]
    assert admin.ok("admin", "guest", "revoke", str(gid)).startswith("✓ Revoked guest access")
    again, as_json = outputs(
        [
            (admin, ("admin", "guest", "revoke", str(gid))),
            (admin, ("admin", "guest", "revoke", str(gid), "--json")),
        ]
    )
    assert again == (
        f"Guest access {gid} (198.51.100.7/32 → production-db) had already ended (revoked)\n"
    )
    assert json.loads(as_json)["revoked"] is False


def test_audit_since_filters_by_time(world: World) -> None:
    admin = world.admin
    before = api(world, admin, "GET", "/admin/audit", params={"since": "1h", "limit": 5000})[
        "items"
    ]
    (setup,) = [e for e in before if e["action"] == "role.create" and e["target"] == "developers"]
    # The fixture created `developers`; make sure it is at least 12 s old (it usually is
    # by now). The window below is 8 s: five `eg` processes started at once on a loaded
    # 2-core machine can take a few seconds to ask, and `audit-late` must stay inside it.
    age = time.time() - datetime.fromisoformat(setup["ts"].replace("Z", "+00:00")).timestamp()
    time.sleep(max(0.0, 12.0 - age))
    api(world, admin, "POST", "/admin/roles", json={"name": "audit-late"})
    # All at once, straight after: audit-late is well inside 8 s, `developers` outside.
    as_json, as_text, hour_json, bad, zero = parallel(
        [
            (admin, ("admin", "audit", "--since", "8s", "--json")),
            (admin, ("admin", "audit", "--since", "8s")),
            (admin, ("admin", "audit", "--since", "1h", "--limit", "5000", "--json")),
            (admin, ("admin", "audit", "--since", "bogus")),
            (admin, ("admin", "audit", "--since", "0")),
        ]
    )
    assert as_json.returncode == 0 and as_text.returncode == 0, as_json.stderr + as_text.stderr
    recent = json.loads(as_json.stdout)["items"]
    assert [e["target"] for e in recent if e["action"] == "role.create"] == ["audit-late"]
    assert all(e["id"] > setup["id"] for e in recent)
    assert re.search(
        r"^\d+\s+\S+ \S+Z\s+admin@example\.com\s+role\.create\s+audit-late\s",
        as_text.stdout,
        re.M,
    )
    assert not re.search(r"role\.create\s+developers\s", as_text.stdout)
    hour = json.loads(hour_json.stdout)["items"]
    assert [e["id"] for e in hour][: len(before)] == [e["id"] for e in before]
    assert hour[-1]["target"] == "audit-late"
    assert [e["id"] for e in hour] == sorted(e["id"] for e in hour)  # oldest first
    for r in (bad, zero):
        assert_one_line_error(r, 2, "--since", "duration")
