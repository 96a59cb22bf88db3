"""The REST client ``eg`` talks through (docs/api.md), and the translation of every
transport or HTTP failure into one sentence for the user.

As httpcore does at its I/O boundary, nothing below lets a raw socket, TLS or JSON
error escape: callers get parsed JSON or a :class:`CliError`.
"""

from __future__ import annotations

import socket
import ssl
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from entryguard import __version__
from entryguard.cli import credentials
from entryguard.cli.errors import CliError, UsageError
from entryguard.cli.hints import with_hint
from entryguard.cli.output import one_line

API_PREFIX = "/api/v1"
DEFAULT_SERVER = "http://127.0.0.1:8080"
TokenSource = Literal["login", "env"]


def not_logged_in() -> str:
    """The refusal of a login token the server no longer knows (names the profile)."""
    return f"not logged in or your login expired: run `eg login{credentials.profile_flag()}`"


def normalize_server(url: str) -> str:
    """``http://host:8080``, ``http://host:8080/`` and ``http://host:8080/api/v1`` are the
    same server; return the base URL without a trailing slash or ``/api/v1``."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise UsageError(f"invalid server URL {text!r}: expected http://HOST:PORT or https://HOST")
    if parts.query or parts.fragment:
        raise UsageError(f"invalid server URL {text!r}: no ?query or #fragment, please")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise UsageError(f"invalid server URL {text!r}: bad port") from exc
    path = parts.path.rstrip("/")
    if path.endswith(API_PREFIX):
        path = path[: -len(API_PREFIX)]
    return urlunsplit((parts.scheme.lower(), parts.netloc, path, "", ""))


def is_loopback_url(server: str) -> bool:
    host = (urlsplit(server).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def tls_context(ca_file: str | None) -> ssl.SSLContext | bool:
    """The system's trust store, or only the given CA (a self-signed EntryGuard CA)."""
    if not ca_file:
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError as exc:
        raise UsageError(f"CA file {ca_file} not found (from --ca-file or EG_CA_FILE)") from exc
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot use CA file {ca_file}: {one_line(str(exc))}") from exc


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    return chain


def describe_transport_error(exc: httpx.TransportError, server: str) -> str:
    """One sentence for a failure to talk to the server at all."""
    where = f"the EntryGuard server at {server}"
    hint = "(set --server or EG_SERVER)"
    chain = _causes(exc)
    for cause in chain:
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or cause.reason or "untrusted certificate"
            return (
                f"cannot verify the TLS certificate of {where}: {reason}; "
                "pass --ca-file (or set EG_CA_FILE) with the CA that signed it"
            )
        if isinstance(cause, ssl.SSLError):
            reason = cause.reason or one_line(str(cause))
            return (
                f"TLS handshake with {where} failed ({reason}): is it serving https on that port?"
            )
    for cause in chain:
        if isinstance(cause, ConnectionRefusedError):
            return f"cannot reach {where}: connection refused — is it running? {hint}"
        if isinstance(cause, socket.gaierror):
            host = urlsplit(server).hostname
            return f"cannot reach {where}: host {host} not found {hint}"
    if isinstance(exc, httpx.TimeoutException):
        return f"{where} did not answer in time: is it running and reachable? {hint}"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot reach {where}: {one_line(str(exc)) or 'connection failed'} {hint}"
    detail = one_line(str(exc)).rstrip(".") or type(exc).__name__
    tls_hint = " — is it https?" if server.startswith("http://") else ""
    return f"lost the connection to {where}: {detail}{tls_hint}"


class ApiClient:
    """Calls ``SERVER/api/v1/...`` with the bearer token; returns parsed JSON."""

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        token_source: TokenSource | None = None,
        ca_file: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.server = server
        self.token = token
        self.token_source = token_source
        headers = {"User-Agent": f"eg/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=server + API_PREFIX,
            headers=headers,
            verify=tls_context(ca_file),
            timeout=timeout,
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        login: bool = False,
    ) -> Any:
        """Send one request; ``login`` marks the password exchange (its 401 means a wrong password)."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._http.request(method, path, json=json, params=query)
        except httpx.TransportError as exc:
            raise CliError(describe_transport_error(exc, self.server), transient=True) from exc
        except httpx.InvalidURL as exc:
            raise CliError(f"invalid request URL: {one_line(str(exc))}") from exc
        if resp.status_code == 204:
            return None
        body = _json_or_none(resp)
        if resp.is_success and body is not None:
            return body
        err = body.get("error") if isinstance(body, dict) else None
        code = err.get("code") if isinstance(err, dict) else None
        raise CliError(
            self._error_message(resp, err, login),
            transient=resp.status_code >= 500,
            code=code if isinstance(code, str) else None,
        )

    def _error_message(self, resp: httpx.Response, err: Any, login: bool) -> str:
        status = resp.status_code
        message: str | None = None
        if isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"].strip():
            code = err.get("code")
            message = with_hint(code if isinstance(code, str) else None, one_line(err["message"]))
        if status == 401 and not login:
            if self.token_source == "env":
                return f"the token in EG_TOKEN was refused: {message or 'unauthorized'}"
            return not_logged_in()
        if message is not None:
            return message
        if resp.is_success:
            return f"{self.server} answered HTTP {status} without JSON: is it an EntryGuard server?"
        return (
            f"{self.server} answered HTTP {status} {resp.reason_phrase} without an EntryGuard "
            "error: is it an EntryGuard server? (check --server or EG_SERVER)"
        )


def _json_or_none(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def segment(value: str | int) -> str:
    """One URL path segment: everything escaped, and ``.``/``..`` never read as dot segments."""
    text = quote(str(value), safe="")
    return text.replace(".", "%2E") if text in (".", "..") else text
