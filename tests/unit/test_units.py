"""Durations, sizes and percentages as users write them in a manifest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.manifest.units import (
    UnitError,
    format_duration,
    format_size,
    parse_duration,
    parse_percent,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("1m5ms", 60.005),
        (" 2s ", 2.0),
        ("5", 5.0),
        ("0.25", 0.25),
        (5, 5.0),
        (0.5, 0.5),
        (0, 0.0),
    ],
)
def test_durations_read_as_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("3x", "invalid duration '3x'"),
        ("", "invalid duration ''"),
        ("s", "invalid duration 's'"),
        ("10 s", "invalid duration '10 s'"),
        ("30s1m", "units must go from larger to smaller"),
        ("1s1s", "units must go from larger to smaller"),
        ("-5s", "cannot be negative"),
        (-1, "cannot be negative"),
        (True, "expected a duration, got bool True"),
        (None, "expected a duration, got nothing (null)"),
        ([1], "expected a duration"),
        (float("nan"), "finite"),
    ],
)
def test_bad_durations_say_what_is_wrong_and_show_a_valid_one(value: object, message: str) -> None:
    with pytest.raises(UnitError) as caught:
        parse_duration(value)
    assert message in caught.value.message
    assert "1m30s" in caught.value.hint


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256Mi", 256 * 1024**2),
        ("1Gi", 1024**3),
        ("64Ki", 64 * 1024),
        ("2Ti", 2 * 1024**4),
        ("512M", 512_000_000),
        ("100k", 100_000),
        ("100K", 100_000),
        ("1G", 10**9),
        ("1.5Gi", 1536 * 1024**2),
        ("256MiB", 256 * 1024**2),
        ("4096", 4096),
        (4096, 4096),
        (4096.0, 4096),
    ],
)
def test_sizes_read_as_bytes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("value", "message", "hint"),
    [
        ("12 parsecs", "invalid size '12 parsecs'", "256Mi"),
        ("256mi", "invalid size '256mi'", "did you mean Mi?"),
        ("1gib", "invalid size '1gib'", "did you mean Gi?"),
        ("-1Mi", "cannot be negative", "256Mi"),
        (-1, "cannot be negative", "256Mi"),
        (1.5, "whole number", "256Mi"),
        (False, "expected a size, got bool False", "256Mi"),
    ],
)
def test_bad_sizes_say_what_is_wrong(value: object, message: str, hint: str) -> None:
    with pytest.raises(UnitError) as caught:
        parse_size(value)
    assert message in caught.value.message
    assert hint in caught.value.hint


@pytest.mark.parametrize(
    ("value", "percent"), [("25%", 25.0), ("25", 25.0), (25, 25.0), (12.5, 12.5), ("0%", 0.0)]
)
def test_percentages_read_as_percent(value: object, percent: float) -> None:
    assert parse_percent(value) == percent


@pytest.mark.parametrize("value", ["25%%", "a%", "-5%", -1, True, None])
def test_bad_percentages_are_refused(value: object) -> None:
    with pytest.raises(UnitError, match="percentage"):
        parse_percent(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (1.5, "1.5s"),
        (30, "30s"),
        (90, "1m30s"),
        (600, "10m"),
        (3600, "1h"),
        (5400, "1h30m"),
        (90061.5, "1d1h1m1.5s"),
    ],
)
def test_durations_display_short(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (512, "512B"),
        (1024, "1Ki"),
        (1536, "1.5Ki"),
        (1025 * 1024, "1025Ki"),
        (1536 * 1024**2, "1.5Gi"),
        (256 * 1024**2, "256Mi"),
        (1024**3 + 1, "1.0Gi"),
    ],
)
def test_sizes_display_in_binary_units(size: int, text: str) -> None:
    assert format_size(size) == text


@given(st.integers(min_value=0, max_value=10**8))
def test_a_displayed_duration_reads_back_to_the_millisecond(millis: int) -> None:
    seconds = millis / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-6)


@given(st.integers(min_value=0, max_value=4096), st.sampled_from(["Ki", "Mi", "Gi"]))
def test_an_exact_size_reads_back_exactly(count: int, unit: str) -> None:
    size = parse_size(f"{count}{unit}")
    assert parse_size(format_size(size).removesuffix("B")) == size
