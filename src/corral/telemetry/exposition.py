"""Which exposition format a scraper asked for, and Prometheus text → OpenMetrics text (pure).

Theory of operation. Every ``/metrics`` in Corral writes Prometheus text (0.0.4) lines; when
the scraper's ``Accept`` names ``application/openmetrics-text`` (Prometheus itself does, when
exemplar storage or native histograms are on, and ranks it first by default) the same lines are
turned into OpenMetrics 1.0 text, which differs in three ways that matter here: a counter's
family name (``# TYPE``/``# HELP``) drops the ``_total`` suffix its samples keep, a bucket
sample may carry an exemplar (``… 17 # {trace_id="…"} 0.042``), and the exposition ends with
``# EOF``. Exemplars are added by the code that owns the histogram (the gateway's latency
buckets, see ``corral.gateway.metrics``); this module only negotiates and converts.
Follows the OpenMetrics 1.0 specification (prometheus/OpenMetrics, ``specification/
OpenMetrics.md``): exemplar label sets at most 128 UTF-8 characters.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "OPENMETRICS",
    "PROMETHEUS",
    "content_type",
    "escape",
    "exemplar",
    "to_openmetrics",
    "wants_openmetrics",
]

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
MAX_EXEMPLAR_LABELS = 128


def wants_openmetrics(accept: str | None) -> bool:
    """True when ``Accept`` offers OpenMetrics at a quality above zero."""
    for part in (accept or "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media.lower() != "application/openmetrics-text":
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    if float(value) <= 0:
                        break
                except ValueError:
                    break
        else:
            return True
    return False


def content_type(openmetrics: bool) -> str:
    return OPENMETRICS if openmetrics else PROMETHEUS


def exemplar(labels: dict[str, str], value: float) -> str:
    """`` # {k="v",…} value`` to append to a bucket sample ("" when the labels are too long)."""
    inner = ",".join(f'{k}="{escape(v)}"' for k, v in sorted(labels.items()))
    if sum(len(k) + len(v) for k, v in labels.items()) > MAX_EXEMPLAR_LABELS:
        return ""
    return f" # {{{inner}}} {value!r}"


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def to_openmetrics(lines: Iterable[str]) -> str:
    """OpenMetrics text from Prometheus text lines (family names of counters lose
    ``_total``; ``# EOF`` ends it)."""
    counters: set[str] = set()
    kept = [line for line in lines if line]
    for line in kept:
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            if kind.strip() == "counter" and name.endswith("_total"):
                counters.add(name)
    out: list[str] = []
    for line in kept:
        if line.startswith(("# TYPE ", "# HELP ")):
            name, _, rest = line[7:].partition(" ")
            if name in counters:
                line = f"{line[:7]}{name[: -len('_total')]} {rest}"
        out.append(line)
    out.append("# EOF")
    return "\n".join(out) + "\n"
