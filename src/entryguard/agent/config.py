"""eg-agent's config file: strict YAML (an unknown or misspelled key is an error naming it).

frp once shipped an auth bypass because a misspelled key was silently ignored; here
every key is known or the agent refuses to start.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from entryguard.durations import DurationError, parse_duration
from entryguard.errors import Invalid
from entryguard.mux import DEFAULT_LINK_MEMORY, DEFAULT_MAX_STREAMS
from entryguard.net import CidrError, IPNetwork, parse_cidr
from entryguard.relay.limits import LinkLimits, format_size, parse_size


def default_config_path() -> Path:
    env = os.environ.get("EG_AGENT_CONFIG")
    if env:
        return Path(env)
    if sys.platform == "win32":
        return Path(r"C:\eg-agent\config.yml")
    return Path("/etc/eg-agent/config.yml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSection(_Strict):
    url: str = Field(
        description="The control plane's API, e.g. https://entryguard.example.com/api/v1"
    )
    api_key: str = Field(description="An API key with the agent:connect scope (eg_…)")
    ca_file: str | None = Field(
        default=None, description="CA bundle to trust for https (self-signed setups)"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        v = v.rstrip("/")
        return v if v.endswith("/api/v1") else v + "/api/v1"

    @field_validator("api_key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not v.startswith("eg_") or v.count("_") < 2:
            raise ValueError(
                "must be an EntryGuard API key (eg_…): create one with "
                "`eg admin apikey create NAME --scope agent:connect`"
            )
        return v


class AgentSection(_Strict):
    name: str = Field(min_length=1, max_length=64, description="Shown in `eg admin agents`")


class TunnelSection(_Strict):
    enabled: bool = False
    edge_url: str | None = Field(default=None, description="ws:// or wss:// address of the edge")
    allowed_targets: list[str] | None = Field(
        default=None, description="Local limit on what may be dialed (CIDRs)"
    )
    ca_file: str | None = Field(default=None, description="CA bundle to trust for wss")
    link_memory: str = Field(
        default=format_size(DEFAULT_LINK_MEMORY),
        description="Bytes the edge may make the agent hold for all streams together "
        "(e.g. 64MiB); windows shrink to fit when many streams are busy",
    )
    max_streams: int = Field(
        default=DEFAULT_MAX_STREAMS,
        description="Streams open at once on the link; the edge's OPEN past it is refused",
    )

    @field_validator("link_memory", mode="before")
    @classmethod
    def _link_memory(cls, v: object) -> str:
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise ValueError("must be a size such as 64MiB")
        try:
            LinkLimits(link_memory=parse_size(str(v)))
        except ValueError as exc:
            raise ValueError(str(exc)) from exc
        return str(v)

    @field_validator("max_streams", mode="before")
    @classmethod
    def _max_streams(cls, v: object) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("must be a whole number of streams, e.g. 16384")
        try:
            LinkLimits(max_streams=v)
        except ValueError as exc:
            raise ValueError(str(exc)) from exc
        return v

    def link_limits(self) -> LinkLimits:
        return LinkLimits(link_memory=parse_size(self.link_memory), max_streams=self.max_streams)

    @field_validator("edge_url")
    @classmethod
    def _edge(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v.startswith(("http://", "https://")):
            raise ValueError(
                "must be ws:// or wss://, not http(s):// (e.g. wss://edge.example.com)"
            )
        if not v.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        return v.rstrip("/")

    @field_validator("allowed_targets")
    @classmethod
    def _targets(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for t in v:
            try:
                parse_cidr(str(t), allow_any=True)
            except CidrError as exc:
                raise ValueError(str(exc)) from exc
        return [str(t) for t in v]

    def target_networks(self) -> list[IPNetwork] | None:
        if self.allowed_targets is None:
            return None
        return [parse_cidr(t, allow_any=True) for t in self.allowed_targets]


class ScriptsSection(_Strict):
    enabled: bool = False
    allowed_dirs: list[str] = Field(default_factory=list)
    timeout: str = "30s"

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: str | int) -> str:
        try:
            parse_duration(str(v), bare_unit="s")
        except DurationError as exc:
            raise ValueError(str(exc)) from exc
        return str(v)

    @property
    def timeout_seconds(self) -> int:
        return parse_duration(self.timeout, bare_unit="s")


class AgentConfig(_Strict):
    server: ServerSection
    agent: AgentSection
    tunnel: TunnelSection = TunnelSection()
    scripts: ScriptsSection = ScriptsSection()

    @property
    def modes(self) -> list[str]:
        return [
            m
            for m, on in (("tunnel", self.tunnel.enabled), ("scripts", self.scripts.enabled))
            if on
        ]


class ConfigError(Invalid):
    """The config file is missing or invalid; the message names the key and the fix."""

    code = "invalid_config"


def _describe(path: Path, exc: ValidationError) -> str:
    msgs = []
    for e in exc.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            msgs.append(f"unknown key {key!r} (check the spelling)")
        elif e["type"] == "missing" or (e["type"] == "model_type" and e.get("input") is None):
            msgs.append(f"missing key {key!r}" if e["type"] == "missing" else f"{key!r} is empty")
        else:
            msg = str(e["msg"]).removeprefix("Value error, ")
            msgs.append(f"{key}: {msg}")
    return f"{path}: " + "; ".join(msgs)


def parse_config(data: Any, path: Path) -> AgentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping with server, agent, tunnel, scripts")
    try:
        cfg = AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(path, exc)) from None
    if cfg.tunnel.enabled and not cfg.tunnel.edge_url:
        raise ConfigError(f"{path}: tunnel.enabled is true but tunnel.edge_url is missing")
    # A config with no mode enabled is valid (it is what `eg-agent init` writes before a
    # tunnel: or scripts: section is added); `run` and `check` refuse it, saying so.
    return cfg


def load_config(path: Path) -> AgentConfig:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"no config file at {path}: run `eg-agent init` or pass --config"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_config(data, path)


def dump_config(cfg: dict[str, Any]) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
