"""/metrics in OpenMetrics when the scraper asks for it: the gateway's latency buckets carry
exemplars with trace ids, and prometheus_client's OpenMetrics parser accepts the whole text."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from corral.api.metrics import PlatformMetrics
from corral.gateway.metrics import Metrics, render
from corral.store.sqlite import SQLiteStore
from corral.telemetry import exposition

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def parse_openmetrics(text: str) -> list[Metric]:
    """prometheus_client's OpenMetrics parser: it raises on anything the format forbids."""
    return list(text_string_to_metric_families(text))  # type: ignore[no-untyped-call]  # the parser module is unannotated


TRACE_A = b"4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_B = b"00f067aa0ba902b700f067aa0ba902b7"


def test_prometheus_is_answered_in_openmetrics_and_curl_in_prometheus_text() -> None:
    assert exposition.wants_openmetrics(PROMETHEUS_ACCEPT)
    assert not exposition.wants_openmetrics("*/*")
    assert not exposition.wants_openmetrics(None)
    assert not exposition.wants_openmetrics("application/openmetrics-text;q=0, text/plain")


def _gateway_metrics() -> Metrics:
    metrics = Metrics()
    orders = metrics.route("orders")
    orders.observe(200, 0.0031, 0.0029, TRACE_A)
    orders.observe(200, 0.0032, 0.0030)  # no span: the bucket keeps the last exemplar
    orders.observe(503, 0.3, None, TRACE_B)
    metrics.upstream("127.0.0.1:9001").tries += 2
    metrics.breaker_transition("orders", "orders", "open")
    return metrics


def test_gateway_latency_buckets_carry_trace_id_exemplars_in_openmetrics() -> None:
    text = _gateway_metrics().render(openmetrics=True)
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    latency = families["corral_gateway_request_duration_seconds"]
    marked = {
        s.labels["le"]: (s.exemplar.labels["trace_id"], s.exemplar.value)
        for s in latency.samples
        if s.name.endswith("_bucket") and s.exemplar is not None
    }
    assert marked == {"0.005": (TRACE_A.decode(), 0.0031), "0.5": (TRACE_B.decode(), 0.3)}
    requests = families["corral_gateway_requests"]  # OpenMetrics: a counter family has no _total
    assert requests.type == "counter"
    assert {(s.labels["code"], s.value) for s in requests.samples} == {("2xx", 2), ("5xx", 1)}


def test_workers_snapshots_sum_and_keep_exemplars_through_json() -> None:
    one, two = _gateway_metrics().snapshot(), _gateway_metrics().snapshot()
    text = render([one, two], openmetrics=True)
    families = {f.name: f for f in parse_openmetrics(text)}
    count = next(
        s.value
        for s in families["corral_gateway_request_duration_seconds"].samples
        if s.name.endswith("_count")
    )
    assert count == 6
    assert "trace_id" in text


def test_prometheus_text_has_no_exemplars_and_still_parses() -> None:
    text = _gateway_metrics().render()
    assert "# {" not in text and "# EOF" not in text
    names = {f.name for f in parse_prometheus(text)}
    assert "corral_gateway_request_duration_seconds" in names


def test_an_exemplar_whose_labels_are_too_long_is_left_out() -> None:
    assert exposition.exemplar({"trace_id": "a" * 200}, 0.1) == ""


class _Reconciler:
    def __init__(self) -> None:
        self.passes = 7
        self.queue = ["orders", "web"]


async def test_platform_metrics_show_store_latency_queue_depth_and_reconcile_time(
    tmp_path: Path,
) -> None:
    store = await SQLiteStore.open(tmp_path / "store.db")
    try:
        metrics = PlatformMetrics(store, reconciler=_Reconciler())
        metrics.observe_reconcile(0.004)
        text = (await metrics.render(openmetrics=True)).decode()
    finally:
        await store.close()
    families = {f.name: f for f in parse_openmetrics(text)}
    values = {s.name: s.value for f in families.values() for s in f.samples if not s.labels}
    assert values["corral_reconcile_queue_depth"] == 2
    assert values["corral_reconcile_passes"] == 7
    assert values["corral_reconcile_duration_seconds_count"] == 1
    store_ops = [
        s
        for s in families["corral_store_request_duration_seconds"].samples
        if s.name.endswith("_count")
    ]
    assert [(s.labels["op"], s.value) for s in store_ops] == [("range", 2)]
