"""Pure parts of gateway plugins: the budget rule, lazy headers and header edits, the
out-of-process frame format, and plugin config validation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.errors import ManifestError
from corral.gateway.config import validate_gateway_data
from corral.gateway.plugin_budget import BudgetRule, BudgetTracker
from corral.gateway.plugins import PluginLoadError, PluginRequest, Respond, load_plugin
from corral.gateway.plugins_process import decode_frames, encode_frame
from corral.gateway.policy_config import PluginSpec

HEAD = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Api-Key: k1\r\nAccept: */*\r\nx-api-key: k2\r\n\r\n"


def test_a_single_slow_call_never_disables_a_plugin() -> None:
    tracker = BudgetTracker(BudgetRule(budget=0.001, window=20, max_over=5))
    for i in range(200):
        assert tracker.record(0.5 if i % 10 == 0 else 0.0001, float(i)) is None
    assert tracker.disabled is None


def test_a_plugin_is_disabled_on_the_overrun_past_the_limit_and_stays_disabled() -> None:
    tracker = BudgetTracker(BudgetRule(budget=0.001, window=20, max_over=5))
    verdicts = [tracker.record(0.002, float(i)) for i in range(6)]
    assert verdicts[:5] == [None] * 5
    disabled = verdicts[5]
    assert disabled is not None and disabled.overruns == 6 and disabled.at == 5.0
    assert "1 ms budget in 6 of its last 6 calls" in disabled.reason
    assert tracker.record(0.0, 6.0) is None  # sticky, reported once
    assert tracker.disabled is disabled


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), max_size=200), st.integers(1, 30), st.integers(0, 10))
def test_overruns_are_counted_over_exactly_the_last_window_calls(
    overs: list[bool], window: int, max_over: int
) -> None:
    tracker = BudgetTracker(BudgetRule(budget=1.0, window=window, max_over=max_over))
    for i, over in enumerate(overs):
        verdict = tracker.record(2.0 if over else 0.5, float(i))
        recent = sum(overs[max(0, i + 1 - window) : i + 1])
        if verdict is not None:
            assert recent == max_over + 1
            break
        assert tracker.overruns == recent <= max_over


def test_headers_are_parsed_only_when_a_plugin_reads_them() -> None:
    request = PluginRequest("r", "GET", "a", "/x", "", "127.0.0.1", "id", HEAD)
    request.set_header("X-New", "1")  # editing does not parse either
    assert request._headers is None
    assert request.headers.get("X-API-KEY") == "k1"
    assert request.headers.get_all("x-api-key") == ["k1", "k2"]
    assert "accept" in request.headers and "missing" not in request.headers
    assert request.headers.parsed


def test_header_edits_replace_every_line_of_a_name_and_keep_the_rest() -> None:
    request = PluginRequest("r", "GET", "a", "/x", "", "", "", HEAD)
    request.set_header("X-Api-Key", "new")
    request.remove_header("accept")
    assert request.apply(HEAD) == (b"GET /x HTTP/1.1\r\nHost: a\r\nX-Api-Key: new\r\n\r\n")
    with pytest.raises(Exception, match="invalid header"):
        request.set_header("X-Bad", "a\r\nInjected: 1")


def test_a_direct_answer_is_a_complete_response() -> None:
    data = Respond(401, "no", {"X-Why": "key"}).render(close=True, request_id=b"abc")
    assert data.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"\r\nContent-Length: 2\r\n" in data and b"\r\nConnection: close\r\n" in data
    assert data.endswith(b"\r\n\r\nno")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=5), st.integers() | st.text()), max_size=5))
def test_frames_decode_to_what_was_encoded_whatever_the_split(
    messages: list[dict[str, Any]],
) -> None:
    wire = b"".join(encode_frame(m) for m in messages)
    buf = bytearray()
    out: list[dict[str, Any]] = []
    for i in range(0, len(wire), 3):  # arrives 3 bytes at a time
        buf += wire[i : i + 3]
        out.extend(decode_frames(buf))
    assert out == messages and not buf


def test_a_plugin_needs_exactly_one_of_module_or_process_and_a_module_names_an_attribute() -> None:
    def routes(plugin: dict[str, Any]) -> dict[str, Any]:
        return {"routes": [{"name": "r", "upstreams": ["127.0.0.1:1"], "plugins": [plugin]}]}

    with pytest.raises(ManifestError, match="exactly one of module or process"):
        validate_gateway_data(routes({"module": "a:b", "process": "node x.js"}))
    with pytest.raises(ManifestError, match="does not name an attribute"):
        validate_gateway_data(routes({"module": "just.a.module"}))
    config = validate_gateway_data(routes({"process": "node x.js", "timeout": "5ms"}))
    assert config.routes[0].plugins[0].timeout == pytest.approx(0.005)


def test_a_missing_plugin_module_is_reported_with_a_hint() -> None:
    with pytest.raises(PluginLoadError, match="cannot be imported") as error:
        load_plugin(PluginSpec(module="no_such_module_here:f"))
    assert "PYTHONPATH" in error.value.hint
