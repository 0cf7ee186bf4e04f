"""Telemetry: the collector (Zipkin v2 and OTLP/HTTP ingest), span storage with rollups
computed at ingest, and the queries (traces, dependencies, latency, TOP-N, slow SQL → APIs).

Start a collector with ``python -m corral.telemetry.collector --home DIR`` (or
`corral.telemetry.collector.serve`), or embed one with `corral.telemetry.collector.Collector`
over a `SqliteSpanStore`; ask questions with the functions in `corral.telemetry.queries`.
(The collector is not imported here, so ``python -m`` runs it without a double import.)
"""

from corral.compiled import use_compiled

# The ingest path compiled with mypyc when a current build exists (corral/compiled.py); before
# any submodule is imported, so they all come from the same build.
COMPILED = use_compiled(__name__, __path__)

from corral.telemetry.model import Event, Facts, Span  # noqa: E402  # after the build is chosen
from corral.telemetry.store import (  # noqa: E402  # same
    Retention,
    SpanStore,
    SqliteSpanStore,
    TraceQuery,
)

__all__ = [
    "Event",
    "Facts",
    "Retention",
    "Span",
    "SpanStore",
    "SqliteSpanStore",
    "TraceQuery",
]
