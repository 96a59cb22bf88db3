"""The `eg` user flow on the real PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ControlPlane
from tests.e2e.test_cli_flow import Eg, login

pytestmark = pytest.mark.pg


def test_session_start_on_postgres(control_plane_pg: ControlPlane, tmp_path: Path) -> None:
    cp = control_plane_pg
    eg = Eg(tmp_path)
    login(eg, cp.url, cp.admin_email, cp.admin_password)
    eg.ok("admin", "apikey", "create", "pg-agent", "--scope", "agent:connect")
    eg.ok(
        "admin",
        "resource",
        "create",
        "pg-db",
        "--type",
        "tunnel",
        "--agent",
        "pg-agent",
        "--target",
        "10.9.0.1:5432",
    )
    eg.ok("admin", "role", "create", "ops", "--max-duration", "2h")
    eg.ok("admin", "role", "add-resource", "ops", "pg-db")
    eg.ok("admin", "role", "add-user", "ops", cp.admin_email)
    out = eg.ok("session", "start", "--duration", "4")
    assert re.fullmatch(
        r"✓ Session started\n\nTunnel resources:\n  pg-db  127\.0\.0\.1:\d+\n\nSession expires in 2h 0m\n"
        r"Duration capped at 2h 0m by your role's maximum \(asked for 4h 0m\)\n",
        out,
    ), out
    assert eg.ok("admin", "audit", "--verify").startswith("✓ audit chain intact")
