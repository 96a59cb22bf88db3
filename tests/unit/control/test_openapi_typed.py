"""The REST API's OpenAPI document types the answers clients parse (``eg``, agents, edges)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from entryguard.control.app import create_app
from entryguard.control.db.database import Database, sqlite_url_for
from entryguard.control.settings import Settings

METHODS = ("get", "post", "put", "patch", "delete")


def _typed(schema: dict[str, Any]) -> bool:
    """A ``$ref`` to a model, or an inline schema that says what it holds."""
    if "$ref" in schema:
        return True
    if schema.get("type") == "object":
        return bool(schema.get("properties"))
    if schema.get("type") == "array":
        return _typed(schema.get("items", {}))
    return bool(schema.get("type") or schema.get("anyOf") or schema.get("oneOf"))


def _answer_typed(op: dict[str, Any]) -> bool:
    ok = {code: r for code, r in op.get("responses", {}).items() if code.startswith("2")}
    if not ok:
        return False
    for code, response in ok.items():
        content = response.get("content")
        if code == "204" and not content:
            continue  # no body by definition
        schema = (content or {}).get("application/json", {}).get("schema", {})
        if not _typed(schema):
            return False
    return True


async def test_openapi_types_the_answers(tmp_path: Path) -> None:
    url = sqlite_url_for(tmp_path)
    db = Database(url)
    app = create_app(Settings(database_url=url, data_dir=tmp_path), db, background=False)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client:
            r = await client.get("/api/v1/openapi.json")
    finally:
        await db.dispose()
    assert r.status_code == 200, r.text
    doc = r.json()
    ops = [
        (method.upper(), path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]
    assert len(ops) >= 40, f"only {len(ops)} operations: is a router missing?"
    untyped = [f"{m} {p}" for m, p, op in ops if not _answer_typed(op)]
    share = 1 - len(untyped) / len(ops)
    assert share >= 0.95, (
        f"{share:.0%} of {len(ops)} operations type their 2xx answer (need 95%); "
        f"untyped: {', '.join(untyped)}"
    )
