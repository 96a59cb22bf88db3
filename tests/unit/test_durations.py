from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entryguard.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("4", 14400),
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1d", 86400),
        ("2H", 7200),
    ],
)
def test_valid(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad",
    [
        "-1",
        "0",
        "abc",
        "1e309",
        "nan",
        "inf",
        "",
        " ",
        "1.5h",
        "30m1h",
        "2h2h",
        "0s",
        "h",
        "1 h",
        "99999999",
        "9999999h",
        "+1",
        "１h",
    ],
)
def test_refused(bad: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(bad)


def test_format() -> None:
    assert format_duration(4 * 3600) == "4h 0m"
    assert format_duration(5400) == "1h 30m"
    assert format_duration(59) == "59s"


@given(st.text(max_size=12))
def test_never_crashes(text: str) -> None:
    try:
        assert parse_duration(text) > 0
    except DurationError:
        pass
