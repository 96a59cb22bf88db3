"""The dashboard end to end in Chromium, as an admin and a user click through it.

Screenshots of every page land in test-output/screenshots/ (git-ignored).
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from playwright.async_api import Browser, Page, expect
from sqlalchemy import func, select

from entryguard.control.db.models import AuditEvent, Grant, Resource, StaticRule
from entryguard.control.services.apikeys import create_edge_token
from tests.browser.conftest import downloaded_text, field_error, new_page, shot, sign_in
from tests.integration.conftest import Api

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEV = "dev@example.com"
DEV_PW = "dev-password-1"
OPS = "ops@example.com"


async def count(api: Api, model: type) -> int:
    async with api.db.read() as s:
        return int((await s.execute(select(func.count()).select_from(model))).scalar_one())


async def nav(page: Page, item: str) -> None:
    await page.get_by_role("navigation", name="Main").get_by_role("link", name=item).click()
    await expect(page.get_by_role("heading", level=1)).to_be_visible()


async def create_agent_key(page: Page, name: str = "prod-agent") -> str:
    await nav(page, "API keys")
    await page.get_by_label("Name").fill(name)
    await expect(page.locator('input[name=scope][value="agent:connect"]')).to_be_checked()
    await page.get_by_role("button", name="Create key").click()
    box = page.get_by_test_id("new-key")
    await expect(box).to_contain_text("shown only once")
    key = await box.locator("[data-copy-text]").inner_text()
    assert key.startswith("eg_")
    return key


async def heartbeat(api: Api, key: str) -> None:
    """The agent reporting in with its key, as eg-agent does."""
    info = {
        "name": "prod-agent",
        "version": "0.1.0",
        "hostname": "db-gateway",
        "os": "linux",
        "modes": ["tunnel"],
        "tunnel_connected": True,
    }
    async with httpx.AsyncClient(base_url=f"{api.url}/api/v1") as c:
        r = await c.post("/agent/heartbeat", headers={"Authorization": f"Bearer {key}"}, json=info)
        assert r.status_code == 200, r.text


def shown_time(text: str) -> datetime:
    """A time as the dashboard prints it: ``2026-11-22 21:04:05 UTC``."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)


def api_time(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(microsecond=0)


async def check_agents(admin: Page, api: Api) -> None:
    """The connected agent: its status, last heartbeat, version, host and target."""
    await nav(admin, "Agents")
    [agent] = (await api.ok("GET", "/admin/agents"))["items"]
    cells = admin.locator('tr[data-agent="prod-agent"] td')
    await expect(cells).to_have_count(7)
    await expect(cells.nth(1)).to_contain_text("Connected")
    await expect(cells.nth(1)).to_contain_text("tunnel up")
    heartbeat = await cells.nth(2).inner_text()
    assert shown_time(heartbeat) == api_time(agent["last_heartbeat"])
    assert abs(datetime.now(UTC) - shown_time(heartbeat)) < timedelta(seconds=60)
    await expect(cells.nth(3)).to_have_text("0.1.0")
    await expect(cells.nth(4)).to_contain_text("db-gateway")
    await expect(cells.nth(5)).to_have_text("10.0.1.50:5432")
    await expect(cells.nth(6)).to_have_text("production-db")
    await shot(admin, "05-agents")


async def add_tunnel_resource(page: Page, api: Api) -> str:
    """Resources → Add Resource → AGENT → Tunnel → agent credential → name → target → Create."""
    connection = f"127.0.0.1:{api.settings.tunnel_ports.first}"
    await nav(page, "Resources")
    await page.get_by_role("link", name="Add Resource").first.click()
    await page.get_by_label("Provider").select_option("AGENT")
    await page.get_by_label("Resource type").select_option("tunnel")
    await page.get_by_label("Agent credential").select_option("prod-agent")
    await page.get_by_label("Name").fill("production-db")
    await expect(page.get_by_label("Script directory")).to_be_hidden()
    await page.get_by_label("Target Host").fill("10.0.1.50")
    await page.get_by_label("Target Port").fill("5432")
    await shot(page, "03-add-resource")
    await page.get_by_role("button", name="Create").click()

    await expect(page.locator(".flash")).to_contain_text(f"{connection} → 10.0.1.50:5432")
    row = page.locator('tr[data-resource="production-db"]')
    await expect(row).to_contain_text(str(api.settings.tunnel_ports.first))
    await expect(row.get_by_test_id("copy-text")).to_have_text(f"{connection} → 10.0.1.50:5432")
    await expect(row.get_by_role("button", name=f"Copy {connection}")).to_be_visible()
    await shot(page, "04-resources")
    return connection


async def create_user_and_role(page: Page) -> None:
    await nav(page, "Users")
    await page.get_by_label("Email").fill(DEV)
    await page.get_by_label("Password").fill(DEV_PW)
    await page.get_by_role("button", name="Create user").click()
    await expect(page.locator(f'tr[data-user="{DEV}"]')).to_contain_text("Active")
    await shot(page, "06-users")

    await nav(page, "Roles")
    await page.get_by_label("Name").fill("developers")
    await page.get_by_label("Maximum session").fill("8h")
    await page.get_by_role("button", name="Create role").click()
    await expect(page.get_by_role("heading", name="Role developers")).to_be_visible()
    await page.get_by_label("Add a resource").select_option("production-db")
    await page.get_by_role("button", name="Add resource").click()
    await expect(page.get_by_test_id("role-resources")).to_contain_text("production-db")
    await page.get_by_label("Add a user").select_option(DEV)
    await page.get_by_role("button", name="Add user").click()
    await expect(page.get_by_test_id("role-users")).to_contain_text(DEV)
    await shot(page, "07-role-edit")
    await nav(page, "Roles")
    await expect(page.locator('tr[data-role="developers"]')).to_contain_text("production-db")
    await shot(page, "08-roles")


async def start_session(user: Page, api: Api, connection: str) -> None:
    nav_links = user.get_by_role("navigation", name="Main").get_by_role("link")
    await expect(nav_links).to_have_text(["My access", "Session history"])  # no admin menu
    mine = user.locator('tr[data-resource="production-db"]')
    await expect(mine).to_contain_text(connection)
    await expect(mine).to_contain_text("Start a session")
    await user.get_by_label("Duration").fill("2h")
    await user.get_by_role("button", name="Start session").click()
    await expect(user.locator(".flash")).to_contain_text("Session started for 127.0.0.1")
    countdown = user.get_by_role("timer")
    await expect(countdown).to_have_text(re.compile(r"^1h 59m \d+s$"))
    first = await countdown.inner_text()
    await expect(countdown).not_to_have_text(first, timeout=3000)  # it ticks
    await expect(mine).to_contain_text("Allowed")
    await mine.get_by_role("button", name=f"Copy {connection}").click()
    await expect(mine.locator(".btn-copy")).to_contain_text("Copied")
    assert await user.evaluate("navigator.clipboard.readText()") == connection
    assert await count(api, Grant) == 1
    await shot(user, "01-my-access")


async def check_audit(admin: Page, api: Api) -> None:
    """The audit page lists the events, checks the chain and exports CSV and JSON lines."""
    await nav(admin, "Audit log")
    await expect(admin.get_by_test_id("chain")).to_have_attribute("data-ok", "true")
    table = admin.get_by_test_id("audit")
    for action in (
        "apikey.create",
        "resource.create",
        "user.create",
        "role.create",
        "role.add_resource",
        "role.add_user",
        "session.start",
        "session.stop",
    ):
        await expect(table.locator(f'tr[data-action="{action}"]').first).to_be_visible()
    await shot(admin, "12-audit")

    async with admin.expect_download() as dl:
        await admin.get_by_test_id("export-csv").click()
    download = await dl.value
    assert download.suggested_filename.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(await downloaded_text(download))))
    assert len(rows) == await count(api, AuditEvent)
    actions = [r["action"] for r in rows]
    assert actions.index("resource.create") < actions.index("session.start")
    start = next(r for r in rows if r["action"] == "session.start")
    assert start["actor"] == DEV and json.loads(start["details"])["ip"] == "127.0.0.1"

    # Filtered by actor, the page and the JSON-lines export hold only the user's events.
    await admin.get_by_label("Actor").fill(DEV)
    await admin.get_by_role("button", name="Filter").click()
    await expect(table.locator("tbody tr")).to_have_count(3)
    async with admin.expect_download() as dl:
        await admin.get_by_test_id("export-jsonl").click()
    lines = (await downloaded_text(await dl.value)).splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["action"] for e in events] == ["auth.login", "session.start", "session.stop"]
    assert {e["actor"] for e in events} == {DEV}
    assert all(len(e["hash"]) == 64 for e in events)


async def test_admin_sets_up_a_tunnel_and_a_user_starts_a_session(
    api: Api, browser: Browser
) -> None:
    admin_ctx, admin = await new_page(browser, api)
    await admin.goto("/signin")
    await shot(admin, "00-signin")
    await sign_in(admin)

    await heartbeat(api, await create_agent_key(admin))
    await shot(admin, "02-apikeys-created")
    connection = await add_tunnel_resource(admin, api)
    await check_agents(admin, api)
    await create_user_and_role(admin)

    user_ctx, user = await new_page(browser, api)
    await sign_in(user, DEV, DEV_PW)
    await start_session(user, api, connection)
    await nav(admin, "Sessions")
    live = admin.get_by_test_id("active-sessions")
    await expect(live).to_contain_text(DEV)
    await expect(live).to_contain_text("127.0.0.1")
    await shot(admin, "09-sessions")

    await user.get_by_role("button", name="Stop session").click()
    await expect(user.locator(".flash")).to_contain_text("Session stopped")
    await expect(user.get_by_test_id("my-session")).to_contain_text("No active session")
    assert await count(api, Grant) == 0
    await nav(user, "Session history")
    await expect(user.locator("tbody tr").first).to_contain_text("stopped")
    await shot(user, "10-history")

    # A non-admin is refused admin pages by the server, whatever the menu shows.
    response = await user.goto("/admin/users")
    assert response is not None and response.status == 403
    await expect(user.get_by_role("heading", name="Admins only")).to_be_visible()
    await shot(user, "11-forbidden")

    await check_audit(admin, api)

    # Signing out revokes the login token: the old cookie opens nothing any more.
    cookie = next(c for c in await user_ctx.cookies() if c["name"] == "eg_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    await user.goto("/")
    await user.get_by_role("button", name="Sign out").click()
    await expect(user.get_by_role("heading", name="Sign in")).to_be_visible()
    async with httpx.AsyncClient(base_url=api.url, cookies={"eg_session": cookie["value"]}) as c:
        assert (await c.get("/")).status_code == 303
    await user_ctx.close()
    await admin_ctx.close()


async def staging_db(api: Api) -> None:
    await api.agent_key("prod-agent")
    body = {
        "name": "staging-db",
        "type": "tunnel",
        "agent": "prod-agent",
        "target_host": "10.0.1.60",
        "target_port": 5432,
    }
    await api.ok("POST", "/admin/resources", json=body)


async def bad_static_rules(page: Page, api: Api) -> None:
    # A CIDR with host bits set: the error stands beside the CIDR field, nothing is stored.
    await nav(page, "Static rules")
    audit_before = await count(api, AuditEvent)
    await page.get_by_label("Resource", exact=True).select_option("staging-db")
    await page.get_by_label("IP or CIDR").fill("10.0.0.5/8")
    await page.get_by_label("Description").fill("VPN")
    await page.get_by_role("button", name="Add rule").click()
    await expect(field_error(page, "cidr")).to_contain_text("host bits are set")
    await expect(field_error(page, "cidr")).to_contain_text("did you mean 10.0.0.0/8?")
    await expect(page.get_by_label("IP or CIDR")).to_have_value("10.0.0.5/8")
    await expect(page.get_by_label("IP or CIDR")).to_have_attribute("aria-invalid", "true")
    await shot(page, "13-rule-bad-cidr")
    assert await count(api, StaticRule) == 0
    assert await count(api, AuditEvent) == audit_before
    assert (await api.ok("GET", "/admin/rules"))["items"] == []

    # 0.0.0.0/0 shows a warning as it is typed and needs the explicit "allow any" tick.
    await page.get_by_label("IP or CIDR").fill("0.0.0.0/0")
    warning = page.locator("[data-any-warning]")
    await expect(warning).to_be_visible()
    await page.get_by_role("button", name="Add rule").click()
    await expect(field_error(page, "allow_any")).to_contain_text("Allow any address")
    await expect(warning).to_be_visible()
    assert await count(api, StaticRule) == 0
    await page.get_by_label("Allow any address").check()
    await page.get_by_role("button", name="Add rule").click()
    await expect(page.locator(".flash")).to_contain_text("Static rule 0.0.0.0/0 added")
    await expect(page.get_by_test_id("rules")).to_contain_text("open to all")
    assert await count(api, StaticRule) == 1
    await shot(page, "14-rules")
    await page.get_by_role("button", name="Remove").click()
    await expect(page.locator(".flash")).to_contain_text("removed")
    assert await count(api, StaticRule) == 0


async def bad_guest_access(page: Page, api: Api) -> None:
    await nav(page, "Guest access")
    await page.get_by_label("Resource", exact=True).select_option("staging-db")
    await page.get_by_label("IP or CIDR").fill("198.51.100.7")
    await page.get_by_label("Duration").fill("forever")
    await page.get_by_role("button", name="Grant access").click()
    await expect(field_error(page, "duration")).to_contain_text("invalid duration")
    assert (await api.ok("GET", "/admin/guests"))["items"] == []
    await page.get_by_label("Duration").fill("4h")
    await page.get_by_label("Note").fill("External auditor")
    await page.get_by_role("button", name="Grant access").click()
    guests = page.get_by_test_id("guests")
    await expect(guests).to_contain_text("198.51.100.7/32")
    await expect(guests).to_contain_text(re.compile(r"3h 59m \d+s left"))
    await shot(page, "15-guests")
    await page.get_by_role("button", name="End now").click()
    await expect(guests).to_contain_text("revoked")


async def bad_resources(page: Page, api: Api) -> None:
    await page.goto("/admin/resources/new")
    await page.get_by_label("Agent credential").select_option("prod-agent")
    await page.get_by_label("Name").fill("api")
    await page.get_by_label("Target Host").fill("10.0.1.100")
    await page.get_by_label("Target Port").fill("99999")
    await page.get_by_role("button", name="Create").click()
    await expect(field_error(page, "target_port")).to_contain_text("target port must be 1..65535")
    await page.get_by_label("Target Port").fill("8080")
    await page.get_by_label("Name").fill("staging-db")
    await page.get_by_role("button", name="Create").click()
    await expect(field_error(page, "name")).to_contain_text("already exists")
    await expect(page.get_by_label("Target Host")).to_have_value("10.0.1.100")
    await shot(page, "16-add-resource-error")
    # A script resource wants an absolute directory on the agent's host.
    await page.get_by_label("Resource type").select_option("script")
    await expect(page.get_by_label("Target Host")).to_be_hidden()
    await page.get_by_label("Name").fill("edge-firewall")
    await page.get_by_label("Script directory").fill("scripts/nginx")
    await page.get_by_role("button", name="Create").click()
    await expect(field_error(page, "script_dir")).to_contain_text("absolute path")
    assert await count(api, Resource) == 1


async def test_bad_input_is_shown_beside_the_field_and_changes_nothing(
    api: Api, browser: Browser
) -> None:
    await staging_db(api)
    ctx, page = await new_page(browser, api)
    await sign_in(page)
    await bad_static_rules(page, api)
    await bad_guest_access(page, api)
    await bad_resources(page, api)

    # A form whose CSRF token was tampered with is refused and changes nothing.
    await page.goto("/admin/roles")
    await page.get_by_label("Name").fill("sneaky")
    await page.locator('form[action="/admin/roles"] input[name=csrf]').evaluate(
        "el => el.value = 'forged'"
    )
    await page.get_by_role("button", name="Create role").click()
    await expect(page.get_by_role("heading", name="Form expired")).to_be_visible()
    await expect(page.locator(".error-card")).to_contain_text("nothing was changed")
    assert (await api.ok("GET", "/admin/roles"))["items"] == []
    await ctx.close()


async def test_admin_adds_a_script_resource_and_revokes_access(api: Api, browser: Browser) -> None:
    await staging_db(api)
    await api.ok("POST", "/admin/roles", json={"name": "oncall"})
    await api.ok("POST", "/admin/roles/oncall/resources", json={"resource": "staging-db"})
    dev = await api.make_user(DEV, DEV_PW)
    await api.ok("POST", "/admin/roles/oncall/users", json={"email": DEV})
    await api.ok("POST", "/sessions", dev, json={"duration": "1h"})
    ctx, page = await new_page(browser, api)
    await sign_in(page)

    # Add Resource for scripts: the script directory instead of a target.
    await nav(page, "Resources")
    await page.get_by_role("link", name="Add Resource").first.click()
    await page.get_by_label("Resource type").select_option("script")
    await page.get_by_label("Agent credential").select_option("prod-agent")
    await page.get_by_label("Name").fill("edge-firewall")
    await page.get_by_label("Script directory").fill("/etc/eg-agent/scripts/nginx")
    await page.get_by_role("button", name="Create").click()
    row = page.locator('tr[data-resource="edge-firewall"]')
    await expect(row).to_contain_text("scripts in /etc/eg-agent/scripts/nginx")
    await row.get_by_role("button", name="Delete").click()  # confirm() is accepted
    await expect(page.locator(".flash")).to_contain_text("Resource edge-firewall deleted")
    await expect(row).to_have_count(0)

    # The user's live session, revoked from the Sessions page.
    await nav(page, "Sessions")
    await page.get_by_test_id("active-sessions").get_by_role("button", name="Revoke").click()
    await expect(page.locator(".flash")).to_contain_text(f"of {DEV} revoked")
    await expect(page.get_by_text("No active sessions")).to_be_visible()
    assert await count(api, Grant) == 0

    # Disabling the user; revoking the agent's key.
    await nav(page, "Users")
    await page.locator(f'tr[data-user="{DEV}"]').get_by_role("button", name="Disable").click()
    await expect(page.locator(f'tr[data-user="{DEV}"]')).to_contain_text("Disabled")
    assert (await api.call("GET", "/auth/whoami", dev)).status_code == 401
    await nav(page, "API keys")
    await page.locator('tr[data-key="prod-agent"]').get_by_role("button", name="Revoke").click()
    await expect(page.locator('tr[data-key="prod-agent"]')).to_contain_text("Revoked")
    await ctx.close()


async def edge_grants(api: Api, token: str) -> set[tuple[str, str]]:
    """(tunnel, CIDR) of every grant in the edge snapshot: what the edges enforce."""
    async with httpx.AsyncClient(
        base_url=f"{api.url}/api/v1/edge", headers={"Authorization": f"Bearer {token}"}
    ) as c:
        r = await c.get("/snapshot")
        assert r.status_code == 200, r.text
    snap = r.json()
    names = {t["id"]: t["name"] for t in snap["tunnels"]}
    return {(names[g["resource_id"]], g["cidr"]) for g in snap["grants"]}


async def my_resources(api: Api, token: str) -> list[str]:
    return [r["name"] for r in (await api.ok("GET", "/sessions/current", token))["resources"]]


async def test_role_edits_cut_live_sessions_and_the_sessions_page_shows_each(
    api: Api, browser: Browser
) -> None:
    await staging_db(api)
    cache = {"name": "cache", "type": "tunnel", "agent": "prod-agent"}
    await api.ok(
        "POST", "/admin/resources", json={**cache, "target_host": "10.0.1.70", "target_port": 6379}
    )
    await api.ok("POST", "/admin/roles", json={"name": "oncall"})
    for resource in ("staging-db", "cache"):
        await api.ok("POST", "/admin/roles/oncall/resources", json={"resource": resource})
    dev = await api.make_user(DEV, DEV_PW)
    ops = await api.make_user(OPS)
    for email in (DEV, OPS):
        await api.ok("POST", "/admin/roles/oncall/users", json={"email": email})
    mine = await api.ok("POST", "/sessions", dev, json={"duration": "1h"}, source="127.0.0.2")
    theirs = await api.ok("POST", "/sessions", ops, json={"duration": "30m"}, source="127.0.0.3")
    async with api.db.write() as s:
        edge = await create_edge_token(s, "test-edge")
    both = {"127.0.0.2/32", "127.0.0.3/32"}
    assert await edge_grants(api, edge) == {(r, ip) for r in ("staging-db", "cache") for ip in both}

    ctx, page = await new_page(browser, api)
    await sign_in(page)

    # Sessions: each active session with its user, IP and expiry.
    await nav(page, "Sessions")
    await expect(page.get_by_test_id("active-sessions").locator("tbody tr")).to_have_count(2)
    for out, email, ip, left in (
        (mine, DEV, "127.0.0.2", r"^(59m \d+s|1h 0m 0s)$"),
        (theirs, OPS, "127.0.0.3", r"^(29m \d+s|30m 0s)$"),
    ):
        sess = out["session"]
        cells = page.locator(f'tr[data-session="{sess["id"]}"] td')
        await expect(cells.nth(0)).to_contain_text(email)
        await expect(cells.nth(1)).to_have_text(ip)
        assert shown_time(await cells.nth(3).inner_text()) == api_time(sess["expires_at"])
        await expect(cells.nth(4)).to_have_text(re.compile(left))
    await shot(page, "17-sessions-two-users")

    # The role page: remove a resource; both live sessions lose it at once, keep the other.
    await nav(page, "Roles")
    await page.locator('tr[data-role="oncall"]').get_by_role("link", name="oncall").click()
    await expect(page.get_by_role("heading", name="Role oncall")).to_be_visible()
    members = page.get_by_test_id("role-resources").locator("li .strong")
    await expect(members).to_have_text(["cache", "staging-db"])
    await (
        page.get_by_test_id("role-resources")
        .locator("li", has_text="cache")
        .get_by_role("button", name="Remove")
        .click()
    )  # confirm() is accepted
    await expect(page.locator(".flash")).to_contain_text("cache removed from oncall.")
    await expect(members).to_have_text(["staging-db"])
    await expect(
        page.get_by_label("Add a resource").locator("option", has_text="cache")
    ).to_have_count(1)
    assert await edge_grants(api, edge) == {("staging-db", ip) for ip in both}
    assert await my_resources(api, dev) == await my_resources(api, ops) == ["staging-db"]

    # Remove a user: their live session's grant is gone; the other user's stays.
    users = page.get_by_test_id("role-users").locator("li .strong")
    await expect(users).to_have_text([DEV, OPS])
    await (
        page.get_by_test_id("role-users")
        .locator("li", has_text=DEV)
        .get_by_role("button", name="Remove")
        .click()
    )
    await expect(page.locator(".flash")).to_contain_text(f"{DEV} removed from oncall.")
    await expect(users).to_have_text([OPS])
    await shot(page, "18-role-edit-removed")
    assert await edge_grants(api, edge) == {("staging-db", "127.0.0.3/32")}
    assert await my_resources(api, dev) == []
    await nav(page, "Roles")
    role = page.locator('tr[data-role="oncall"]')
    await expect(role.locator("td").nth(2)).to_have_text("staging-db")
    await expect(role.locator("td").nth(3)).to_have_text(OPS)

    # Every page of the menu, for the request check (only_the_control_plane).
    for item in (
        await page.get_by_role("navigation", name="Main").get_by_role("link").all_inner_texts()
    ):
        await nav(page, item.strip())
        await expect(page.get_by_role("heading", level=1)).to_have_text(item.strip())
    await ctx.close()
