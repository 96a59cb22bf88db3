"""Response bodies of the REST API (docs/api.md); the request bodies are in schemas.py.

The row views (``UserView``, ``SessionView``…) come from the services, which the
dashboard renders too; here are the envelopes the API wraps them in. Each route
declares its model as its return type, so ``/api/v1/openapi.json`` types its answer.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from entryguard.control.services.commands import AgentCommandView, CommandView
from entryguard.control.services.edge_sync import ChangeRow
from entryguard.control.services.roles import RoleView
from entryguard.control.services.views import (
    AdminResourceView,
    ApiKeyView,
    GuestView,
    ResourceView,
    RuleView,
    SessionView,
    UserView,
)

T = TypeVar("T")


class Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class Items(Out, Generic[T]):
    """A list answer: ``{"items": [...]}``."""

    items: list[T]


class Ok(Out):
    ok: bool


# ---- auth ------------------------------------------------------------------------------


class LoginOut(Out):
    token: str = Field(description="The login token (a bearer secret, shown once)")
    expires_at: str | None
    user: UserView


class OrganizationOut(Out):
    id: int
    name: str


class WhoamiOut(Out):
    user: UserView
    organization: OrganizationOut | None
    scopes: list[str]
    credential: str = Field(description='"login", "api_key" or "cookie"')
    api_key: str | None = Field(description="The API key's name, when one was used")
    ip: str = Field(description="The caller's IP as the control plane sees it")


# ---- sessions --------------------------------------------------------------------------


class SessionOut(Out):
    session: SessionView


class SessionStartOut(Out):
    session: SessionView
    resources: list[ResourceView]
    capped: bool = Field(description="The request was longer than the user's roles allow")
    requested_seconds: int
    max_duration_seconds: int


class CurrentSessionOut(Out):
    session: SessionView | None
    resources: list[ResourceView]


class SessionRevokeOut(Out):
    session: SessionView
    revoked: bool = Field(description="Whether this call ended it (false: it had already ended)")


# ---- directory -------------------------------------------------------------------------


class UserOut(Out):
    user: UserView


class UserCreatedOut(Out):
    user: UserView
    password: str | None = Field(
        default=None, description="The generated password (shown once); absent when one was given"
    )


class RoleOut(Out):
    role: RoleView


class ApiKeyOut(Out):
    apikey: ApiKeyView


class ApiKeyCreatedOut(Out):
    apikey: ApiKeyView
    key: str = Field(description="The API key itself: shown once, stored hashed")


# ---- access ----------------------------------------------------------------------------


class ResourceOut(Out):
    resource: AdminResourceView


class RuleOut(Out):
    rule: RuleView


class GuestOut(Out):
    guest: GuestView


class GuestRevokeOut(Out):
    guest: GuestView
    revoked: bool = Field(description="Whether this call ended it (false: it had already ended)")


class ChainCheckOut(Out):
    ok: bool
    checked: int
    bad_id: int | None
    message: str


# ---- agents ----------------------------------------------------------------------------


class AgentTunnel(Out):
    id: int
    name: str
    port: int | None
    target_host: str | None
    target_port: int | None


class NextCommandOut(Out):
    command: AgentCommandView | None = Field(description="null: nothing to run yet")


class CommandOut(Out):
    command: CommandView


class CommandRetryOut(Out):
    command: CommandView
    retry_of: int


# ---- edge ------------------------------------------------------------------------------


class ChangesOut(Out):
    revision: int = Field(description="Ask for changes since this revision next")
    changes: list[ChangeRow]
