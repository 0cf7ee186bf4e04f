"""The gateway's span and access-log export (``corral.gateway.spans.Recorder``): encoded on the
loop a slice at a time, every finished request's spans and log line reach the sinks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from corral.gateway.spans import EXPORT_SLICE, Finished, Recorder


def finished(i: int) -> Finished:
    trace = b"%032x" % (i + 1)
    tries = [(b"%016x" % (i + 7), "10.0.0.2:8080", 1.0, 1.001, 200, "api")]
    return (
        trace, b"%016x" % (i + 1), None, 1.0, 1.002, "GET", b"shop.example", f"/orders/{i}",
        200, "api", b"10.0.0.9", b"rid-%d" % i, tries,
    )  # fmt: skip


class Captured(Recorder):
    def __init__(self) -> None:
        super().__init__(zipkin=lambda: "http://127.0.0.1:9/api/v2/spans", access_log="unused")
        self.writes: list[tuple[str, str | None, bytes, int]] = []

    def _write(self, log_lines: str, url: str | None, body: bytes, requests: int) -> None:
        self.writes.append((log_lines, url, body, requests))


async def test_a_batch_larger_than_a_slice_is_exported_whole_as_one_json_array() -> None:
    recorder = Captured()
    count = 2 * EXPORT_SLICE + 5
    for i in range(count):
        recorder.record(finished(i))
    await recorder.flush(asyncio.get_running_loop())
    [(lines, url, body, requests)] = recorder.writes
    spans: list[dict[str, Any]] = json.loads(body)
    assert requests == count and url is not None
    assert len(spans) == 2 * count  # a SERVER span and a CLIENT span per request
    assert {s["traceId"] for s in spans} == {"%032x" % (i + 1) for i in range(count)}
    assert [json.loads(line)["path"] for line in lines.splitlines()] == [
        f"/orders/{i}" for i in range(count)
    ]


async def test_a_flush_stopped_mid_encoding_leaves_its_batch_for_the_last_flush() -> None:
    recorder = Captured()
    for i in range(3 * EXPORT_SLICE):
        recorder.record(finished(i))
    loop = asyncio.get_running_loop()
    task = loop.create_task(recorder.flush(loop))
    await asyncio.sleep(0)  # the first slice is encoded, then the flush yields
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert recorder.writes == [] and len(recorder.buffer) == 3 * EXPORT_SLICE
    await recorder.flush(loop)
    assert recorder.writes[0][3] == 3 * EXPORT_SLICE
