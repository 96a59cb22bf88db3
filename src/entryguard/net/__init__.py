"""IP and CIDR handling shared by the control plane, the edge and the agent."""

from entryguard.net.allowlist import AllowList
from entryguard.net.cidr import (
    CidrError,
    IPNetwork,
    normalize_ip,
    parse_cidr,
    parse_ip,
)

__all__ = ["AllowList", "CidrError", "IPNetwork", "normalize_ip", "parse_cidr", "parse_ip"]
