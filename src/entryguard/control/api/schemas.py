"""Request bodies; sizes are bounded so no request can make the server hold a novel."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(Body):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)


class SessionStartIn(Body):
    duration: str = Field(default="4", max_length=32)


class UserCreateIn(Body):
    email: str = Field(max_length=254)
    password: str | None = Field(default=None, max_length=1024)
    is_admin: bool = False


class RoleCreateIn(Body):
    name: str = Field(max_length=256)
    max_duration: str = Field(default="8h", max_length=32)


class RoleResourceIn(Body):
    resource: str = Field(max_length=256)


class RoleUserIn(Body):
    email: str = Field(max_length=254)


class ApiKeyCreateIn(Body):
    name: str = Field(max_length=256)
    scopes: list[str] = Field(max_length=8)
    expires_in: str | None = Field(default=None, max_length=32)


class ResourceCreateIn(Body):
    name: str = Field(max_length=256)
    type: str = Field(max_length=16)
    agent: str = Field(max_length=256)
    provider: str = Field(default="AGENT", max_length=16)
    target_host: str | None = Field(default=None, max_length=300)
    target_port: int | None = None
    script_dir: str | None = Field(default=None, max_length=1100)


class RuleCreateIn(Body):
    resource: str = Field(max_length=256)
    cidr: str = Field(max_length=100)
    description: str | None = Field(default=None, max_length=300)
    allow_any: bool = False


class GuestCreateIn(Body):
    resource: str = Field(max_length=256)
    cidr: str = Field(max_length=100)
    duration: str = Field(max_length=32)
    note: str | None = Field(default=None, max_length=300)
    allow_any: bool = False


class HeartbeatIn(Body):
    name: str = Field(max_length=64)
    version: str = Field(default="", max_length=32)
    hostname: str = Field(default="", max_length=255)
    os: str = Field(default="", max_length=64)
    modes: list[str] = Field(default_factory=list, max_length=4)
    tunnel_connected: bool = False
