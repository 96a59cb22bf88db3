"""Every dashboard page at 1280x800 with long names, connection strings and audit details:
no table is wider than its card, nothing spills out of a card, and every link or button
in a table row is inside the window. Also the "no roles" messages on My access.

The screenshots of this module (test-output/screenshots/layout-*.png) are the ones in
docs/screenshots/.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, expect

from entryguard.control.db.database import sqlite_url_for
from tests.browser.conftest import new_page, shot, sign_in
from tests.integration.conftest import ADMIN, Api, serve_api

pytestmark = pytest.mark.asyncio(loop_scope="module")

WIDTH, HEIGHT = 1280, 800
EDGE_HOST = "edge-eu-west-1.access.entryguard.example.com"
AGENT = "eu-west-1-production-database-gateway-agent"
SCRIPT_AGENT = "ci-runner-nginx-firewall-agent-frankfurt"
WAREHOUSE = "analytics-warehouse-postgres-primary-eu-west-1"
WAREHOUSE_HOST = "analytics-warehouse-primary.db.internal.eu-west-1.example.com"
FIREWALL = "nginx-edge-firewall-production-frankfurt-dc2"
ROLE = "platform-engineering-oncall-eu-west-1"
DEV = "dev@example.com"
DEV_PW = "dev-password-1"
JANE = "jane.doe-van-der-berg@platform-engineering.example.com"
OPS = "ops@example.com"
NOBODY = "new.hire@example.com"
NOBODY_PW = "new-hire-password-1"

ADMIN_PAGES = [
    ("/admin/resources", "Resources"),
    ("/admin/roles", "Roles"),
    (f"/admin/roles/{ROLE}", f"Role {ROLE}"),
    ("/admin/users", "Users"),
    ("/admin/sessions", "Sessions"),
    ("/admin/rules", "Static rules"),
    ("/admin/guests", "Guest access"),
    ("/admin/agents", "Agents"),
    ("/admin/edges", "Edges"),
    ("/admin/apikeys", "API keys"),
    ("/admin/audit", "Audit log"),
    ("/admin/resources/new", "Add Resource"),
    ("/", "My access"),
    ("/history", "Session history"),
]
USER_PAGES = [("/", "My access"), ("/history", "Session history")]

# Measured in the page: what sticks out. Each problem is one line naming the element.
OVERFLOWS = """
() => {
  const problems = [];
  const W = window.innerWidth;
  const name = (el) => el.dataset.testid || el.tagName.toLowerCase() + "." + el.className;
  const de = document.documentElement;
  if (de.scrollWidth > de.clientWidth + 1) {
    problems.push(`the page scrolls sideways: ${de.scrollWidth} > ${de.clientWidth}`);
  }
  for (const card of document.querySelectorAll(".card, .secret-box")) {
    if (card.scrollWidth > card.clientWidth + 1) {
      problems.push(`${name(card)}: content ${card.scrollWidth} px wide in a card of ${card.clientWidth}`);
    }
    const r = card.getBoundingClientRect();
    if (r.right > W + 1) problems.push(`${name(card)}: right edge ${r.right} beyond the window`);
  }
  const tables = document.querySelectorAll("table");
  tables.forEach((table, i) => {
    const label = table.dataset.testid || `table ${i + 1}`;
    const box = table.closest(".table-wrap") || table.parentElement;
    const card = table.closest(".card") || box;
    const width = Math.ceil(table.getBoundingClientRect().width);
    const wide = width > box.clientWidth + 1 || width > card.clientWidth + 1;
    const scrolls = ["auto", "scroll"].includes(getComputedStyle(box).overflowX)
      && box.scrollWidth > box.clientWidth + 1;
    if (wide && !scrolls) {
      problems.push(`${label}: table ${width} px wide in a card of ${card.clientWidth} that does not scroll`);
    }
    // What can be seen of the table: its scrolling box, the card and the window.
    const b = box.getBoundingClientRect();
    const c = card.getBoundingClientRect();
    const left = Math.max(0, b.left, c.left);
    const right = Math.min(W, b.right, c.right);
    for (const el of table.querySelectorAll("tbody a, tbody button")) {
      const r = el.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) continue;
      if (r.left < left - 1 || r.right > right + 1) {
        const text = el.textContent.trim().replace(/\\s+/g, " ");
        problems.push(`${label}: "${text}" at ${Math.round(r.left)}..${Math.round(r.right)} is outside the visible ${Math.round(left)}..${Math.round(right)}`);
      }
    }
    // A table wider than its card hides its last columns: that is clipping too.
    if (wide) {
      const cells = table.querySelectorAll("th");
      const last = cells[cells.length - 1];
      const heading = last ? last.textContent.trim() || "(actions)" : "?";
      problems.push(`${label}: wider than its card (${width} > ${card.clientWidth}), column ${heading} is cut off`);
    }
  });
  return [...new Set(problems)];
}
"""


@pytest_asyncio.fixture(loop_scope="module")
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """The control plane with a long public edge host name: long connection strings."""
    async with serve_api(sqlite_url_for(tmp_path), tmp_path, public_host=EDGE_HOST) as a:
        yield a


async def page_at_1280(browser: Browser, api: Api) -> tuple[BrowserContext, Page]:
    context, page = await new_page(browser, api)
    await page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
    return context, page


async def overflows(page: Page) -> list[str]:
    result: Any = await page.evaluate(OVERFLOWS)
    assert isinstance(result, list)
    return [str(x) for x in result]


async def heartbeat(api: Api, key: str, name: str, modes: list[str]) -> None:
    info = {
        "name": name,
        "version": "0.1.0",
        "hostname": f"{name}.infra.eu-west-1.example.com",
        "os": "linux (Debian GNU/Linux 12 bookworm, x86_64)",
        "modes": modes,
        "tunnel_connected": "tunnel" in modes,
    }
    async with httpx.AsyncClient(base_url=f"{api.url}/api/v1") as c:
        r = await c.post("/agent/heartbeat", headers={"Authorization": f"Bearer {key}"}, json=info)
        assert r.status_code == 200, r.text


async def realistic_data(api: Api) -> None:
    """What a busy installation holds, with the longest names the dashboard accepts."""
    agent_key = await api.agent_key(AGENT)
    script_key = await api.agent_key(SCRIPT_AGENT)
    await api.ok(
        "POST",
        "/admin/apikeys",
        json={
            "name": "terraform-pipeline-session-automation",
            "scopes": ["sessions", "admin"],
            "expires_in": "30d",
        },
    )
    for name, host, port in (
        (WAREHOUSE, WAREHOUSE_HOST, 5432),
        ("production-db", "10.0.1.50", 5432),
        ("redis-session-cache-cluster-eu-west-1", "fd00:ec2:1234:5678:9abc:def0:1234:5678", 6379),
    ):
        body = {"name": name, "type": "tunnel", "agent": AGENT}
        await api.ok(
            "POST", "/admin/resources", json={**body, "target_host": host, "target_port": port}
        )
    await api.ok(
        "POST",
        "/admin/resources",
        json={
            "name": FIREWALL,
            "type": "script",
            "agent": SCRIPT_AGENT,
            "script_dir": "/etc/eg-agent/scripts/nginx-edge-firewall-production-frankfurt-dc2",
        },
    )
    await heartbeat(api, agent_key, AGENT, ["tunnel"])
    await heartbeat(api, script_key, SCRIPT_AGENT, ["scripts"])

    tokens = {DEV: await api.make_user(DEV, DEV_PW), JANE: await api.make_user(JANE)}
    await api.make_user(OPS)
    await api.ok("POST", "/admin/roles", json={"name": ROLE, "max_duration": "12h"})
    await api.ok("POST", "/admin/roles", json={"name": "developers", "max_duration": "8h"})
    for resource in (WAREHOUSE, "production-db", "redis-session-cache-cluster-eu-west-1", FIREWALL):
        await api.ok("POST", f"/admin/roles/{ROLE}/resources", json={"resource": resource})
    await api.ok("POST", "/admin/roles/developers/resources", json={"resource": "production-db"})
    for email in (ADMIN, DEV, JANE, OPS):
        await api.ok("POST", f"/admin/roles/{ROLE}/users", json={"email": email})
    await api.ok("POST", "/admin/roles/developers/users", json={"email": DEV})

    await api.ok("POST", "/sessions", json={"duration": "4h"})  # the admin, from 127.0.0.1
    await api.ok("POST", "/sessions", tokens[DEV], json={"duration": "2h"}, source="127.0.0.2")
    await api.ok("POST", "/sessions", tokens[JANE], json={"duration": "1h"}, source="127.0.0.3")
    await api.ok("DELETE", "/sessions/current", tokens[JANE], source="127.0.0.3")
    await api.ok("POST", "/sessions", tokens[JANE], json={"duration": "90m"}, source="127.0.0.3")

    for cidr, description in (
        (
            "10.128.0.0/16",
            "GitHub Actions self-hosted runners in the eu-west-1 build VPC (OPS-4821)",
        ),
        ("0.0.0.0/0", "Public read replica: authentication by client certificate only"),
        ("2001:db8:abcd:12::/64", "Prometheus-blackbox-exporter-monitoring-range-eu-west-1-az-b"),
    ):
        body = {"resource": WAREHOUSE, "cidr": cidr, "description": description}
        await api.ok("POST", "/admin/rules", json={**body, "allow_any": cidr.endswith("/0")})
    for cidr, note in (
        ("198.51.100.0/24", "External auditor: Example Audit & Assurance LLP, SOC 2 Type II 2026"),
        ("203.0.113.77", "contractor-jan.kowalski@very-long-subcontractor-domain.example.org"),
    ):
        body = {"resource": WAREHOUSE, "cidr": cidr, "duration": "7d", "note": note}
        await api.ok("POST", "/admin/guests", json=body)


async def check_pages(page: Page, pages: list[tuple[str, str]], prefix: str) -> list[str]:
    problems = []
    for path, heading in pages:
        response = await page.goto(path)
        assert response is not None and response.status == 200, path
        await expect(page.get_by_role("heading", level=1)).to_have_text(heading)
        problems += [f"{path}: {p}" for p in await overflows(page)]
        slug = path.strip("/").replace("/", "-") or "my-access"
        await shot(page, f"layout-{prefix}-{slug}")
    return problems


async def test_every_page_fits_a_1280_px_window(api: Api, browser: Browser) -> None:
    await realistic_data(api)
    ctx, page = await page_at_1280(browser, api)
    await sign_in(page)
    # The data really is long: the test would prove nothing on short names.
    await page.goto("/admin/resources")
    row = page.locator(f'tr[data-resource="{WAREHOUSE}"]')
    await expect(row).to_contain_text(f"{EDGE_HOST}:")
    await expect(row).to_contain_text(f"{WAREHOUSE_HOST}:5432")
    await page.goto("/admin/audit")
    await expect(page.get_by_test_id("audit")).to_contain_text(WAREHOUSE_HOST)

    problems = await check_pages(page, ADMIN_PAGES, "admin")
    user_ctx, user = await page_at_1280(browser, api)
    await sign_in(user, DEV, DEV_PW)
    problems += await check_pages(user, USER_PAGES, "user")
    assert not problems, "\n".join(problems)

    # The action links stay where a click reaches them.
    await page.goto("/admin/resources")
    await row.get_by_role("link", name="Guest access").click()
    await expect(page).to_have_url(re.compile(r"/admin/guests\?resource="))
    await user_ctx.close()
    await ctx.close()


async def test_my_access_without_roles_tells_the_reader_what_to_do(
    api: Api, browser: Browser
) -> None:
    await api.make_user(NOBODY, NOBODY_PW)
    ctx, page = await page_at_1280(browser, api)
    await sign_in(page)  # the admin, in no role on a fresh install
    mine = page.get_by_test_id("my-resources")
    await expect(mine).to_contain_text("You are not in any role yet.")
    await expect(mine).to_contain_text("Add yourself to a role on the Roles page")
    await expect(mine).not_to_contain_text("Ask an EntryGuard admin")
    await mine.get_by_role("link", name="Roles page").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Roles")

    user_ctx, user = await page_at_1280(browser, api)
    await sign_in(user, NOBODY, NOBODY_PW)
    theirs = user.get_by_test_id("my-resources")
    await expect(theirs).to_contain_text("You are not in any role yet.")
    await expect(theirs).to_contain_text("Ask an EntryGuard admin to add you to one.")
    await expect(theirs.get_by_role("link")).to_have_count(0)
    await shot(user, "layout-user-no-roles")

    # In a role that gives no resources yet: the admin is sent to the role's page.
    await api.ok("POST", "/admin/roles", json={"name": "interns"})
    await api.ok("POST", "/admin/roles/interns/users", json={"email": ADMIN})
    await api.ok("POST", "/admin/roles/interns/users", json={"email": NOBODY})
    await page.goto("/")
    await expect(mine).to_contain_text("Your roles give you no resources yet.")
    await expect(mine.get_by_role("link", name="Roles page")).to_have_attribute(
        "href", "/admin/roles"
    )
    await user.reload()
    await expect(theirs).to_contain_text("Your roles give you no resources yet.")
    await expect(theirs).to_contain_text("Ask an EntryGuard admin")
    await user_ctx.close()
    await ctx.close()
