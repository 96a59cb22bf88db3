"""`entryguard settings` and a replica's start, as real processes on a PostgreSQL
database of their own: the setting is changed before any replica ran, listed as JSON,
and a replica whose flag contradicts it refuses to start with one line."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import BIN, free_port

pytestmark = pytest.mark.pg


def entryguard(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EG_")}
    return subprocess.run(
        [str(BIN / "entryguard"), *args],
        env={**env, "EG_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_settings_set_and_list_and_a_contradicting_replica(pg_url: str) -> None:
    # On a database no replica has used yet: `set` applies the migrations and stores it.
    r = entryguard(pg_url, "settings", "set", "tunnel-ports", "42000-42999")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "✓ tunnel-ports = 42000-42999 (each replica uses it from its next start)\n"
    r = entryguard(pg_url, "settings", "list", "--json")
    assert r.returncode == 0, r.stderr
    items = {i["key"]: i for i in json.loads(r.stdout)["items"]}
    assert items["tunnel-ports"]["value"] == "42000-42999" and items["tunnel-ports"]["stored"]
    assert items["public-host"] == {
        "key": "public-host",
        "value": "127.0.0.1",
        "default": "127.0.0.1",
        "stored": False,
        "updated_at": None,
    }
    # A replica given the old range refuses before it serves: exit 1, one line.
    r = entryguard(
        pg_url, "server", "--listen", f"127.0.0.1:{free_port()}", "--tunnel-ports", "41000-41999"
    )
    assert r.returncode == 1, r.stderr
    assert r.stderr == (
        "error: --tunnel-ports 41000-41999 contradicts the cluster setting tunnel-ports = "
        "42000-42999 stored in the database; change it with `entryguard settings set "
        "tunnel-ports 41000-41999` or drop the flag\n"
    )
    assert r.stdout == ""
