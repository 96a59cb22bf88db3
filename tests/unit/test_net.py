"""CIDR parsing and allowlist matching."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entryguard.net import AllowList, CidrError, parse_cidr, parse_ip
from entryguard.net.allowlist import Entry, ip_of


@pytest.mark.parametrize(
    "bad",
    [
        "10.0.0.5/8",
        "010.0.0.1",
        "10.0.0.0/33",
        "not-an-ip",
        "10.0.0.0/8;rm -rf /",
        "",
        "0.0.0.0/0",
        " 10.0.0.0/8",
        "10.0.0.0/8 ",
        "10.0.0.0/",
        "/8",
        "10.0.0.0/08",
        "1.2.3",
        "1.2.3.4.5",
        "::/0",
        "2001:db8::1/32",
        "10.0.0.0/8\n",
        "１０.0.0.0/8",
    ],
)
def test_bad_cidrs_refused(bad: str) -> None:
    with pytest.raises(CidrError):
        parse_cidr(bad)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("203.0.113.5", "203.0.113.5/32"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("::ffff:10.0.0.1", "10.0.0.1/32"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("0.0.0.0/0", None),
    ],
)
def test_good_cidrs(text: str, canonical: str | None) -> None:
    if canonical is None:
        assert str(parse_cidr(text, allow_any=True)) == "0.0.0.0/0"
    else:
        assert str(parse_cidr(text)) == canonical


def test_zero_prefix_needs_allow_any_and_says_so() -> None:
    with pytest.raises(CidrError, match="allow-any"):
        parse_cidr("0.0.0.0/0")


def test_v4_mapped_addresses_match_v4_grants() -> None:
    allow = AllowList([Entry("1", parse_cidr("10.0.0.0/8"), None)])
    assert allow.covers(ip_of("::ffff:10.1.2.3"), 0)
    assert allow.covers(parse_ip("10.9.9.9"), 0)
    assert not allow.covers(ip_of("::ffff:11.0.0.1"), 0)
    assert not allow.covers(ip_of("::1"), 0)


def test_expiry_on_the_callers_clock() -> None:
    allow = AllowList(
        [Entry("1", parse_cidr("127.0.0.2/32"), 100.0), Entry("2", parse_cidr("127.0.0.0/8"), None)]
    )
    ip = parse_ip("127.0.0.2")
    assert allow.covers(ip, 99.9)
    allow.remove("2")
    assert not allow.covers(ip, 100.0)
    assert [e.grant_id for e in allow.expired(100.0)] == ["1"]
    assert allow.next_expiry() == 100.0


@given(st.ip_addresses(v=4), st.integers(0, 32))
def test_parse_cidr_agrees_with_ipaddress(ip: ipaddress.IPv4Address, plen: int) -> None:
    net = ipaddress.ip_network(f"{ip}/{plen}", strict=False)
    if plen == 0:
        assert parse_cidr(str(net), allow_any=True) == net
    else:
        assert parse_cidr(str(net)) == net
    if net.network_address != ip:
        with pytest.raises(CidrError):
            parse_cidr(f"{ip}/{plen}")
