"""`eg` pieces that need no server: URLs, targets, the credentials file, output shapes,
and the translation of HTTP and transport failures into one line."""

from __future__ import annotations

import json
import os
import socket
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from entryguard.cli import credentials
from entryguard.cli.client import ApiClient, describe_transport_error, normalize_server, segment
from entryguard.cli.commands_session import NO_RESOURCES, resource_lines, started_lines
from entryguard.cli.errors import CliError, UsageError
from entryguard.cli.main import run
from entryguard.cli.output import clean, format_hours, one_line
from entryguard.cli.validation import check_cidr, parse_target


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/api/v1", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/api/v1/", "http://127.0.0.1:8080"),
        ("HTTPS://eg.example.com/entryguard/api/v1", "https://eg.example.com/entryguard"),
        (" https://[::1]:8443 ", "https://[::1]:8443"),
    ],
)
def test_server_url_with_or_without_api_prefix(given: str, expected: str) -> None:
    assert normalize_server(given) == expected


@pytest.mark.parametrize(
    "bad", ["127.0.0.1:8080", "ftp://x", "http://", "http://h:99999", "http://h/?a=1", ""]
)
def test_bad_server_urls_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError):
        normalize_server(bad)


def test_targets() -> None:
    assert parse_target("10.0.1.50:5432") == ("10.0.1.50", 5432)
    assert parse_target("db.internal:5432") == ("db.internal", 5432)
    assert parse_target("[2001:db8::1]:443") == ("2001:db8::1", 443)
    for bad in ["10.0.1.50", "10.0.1.50:0", "10.0.1.50:70000", ":5432", "2001:db8::1:443", "h:p"]:
        with pytest.raises(UsageError):
            parse_target(bad)


def test_cidr_check_uses_the_server_rules() -> None:
    assert check_cidr("10.0.0.0/8", False) == "10.0.0.0/8"
    assert check_cidr("0.0.0.0/0", True) == "0.0.0.0/0"
    for bad in [
        "10.0.0.5/8",
        "010.0.0.1",
        "10.0.0.0/33",
        "not-an-ip",
        "10.0.0.0/8;rm -rf /",
        "",
        "0.0.0.0/0",
    ]:
        with pytest.raises(UsageError):
            check_cidr(bad, False)


def test_path_segments_are_escaped() -> None:
    assert segment("a/b") == "a%2Fb"
    assert segment("..") == "%2E%2E"
    assert segment("alice@example.com") == "alice%40example.com"


def test_credentials_file_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EG_CONFIG_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    creds = credentials.Credentials(
        server="http://h:1", token="egs_x", email="a@b", expires_at=None
    )
    path = credentials.save(creds)
    assert path == tmp_path / "xdg" / "entryguard" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {
        "server": "http://h:1",
        "token": "egs_x",
        "email": "a@b",
    }
    assert credentials.load() == creds
    # EG_CONFIG_DIR wins over XDG_CONFIG_HOME.
    monkeypatch.setenv("EG_CONFIG_DIR", str(tmp_path / "cfg"))
    assert credentials.load() is None
    credentials.save(creds)
    assert os.listdir(tmp_path / "cfg") == ["credentials.json"]
    assert credentials.delete() and not credentials.delete()


def test_damaged_credentials_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EG_CONFIG_DIR", str(tmp_path))
    (tmp_path / "credentials.json").write_text("{not json")
    with pytest.raises(CliError, match="damaged"):
        credentials.load()


def _session(seconds: int) -> dict[str, object]:
    start = datetime(2026, 11, 22, 21, 0, tzinfo=UTC)
    return {
        "started_at": start.isoformat(),
        "expires_at": (start + timedelta(seconds=seconds)).isoformat(),
        "ip": "127.0.0.1",
    }


def test_session_started_shape() -> None:
    data = {
        "session": _session(4 * 3600),
        "resources": [
            {"name": "production-db", "type": "tunnel", "connection": "127.0.0.1:41000"},
            {"name": "cache", "type": "tunnel", "connection": "127.0.0.1:41001"},
            {"name": "office-fw", "type": "script", "connection": None},
        ],
        "capped": False,
        "requested_seconds": 4 * 3600,
    }
    assert started_lines(data) == [
        "",
        "Tunnel resources:",
        "  production-db  127.0.0.1:41000",
        "  cache          127.0.0.1:41001",
        "",
        "Script resources:",
        "  office-fw",
        "",
        "Session expires in 4h 0m",
    ]
    capped = {
        **data,
        "session": _session(8 * 3600),
        "capped": True,
        "requested_seconds": 24 * 3600,
        "resources": [],
    }
    assert started_lines(capped) == [
        "",
        NO_RESOURCES,
        "",
        "Session expires in 8h 0m",
        "Duration capped at 8h 0m by your role's maximum (asked for 24h 0m)",
    ]


def test_resource_names_cannot_carry_escape_sequences() -> None:
    lines = resource_lines([{"name": "db\x1b[2J", "type": "tunnel", "connection": "127.0.0.1:1"}])
    assert "\x1b" not in "".join(lines)
    assert clean(None) == "-" and one_line("a\n  b\r\nc") == "a b c"
    assert format_hours(90) == "1m 30s" and format_hours(30 * 3600 + 60) == "30h 1m"


def _client(handler: httpx.MockTransport, **kw: object) -> ApiClient:
    api = ApiClient("http://eg.test", "egs_t", **kw)  # type: ignore[arg-type]
    api._http = httpx.Client(base_url="http://eg.test/api/v1", transport=handler)
    return api


def _answer(
    status: int, body: object | None = None, text: str | None = None
) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handle)


def test_server_errors_become_one_line() -> None:
    err = {"error": {"code": "admin_required", "message": "this needs an admin:\nask one"}}
    with pytest.raises(CliError) as e403:
        _client(_answer(403, err)).get("/admin/users")
    assert e403.value.message == "this needs an admin: ask one" and e403.value.exit_code == 1
    with pytest.raises(CliError) as e401:
        _client(
            _answer(401, {"error": {"code": "unauthorized", "message": "x"}}), token_source="login"
        ).get("/x")
    assert e401.value.message == "not logged in or your login expired: run `eg login`"
    with pytest.raises(CliError) as e401env:
        _client(
            _answer(
                401, {"error": {"code": "invalid_api_key", "message": "this API key was revoked"}}
            ),
            token_source="env",
        ).get("/x")
    assert e401env.value.message == "the token in EG_TOKEN was refused: this API key was revoked"
    with pytest.raises(CliError) as html:
        _client(_answer(502, text="<html>bad gateway</html>")).get("/x")
    assert "HTTP 502" in html.value.message and html.value.transient
    assert _client(_answer(204)).post("/auth/logout") is None


def test_connection_refused_message() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with ApiClient(url, "t") as api, pytest.raises(CliError) as exc:
        api.get("/auth/whoami")
    assert exc.value.message == (
        f"cannot reach the EntryGuard server at {url}: connection refused — "
        "is it running? (set --server or EG_SERVER)"
    )
    assert describe_transport_error(httpx.ReadTimeout("slow"), url).endswith(
        "(set --server or EG_SERVER)"
    )


def test_usage_errors_exit_2_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["session", "start", "--duration", "nan"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: Invalid value for '--duration'")
    assert run(["admin", "rule", "add", "db", "10.0.0.5/8"]) == 2
    assert "host bits are set" in capsys.readouterr().err
    assert run(["no-such-command"]) == 2
    assert run([]) == 0 and "Usage: eg" in capsys.readouterr().out
    assert run(["admin", "rule", "add", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--allow-any" in out and "Examples:" in out


def test_profiles_are_files_beside_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EG_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("EG_PROFILE", raising=False)
    admin = credentials.Credentials(server="http://h:1", token="egs_a", email="admin@x")
    dev = credentials.Credentials(server="http://h:1", token="egs_d", email="dev@x")
    # A login saved before profiles existed is the default profile, unchanged.
    (tmp_path / "credentials.json").write_text(
        json.dumps({"server": "http://h:1", "token": "egs_a", "email": "admin@x"})
    )
    try:
        assert credentials.load() == admin
        credentials.set_profile("dev")
        assert credentials.load() is None
        assert credentials.save(dev) == tmp_path / "credentials-dev.json"
        assert credentials.load() == dev and credentials.load("default") == admin
        assert credentials.delete() and credentials.load() is None
        assert credentials.load("default") == admin
        credentials.set_profile(None)
        monkeypatch.setenv("EG_PROFILE", "ops")
        assert credentials.active_profile() == "ops"
        assert credentials.credentials_path() == tmp_path / "credentials-ops.json"
        for bad in ["../x", "a/b", "", ".hidden", "x" * 65, "a b"]:
            with pytest.raises(UsageError):
                credentials.set_profile(bad)
    finally:
        credentials.set_profile(None)
