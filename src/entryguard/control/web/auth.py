"""Dashboard sign-in: the login token (``egs_…``) lives in an HttpOnly cookie.

The cookie is the same credential ``eg login`` gets, so it expires, is revoked on
sign-out and dies with a disabled user exactly like a CLI login. Pages ask for the
signed-in user with :func:`signed_in` (a redirect to the sign-in page otherwise) or
:func:`admin` (a 403 page for everyone else: the server refuses, not only the menu).
"""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData

from entryguard.control.api import auth as auth_api
from entryguard.control.api.deps import client_ip, ctx
from entryguard.control.auth.principal import Principal, authenticate
from entryguard.control.services import users
from entryguard.control.web import csrf
from entryguard.control.web.render import (
    FORM,
    Flash,
    FormState,
    redirect,
    render_page,
    set_cookie,
    text_values,
)
from entryguard.errors import EntryGuardError, Forbidden, Unauthorized

SESSION_COOKIE = "eg_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

router = APIRouter(include_in_schema=False)


class SignInRequired(Unauthorized):
    """No valid session cookie: the page redirects to the sign-in form."""

    def __init__(self) -> None:
        super().__init__("sign in required")


class AdminRequired(Forbidden):
    """A signed-in user who is not an admin asked for an admin page."""

    def __init__(self, p: Principal) -> None:
        super().__init__("admins only")
        self.principal = p


class CsrfFailed(Forbidden):
    """A form arrived without the token of the session that rendered it."""

    def __init__(self, p: Principal | None) -> None:
        super().__init__("invalid CSRF token")
        self.principal = p


async def session_principal(request: Request) -> Principal | None:
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret or not secret.startswith("egs_"):
        return None  # only login tokens: an API key never rides in a cookie
    try:
        async with ctx(request).db.read() as s:
            p = await authenticate(s, secret)
    except EntryGuardError:
        return None
    request.state.csrf_token = csrf.session_token(secret)
    return dataclasses.replace(p, credential="cookie")


async def cookie_principal(request: Request) -> Principal | None:
    """The REST API's fallback when no bearer token is sent (``app.state.cookie_principal``).

    The dashboard's scripts call the API with the cookie; a call that changes something
    must also carry the session's CSRF token in a header, which no other site can read.
    """
    p = await session_principal(request)
    if p is None:
        return None
    if request.method not in SAFE_METHODS and not csrf.valid(
        request.state.csrf_token, request.headers.get(csrf.HEADER)
    ):
        return None
    return p


async def signed_in(request: Request) -> Principal:
    p = await session_principal(request)
    if p is None:
        raise SignInRequired()
    return p


async def admin(p: Principal = Depends(signed_in)) -> Principal:
    if "admin" not in p.scopes:
        raise AdminRequired(p)
    return p


def _posted_token(form: FormData) -> str | None:
    given = form.get(csrf.FIELD)
    return given if isinstance(given, str) else None


async def checked_form(request: Request, p: Principal) -> FormData:
    """The submitted form, after checking its CSRF token against the session's."""
    form = await request.form()
    if not csrf.valid(request.state.csrf_token, _posted_token(form)):
        raise CsrfFailed(p)
    return form


def safe_next(target: str | None) -> str:
    """Only a path on this site: ``//evil.example`` and ``https://…`` would be an open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def signin_redirect(request: Request) -> RedirectResponse:
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/signin?next={quote(path, safe='')}", status_code=303)


def _signin_page(
    request: Request, form: FormState, next_url: str, status: int = 200
) -> HTMLResponse:
    token = request.cookies.get(csrf.PRESESSION_COOKIE) or csrf.new_presession_token()
    request.state.csrf_token = token
    response = render_page(
        request,
        "signin.html",
        p=None,
        title="Sign in",
        form=form,
        next_url=next_url,
        status=status,
    )
    set_cookie(response, request, csrf.PRESESSION_COOKIE, token, 3600, path="/signin")
    return response


@router.get("/login")
async def login_alias(next: str | None = None) -> RedirectResponse:
    """``/login`` is where people guess the sign-in page is: send them there (with ``next``)."""
    target = "/signin"
    if next is not None:
        target += f"?next={quote(safe_next(next), safe='')}"
    return RedirectResponse(target, status_code=303)


@router.get("/signin")
async def signin_form(request: Request, next: str | None = None) -> Response:
    if await session_principal(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _signin_page(request, FormState(), safe_next(next))


@router.post("/signin")
async def signin(request: Request) -> Response:
    form = await request.form()
    values = text_values(form)
    next_url = safe_next(values.get("next"))
    state = FormState(values={"email": values.get("email", "")[:254]})
    if not csrf.valid(request.cookies.get(csrf.PRESESSION_COOKIE), _posted_token(form)):
        state.errors[FORM] = "The sign-in form expired. Please sign in again."
        return _signin_page(request, state, next_url, 403)
    email, password = values.get("email", "").strip(), values.get("password", "")
    if not email:
        state.errors["email"] = "Enter your email address."
    if not password:
        state.errors["password"] = "Enter your password."
    if state.failed:
        return _signin_page(request, state, next_url, 400)
    c = ctx(request)
    async with c.db.write() as s:
        result = await users.login(
            s, email[:254], password[:1024], client_ip(request), c.settings.login_ttl_seconds
        )
    if result is None:
        state.errors[FORM] = "Wrong email or password, or the account is disabled."
        return _signin_page(request, state, next_url, 401)
    secret, _token, _user = result
    response = RedirectResponse(next_url, status_code=303)
    set_cookie(response, request, SESSION_COOKIE, secret, c.settings.login_ttl_seconds)
    response.delete_cookie(csrf.PRESESSION_COOKIE, path="/signin")
    return response


@router.post("/signout")
async def signout(request: Request, p: Principal = Depends(signed_in)) -> Response:
    await checked_form(request, p)
    await auth_api.logout(request, p)  # revokes the login token, audited as auth.logout
    response = redirect(request, "/signin", Flash("info", "You are signed out."))
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
