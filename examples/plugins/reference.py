"""Reference Corral gateway plugins in Python (in-process; docs/plugins.md).

Use one on a route with ``plugins: [{module: "examples.plugins.reference:add_header",
config: {name: X-Hello, value: world}}]`` (the module must be importable by the gateway).
"""

from __future__ import annotations

from typing import Any

from corral.gateway.plugins import LogRecord, PluginRequest, PluginResponse, Respond


def add_header(request: PluginRequest, config: dict[str, Any]) -> None:
    """A function plugin (phase on_request): add a request header for the upstream."""
    request.set_header(config.get("name", "X-Plugin"), config.get("value", "1"))


class ApiKey:
    """A class plugin: deny requests without the configured API key (answered by the
    gateway, the upstream never sees them) and stamp responses it let through."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.header = config.get("header", "x-api-key")
        self.keys = set(config.get("keys", []))

    def on_request(self, request: PluginRequest) -> Respond | None:
        if request.headers.get(self.header) not in self.keys:
            return Respond(
                401,
                '{"error": "missing or unknown API key"}\n',
                {"Content-Type": "application/json"},
            )
        return None

    def on_response_headers(self, request: PluginRequest, response: PluginResponse) -> None:
        response.set_header("X-Auth", "api-key")


class Tally:
    """on_log: count responses by status, off the request path (batched by the gateway)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.by_status: dict[int, int] = {}

    def on_log(self, records: list[LogRecord]) -> None:
        for record in records:
            self.by_status[record.status] = self.by_status.get(record.status, 0) + 1
