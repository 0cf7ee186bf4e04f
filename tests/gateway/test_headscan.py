"""The compiled header scan (``_headscan.c``) reads the same values as the regex scan it replaces,
on any head — so a gateway behaves the same with and without the compiled build."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corral.gateway
from corral.gateway import proxy

scan = proxy._compiled_scan
needs_build = pytest.mark.skipif(
    scan is None, reason="no compiled build (scripts/build_compiled.py; the bootstrap makes it)"
)

OTHER = [b"accept", b"user-agent", b"cookie", b"x-hostname", b"hosts", b"content-type"]
NAMES = st.sampled_from([*proxy._REQUEST_NAMES, *OTHER])
VALUE = st.binary(max_size=30).map(
    lambda v: v.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")
)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    lines = [b"GET /x HTTP/1.1"]
    for _ in range(draw(st.integers(0, 12))):
        name = draw(NAMES)
        cased = bytes(
            c - 32 if 97 <= c <= 122 and draw(st.booleans()) else c for c in name
        )  # any case: names are case-insensitive
        gap = draw(st.sampled_from([b"", b" ", b"\t", b"  "]))
        lines.append(cased + draw(st.sampled_from([b"", b" "])) + b":" + gap + draw(VALUE))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def regex_scan(head: bytes, cut: frozenset[bytes]) -> tuple[dict[bytes, bytes], bool, bool]:
    try:
        values, cutting = proxy._scan(proxy._REQUEST_SCAN, head.lower(), cut)
    except proxy._BadHead:
        return {}, False, True
    return values, cutting, False


@needs_build
@settings(max_examples=400, deadline=None)
@given(head=heads(), upgrade=st.booleans())
def test_compiled_scan_reads_what_the_regex_scan_reads(head: bytes, upgrade: bool) -> None:
    assert scan is not None
    caseless, single, hop, hop_upgrade = proxy._REQUEST_MASKS
    cut = proxy._HOP_BY_HOP_UPGRADE if upgrade else proxy._HOP_BY_HOP
    values, cutting, repeated = scan(
        head, proxy._REQUEST_NAMES, caseless, single, hop_upgrade if upgrade else hop
    )
    expected, expected_cutting, expected_repeated = regex_scan(head, cut)
    assert (repeated is not None) == expected_repeated
    if repeated is not None:
        return
    assert cutting == expected_cutting
    # The regex scan reads a lower-cased copy; the compiled one keeps the case of the values
    # that are not compared without it (an X-Request-Id is opaque).
    assert {k: v.lower() for k, v in values.items()} == expected
    for name, value in values.items():
        if name in proxy._CASELESS:
            assert value == value.lower()


@needs_build
def test_compiled_scan_keeps_the_case_of_a_request_id_and_lowers_the_host() -> None:
    assert scan is not None
    head = (
        b"GET / HTTP/1.1\r\nHost: Shop.Example\r\nX-Request-Id: AbC-9\r\n"
        b"X-Forwarded-For: 10.0.0.1\r\nx-forwarded-for:  10.0.0.2 \r\n\r\n"
    )
    values, cutting, repeated = scan(head, proxy._REQUEST_NAMES, *proxy._REQUEST_MASKS[:3])
    assert values[b"host"] == b"shop.example"
    assert values[b"x-request-id"] == b"AbC-9"
    assert values[b"x-forwarded-for"] == b"10.0.0.1, 10.0.0.2"
    assert cutting and repeated is None  # X-Forwarded-For is replaced by the gateway's own


@needs_build
def test_compiled_scan_never_writes_to_shared_one_byte_objects() -> None:
    # CPython shares its one-byte bytes objects; lower-casing one in place would turn every
    # b"A" in the process into b"a".
    assert scan is not None
    head = b"GET / HTTP/1.1\r\nHost: A\r\nConnection: K\r\n\r\n"
    values, _, _ = scan(head, proxy._REQUEST_NAMES, *proxy._REQUEST_MASKS[:3])
    assert values[b"host"] == b"a" and values[b"connection"] == b"k"
    assert bytes([65]) == b"A" and b"AK"[:1] == b"A" and b"K".lower() == b"k"


@needs_build
def test_compiled_scan_reports_a_repeated_content_length() -> None:
    assert scan is not None
    head = b"POST / HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\n"
    _, _, repeated = scan(head, proxy._REQUEST_NAMES, *proxy._REQUEST_MASKS[:3])
    assert repeated == b"content-length"


def test_a_current_build_is_what_the_gateway_runs() -> None:
    if not corral.gateway.COMPILED:
        pytest.skip("no current compiled build: the interpreted modules run")
    assert proxy.__file__ is not None and not proxy.__file__.endswith(".py")
    assert scan is not None


@needs_build
@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"\r\n\r\n", b" "]), max_size=24))
def test_the_compiled_head_end_finds_what_bytes_find_finds(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    assert proxy._head_end(data) == data.find(b"\r\n\r\n")
