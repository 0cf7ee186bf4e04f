"""HTML for the dashboard's pages, from plain data (the API's service and instance views).

Theory of operation: every page is complete, readable HTML on first paint — tables first, so a
page without scripts (or without the chart libraries) still says everything; the page's ES
module then keeps it live and adds charts beside the tables, never instead of them. Every value
that came from a user or a process is escaped here (`esc`), in one place. The markup carries
`data-*` attributes (service, instance, phase) that the scripts update and tests read. State is
shown by word and colour together, never colour alone (accessible colours live in the CSS).
Pure: no I/O, no clock — times arrive as numbers and are formatted by the browser's script.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from string import Template
from typing import Any

from corral.dashboard.changes import KINDS, Change

PHASES = ("provision", "ready", "run", "destroy", "failed")
NAV = (
    ("overview", "/", "Overview"),
    ("topology", "/topology", "Topology"),
    ("traces", "/traces", "Traces"),
    ("top", "/top", "TOP-N"),
    ("gateway", "/gateway", "Gateway"),
    ("slo", "/slo", "SLOs"),
    ("hosts", "/hosts", "Hosts"),
    ("impact", "/impact", "Impact"),
)


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def page(
    layout: str,
    *,
    title: str,
    active: str,
    body: str,
    script: str = "",
    notice: str = "",
    charts: bool = True,
) -> str:
    """One whole page: the layout with its navigation, a notice line and the page's module."""
    nav = "".join(
        f'<li><a href="{href}"{" aria-current=page" if key == active else ""}>{esc(label)}</a></li>'
        for key, href, label in NAV
    )
    module = f'<script type="module" src="/static/{esc(script)}"></script>' if script else ""
    banner = f'<p class="notice" role="note">{notice}</p>' if notice else ""
    return Template(layout).safe_substitute(
        title=esc(title),
        nav=nav,
        body=body,
        script=module,
        notice=banner,
        charts="ok" if charts else "missing",
        page=esc(active),
    )


def phase_counts(instances: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for instance in instances:
        phase = str(instance.get("phase", ""))
        counts[phase] = counts.get(phase, 0) + 1
    return counts


def phase_chips(counts: Mapping[str, int]) -> str:
    order = [p for p in PHASES if counts.get(p)] + sorted(p for p in counts if p not in PHASES)
    chips = [
        f'<span class="chip phase-{esc(p)}" data-phase="{esc(p)}" data-count="{counts[p]}">'
        f"{esc(p)} {counts[p]}</span>"
        for p in order
    ]
    return " ".join(chips) or '<span class="muted">none</span>'


def state_badge(state: str) -> str:
    return f'<span class="badge state-{esc(state)}" data-state="{esc(state)}">{esc(state)}</span>'


def overview_row(service: Mapping[str, Any]) -> str:
    name = esc(service["name"])
    members = service.get("members", [])
    return (
        f'<tr data-service="{name}">'
        f'<th scope="row"><a href="/services/{name}">{name}</a></th>'
        f"<td>{state_badge(str(service['state']))}"
        f'<span class="reason">{esc(service.get("reason", ""))}</span></td>'
        f'<td class="num" data-ready>{service["ready"]}/{service["desired"]}</td>'
        f"<td data-phases>{phase_chips(phase_counts(members))}</td>"
        f'<td class="num">v{esc(service["release"])}'
        f"{' · ' + esc(service['version']) if service.get('version') else ''}</td>"
        '<td class="num" data-metric="rate">—</td>'
        '<td class="num" data-metric="errors">—</td>'
        '<td class="num" data-metric="p95">—</td>'
        '<td class="spark" data-metric="trend"></td>'
        "</tr>"
    )


def overview(services: Sequence[Mapping[str, Any]]) -> str:
    rows = "".join(overview_row(s) for s in services)
    if not services:
        rows = '<tr><td colspan="9">No services yet: <code>corral apply FILE</code></td></tr>'
    return (
        "<h1>Services</h1>"
        '<p class="live" id="live" role="status" aria-live="polite">'
        "Live updates: connecting…</p>"
        '<table class="grid" id="services">'
        "<caption>Every service: state, instances by phase and release; requests per minute, "
        "error rate and p95 latency over the last 5 minutes where telemetry has them.</caption>"
        "<thead><tr>"
        '<th scope="col">Service</th><th scope="col">State</th><th scope="col">Ready</th>'
        '<th scope="col">Instances by phase</th><th scope="col">Release</th>'
        '<th scope="col">Requests/min</th><th scope="col">Errors</th>'
        '<th scope="col">p95</th><th scope="col">Requests, last 15 min</th>'
        f"</tr></thead><tbody>{rows}</tbody></table>"
        '<p class="muted" id="telemetry-note" role="status"></p>'
    )


def instance_row(instance: Mapping[str, Any]) -> str:
    iid = esc(instance["id"])
    phase = esc(instance["phase"])
    return (
        f'<tr data-instance="{iid}">'
        f'<th scope="row">{iid}</th>'
        f'<td><span class="badge phase-{phase}" data-phase="{phase}">{phase}</span>'
        f'<span class="reason">{esc(instance.get("reason", ""))}</span></td>'
        f"<td>{esc(instance.get('node', ''))}</td>"
        f'<td class="num">{esc(instance.get("port") or "—")}</td>'
        f'<td class="num">{esc(instance.get("pid") or "—")}</td>'
        f'<td class="num">v{esc(instance.get("release"))}</td>'
        f'<td class="num">{esc(instance.get("restarts", 0))}</td>'
        f"<td>{esc(instance.get('last_exit') or '')}</td>"
        "</tr>"
    )


def events_table(events: Sequence[Mapping[str, Any]], table_id: str = "events") -> str:
    rows = "".join(
        f'<tr><td class="num" data-at="{esc(e["at"])}">{esc(e["at"])}</td>'
        f"<td>{esc(e['subject'])}</td>"
        f"<td>{esc(e.get('from') or '')}{' → ' if e.get('to') else ''}{esc(e.get('to') or '')}"
        f"</td><td>{esc(e['reason'])}</td></tr>"
        for e in reversed(events)
    )
    return (
        f'<table class="grid" id="{esc(table_id)}"><caption>Events, newest first</caption>'
        '<thead><tr><th scope="col">When</th><th scope="col">Subject</th>'
        '<th scope="col">Transition</th><th scope="col">Reason</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def change_items(changes: Sequence[Change]) -> str:
    """The "what changed" list: one item per change, oldest first, with the data the chart
    markers are drawn from (`data-at`, `data-kind`)."""
    if not changes:
        return '<li class="muted" data-empty>No changes in the last hour.</li>'
    return "".join(
        f'<li data-at-s="{c.at:.3f}" data-kind="{esc(c.kind)}">'
        f'<span class="num" data-at="{c.at:.3f}">{esc(c.at)}</span> '
        f'<span class="mark mark-{esc(c.kind)}">{esc(KINDS.get(c.kind, c.kind))}</span> '
        f"{esc(c.subject)}: {esc(c.reason)}</li>"
        for c in changes
    )


def changes_section(changes: Sequence[Change]) -> str:
    legend = " ".join(
        f'<span class="mark mark-{esc(k)}">{esc(label)}</span>' for k, label in KINDS.items()
    )
    return (
        '<section aria-labelledby="h-changes"><h2 id="h-changes">What changed</h2>'
        f'<p class="muted">Deploys, restarts, scaling and crashes of the last hour, drawn as '
        f"vertical markers on the charts above; markers: {legend}</p>"
        f'<ol class="changes" id="changes">{change_items(changes)}</ol></section>'
    )


def service_page(
    service: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    changes: Sequence[Change] = (),
) -> str:
    name = esc(service["name"])
    members = service.get("members", [])
    instances = "".join(instance_row(i) for i in members) or (
        '<tr><td colspan="8">No instances</td></tr>'
    )
    deps = ", ".join(
        f'<a href="/services/{esc(d)}">{esc(d)}</a> ({esc(c)})'
        for d, c in sorted(service.get("depends_on", {}).items())
    )
    return (
        f'<h1 data-service="{name}">{name} {state_badge(str(service["state"]))}</h1>'
        f'<p class="live" id="live" role="status" aria-live="polite">'
        "Live updates: connecting…</p>"
        '<dl class="facts">'
        f"<dt>Ready</dt><dd data-ready>{service['ready']}/{service['desired']}</dd>"
        f"<dt>Release</dt><dd>v{esc(service['release'])}"
        f"{' · ' + esc(service['version']) if service.get('version') else ''}</dd>"
        f"<dt>Mode</dt><dd>{esc(service.get('mode'))} {esc(service.get('kind'))}</dd>"
        f"<dt>Depends on</dt><dd>{deps or 'nothing'}</dd>"
        "</dl>"
        '<section aria-labelledby="h-instances"><h2 id="h-instances">Instances</h2>'
        '<table class="grid" id="instances"><caption>Instances of this service</caption>'
        '<thead><tr><th scope="col">Instance</th><th scope="col">Phase</th>'
        '<th scope="col">Node</th><th scope="col">Port</th><th scope="col">PID</th>'
        '<th scope="col">Release</th><th scope="col">Restarts</th>'
        '<th scope="col">Last exit</th></tr></thead>'
        f"<tbody>{instances}</tbody></table></section>"
        '<section aria-labelledby="h-rollout"><h2 id="h-rollout">Releases and rollout</h2>'
        '<div id="rollout" role="status">Loading the rollout…</div>'
        '<table class="grid" id="releases"><caption>Release history, newest first</caption>'
        '<thead><tr><th scope="col">Release</th><th scope="col">Version</th>'
        '<th scope="col">Created</th><th scope="col">Changes</th>'
        '<th scope="col">Outcome</th><th scope="col">Message</th></tr></thead>'
        "<tbody></tbody></table></section>"
        '<section aria-labelledby="h-latency"><h2 id="h-latency">Latency and TOP endpoints</h2>'
        '<p class="muted" id="latency-source" role="status"></p>'
        '<div class="chart" id="latency-chart" aria-hidden="true"></div>'
        '<div class="chart" id="errors-chart" aria-hidden="true"></div>'
        '<table class="grid" id="endpoints"><caption>Endpoints of this service over the last '
        "hour, busiest first</caption>"
        '<thead><tr><th scope="col">Endpoint</th><th scope="col">Calls</th>'
        '<th scope="col">Errors</th><th scope="col">Average</th><th scope="col">p95</th>'
        '</tr></thead><tbody><tr><td colspan="5">Loading…</td></tr></tbody></table></section>'
        f"{changes_section(changes)}"
        '<section aria-labelledby="h-events"><h2 id="h-events">Events</h2>'
        f"{events_table(events)}</section>"
    )


def gateway_page(view: Mapping[str, Any] | None) -> str:
    if view is None:
        return (
            "<h1>Gateway</h1><p>No gateway is configured: add a <code>gateway:</code> section to "
            "the manifest, or create a route with <code>corral route set</code>.</p>"
        )
    config = view.get("config", {})
    rows = []
    for route in config.get("routes", []):
        match = route.get("match", {})
        target = route.get("service") or ", ".join(map(str, route.get("upstreams", [])))
        policies = sorted(k for k in route if k not in ("name", "match", "service", "upstreams"))
        rows.append(
            f'<tr data-route="{esc(route.get("name"))}">'
            f'<th scope="row">{esc(route.get("name"))}</th>'
            f"<td><code>{esc(_match_text(match))}</code></td>"
            f"<td>{esc(target)}</td><td class=num>{esc(route.get('priority', 0))}</td>"
            f"<td>{esc(', '.join(policies)) or '—'}</td>"
            f'<td class="num" data-counter="requests">—</td></tr>'
        )
    body = "".join(rows) or '<tr><td colspan="6">No routes</td></tr>'
    return (
        "<h1>Gateway</h1>"
        f'<dl class="facts"><dt>Listen</dt><dd>{esc(config.get("listen", ""))}</dd>'
        f"<dt>Config version</dt><dd>v{esc(view.get('version'))} ({esc(view.get('source'))})"
        f"</dd><dt>Last change</dt><dd>{esc(view.get('message') or '—')}</dd></dl>"
        '<table class="grid" id="routes"><caption>Routes, in the order they are declared'
        "</caption>"
        '<thead><tr><th scope="col">Route</th><th scope="col">Match</th>'
        '<th scope="col">Service or upstreams</th><th scope="col">Priority</th>'
        '<th scope="col">Policies</th><th scope="col">Requests</th></tr></thead>'
        f"<tbody>{body}</tbody></table>"
        '<h2>Live status</h2><pre id="gateway-live" class="live-status">'
        f"{esc(_compact(view.get('live') or {}))}</pre>"
    )


def _match_text(match: Mapping[str, Any]) -> str:
    parts = []
    for key in ("host", "path", "path_prefix", "path_template"):
        if match.get(key):
            parts.append(f"{key}={match[key]}")
    if match.get("methods"):
        parts.append("methods=" + ",".join(map(str, match["methods"])))
    return " ".join(parts) or "everything"


def _compact(data: Mapping[str, Any]) -> str:
    if not data:
        return "The gateway has not reported its live status yet."
    return "\n".join(f"{k}: {data[k]}" for k in sorted(data))


def hosts_page(services: Sequence[Mapping[str, Any]]) -> str:
    """One section per node with the instances on it; the page's script adds each host's CPU,
    memory, disk and network (sampled by the collector) to the section of its node."""
    nodes: dict[str, list[Mapping[str, Any]]] = {}
    for service in services:
        for instance in service.get("members", []):
            nodes.setdefault(str(instance.get("node") or "local"), []).append(instance)
    sections = []
    for node in sorted(nodes):
        members = sorted(nodes[node], key=lambda i: str(i["id"]))
        rows = "".join(instance_row(i) for i in members)
        sections.append(
            f'<section class="host" data-node="{esc(node)}" aria-labelledby="h-node-{esc(node)}">'
            f'<h2 id="h-node-{esc(node)}">Node {esc(node)}</h2>'
            '<div class="host-metrics" data-metrics></div>'
            f"<p>{phase_chips(phase_counts(members))}</p>"
            f'<table class="grid" data-instances><caption>Instances on {esc(node)}</caption>'
            '<thead><tr><th scope="col">Instance</th><th scope="col">Phase</th>'
            '<th scope="col">Node</th><th scope="col">Port</th><th scope="col">PID</th>'
            '<th scope="col">Release</th><th scope="col">Restarts</th>'
            f'<th scope="col">Last exit</th></tr></thead><tbody>{rows}</tbody></table></section>'
        )
    return (
        "<h1>Hosts</h1>"
        '<form class="search" id="window-form"><label>Window'
        '<select name="minutes" id="minutes"><option value="15">15 minutes</option>'
        '<option value="60" selected>1 hour</option><option value="360">6 hours</option>'
        '<option value="1440">24 hours</option></select></label></form>'
        '<p id="hosts-status" role="status">Loading host metrics…</p>'
        '<table class="grid" id="host-summary"><caption>Every host: the latest sample (the '
        "collector samples its node every 10 s)</caption>"
        '<thead><tr><th scope="col">Host</th><th scope="col">CPU</th>'
        '<th scope="col">Memory used</th><th scope="col">Disk used</th>'
        '<th scope="col">Disk read/write</th><th scope="col">Network in/out</th>'
        '<th scope="col">Instances</th><th scope="col">Sampled</th></tr></thead>'
        "<tbody></tbody></table>"
        '<div id="nodes">' + ("".join(sections) or "<p>No instances.</p>") + "</div>"
    )


SLO = (
    '<p id="slo-status" role="status">Loading SLOs…</p>'
    '<table class="grid" id="slo"><caption>Every objective of every route: error budget left '
    "over its window, and how fast it burns (1.0 spends it exactly by the window's end)"
    "</caption>"
    '<thead><tr><th scope="col">Route</th><th scope="col">Objective</th>'
    '<th scope="col">Window</th><th scope="col">Requests</th><th scope="col">Bad</th>'
    '<th scope="col">Budget left</th><th scope="col">Burn 5m</th><th scope="col">Burn 1h</th>'
    '<th scope="col">Burn 6h</th><th scope="col">Alerts</th></tr></thead>'
    "<tbody></tbody></table>"
    '<section aria-labelledby="h-burndown"><h2 id="h-burndown">Burn-down</h2>'
    '<p class="muted">Error budget left across each route\'s window, one point per '
    "twelfth of it; the table under each chart carries the same numbers.</p>"
    '<div id="burndown"></div></section>'
)


def slo_page() -> str:
    return shell(
        "SLOs",
        "Objectives declared on gateway routes (<code>gateway.routes[*].slo</code>), measured "
        "on the gateway's edge spans.",
        SLO,
    )


IMPACT_KINDS = (
    ("instance", "Instance"),
    ("host", "Host"),
    ("sql", "SQL statement or fingerprint"),
)


def impact_page(kind: str, value: str) -> str:
    """A form (a plain GET, so the address can be shared) and the table its script fills."""
    options = "".join(
        f'<option value="{k}"{" selected" if k == kind else ""}>{esc(label)}</option>'
        for k, label in IMPACT_KINDS
    )
    form = (
        '<form class="search" id="impact-form" method="get" action="/impact">'
        f'<label>Target<select id="impact-kind" name="kind">{options}</select></label>'
        '<label>Name<input id="impact-value" name="value" size="48" list="impact-choices" '
        f'value="{esc(value)}" required></label>'
        '<datalist id="impact-choices"></datalist>'
        '<label>Last<select name="minutes" id="impact-minutes">'
        '<option value="15" selected>15 minutes</option><option value="60">1 hour</option>'
        '<option value="1440">24 hours</option></select></label>'
        '<button type="submit">Show the affected APIs</button></form>'
    )
    return shell(
        "Impact",
        "Pick a host, an instance or a SQL statement: the external APIs whose requests reach "
        "it, and how much of their traffic and time it takes.",
        form + '<p id="impact-status" role="status"></p>'
        '<table class="grid" id="impact"><caption>Affected APIs, the most affected first'
        "</caption>"
        '<thead><tr><th scope="col">API</th><th scope="col">Requests</th>'
        '<th scope="col">Errors</th><th scope="col">Calls reaching it</th>'
        '<th scope="col">Share of requests</th><th scope="col">Share of time</th>'
        '<th scope="col">Its p95</th></tr></thead><tbody></tbody></table>',
    )


def shell(title: str, intro: str, inner: str) -> str:
    """A page whose data its module fetches from the API (telemetry lives in the collector)."""
    return f"<h1>{esc(title)}</h1><p class=muted>{intro}</p>{inner}"


def sign_in(reason: str) -> str:
    return (
        "<h1>Sign in to the Corral dashboard</h1>"
        f'<p role="alert">{esc(reason)}</p>'
        "<p>Run <code>corral dashboard</code>: it prints a link that signs this browser in "
        "(it carries the read token once; the address bar drops it). Or open "
        "<code>/?token=</code> followed by the contents of "
        "<code>$CORRAL_HOME/read-token</code>.</p>"
    )


def not_found(what: str) -> str:
    return f'<h1>Not found</h1><p role="alert">{esc(what)}</p><p><a href="/">Overview</a></p>'
