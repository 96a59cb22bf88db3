"""Strict IP/CIDR parsing.

Everything that admits traffic compares normalised addresses: an IPv4-mapped IPv6
address (``::ffff:10.0.0.1``, what a dual-stack socket reports for an IPv4 peer) is
turned into the IPv4 address before any match, so a grant for ``10.0.0.1/32`` covers
it and a grant for ``::ffff:0:0/96`` cannot be used to sidestep IPv4 rules.
"""

from __future__ import annotations

import ipaddress
import re

from entryguard.errors import Invalid

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Only the characters an address or prefix can contain; anything else (spaces, ';',
# shell metacharacters, unicode digits) is refused before ipaddress sees it.
_ALLOWED = re.compile(r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$")
_V4_OCTET_LEADING_ZERO = re.compile(r"(^|\.)0[0-9]")


class CidrError(Invalid, ValueError):
    """The text is not a valid, canonical IP network."""

    code = "invalid_cidr"


def normalize_ip(ip: IPAddress) -> IPAddress:
    """Return the IPv4 address for an IPv4-mapped IPv6 address, else ``ip``."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_ip(text: str) -> IPAddress:
    """Parse a single address strictly and normalise it."""
    if not text or not _ALLOWED.match(text) or "/" in text:
        raise CidrError(f"invalid IP address {text!r}")
    if "." in text and ":" not in text and _V4_OCTET_LEADING_ZERO.search(text):
        raise CidrError(f"invalid IP address {text!r}: leading zeros are ambiguous")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError as exc:
        raise CidrError(f"invalid IP address {text!r}") from exc
    return normalize_ip(ip)


def parse_cidr(text: str, *, allow_any: bool = False) -> IPNetwork:
    """Parse ``text`` as a network: ``10.0.0.0/8``, ``203.0.113.5`` (= /32), ``2001:db8::/32``.

    Refused: host bits set (``10.0.0.5/8``), leading zeros (``010.0.0.1``), prefix
    out of range, empty or padded text, anything that is not an address, and a
    prefix of length 0 unless ``allow_any`` is given (opening a resource to the
    whole internet must be a deliberate act).
    """
    if not isinstance(text, str) or not text:
        raise CidrError("CIDR must not be empty")
    if text != text.strip() or not _ALLOWED.match(text):
        raise CidrError(f"invalid CIDR {text!r}: expected an address like 10.0.0.0/8")
    addr, _, prefix = text.partition("/")
    if prefix and len(prefix) > 1 and prefix.startswith("0"):
        raise CidrError(f"invalid CIDR {text!r}: leading zeros in the prefix length")
    base = parse_ip(addr) if not addr.lower().startswith("::ffff:") else None
    if base is None:
        # A v4-mapped network is stored as its IPv4 equivalent.
        mapped = parse_ip(addr)
        if prefix:
            plen = int(prefix)
            if plen < 96 or plen > 128:
                raise CidrError(f"invalid CIDR {text!r}: IPv4-mapped prefix must be /96../128")
            prefix = str(plen - 96)
        base = mapped
    try:
        net: IPNetwork = ipaddress.ip_network(
            f"{base}/{prefix}" if prefix else str(base), strict=True
        )
    except ValueError as exc:
        msg = str(exc)
        if "has host bits set" in msg:
            raise CidrError(
                f"invalid CIDR {text!r}: host bits are set (did you mean "
                f"{ipaddress.ip_network(f'{base}/{prefix}', strict=False)}?)"
            ) from exc
        raise CidrError(f"invalid CIDR {text!r}: {msg}") from exc
    if net.prefixlen == 0 and not allow_any:
        raise CidrError(
            f"{text} opens the resource to every address; pass --allow-any (allow_any) to confirm"
        )
    return net
