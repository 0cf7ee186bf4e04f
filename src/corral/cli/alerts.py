"""``corral alerts``, ``corral changes`` and ``corral capacity``: the alert, "what changed"
and capacity views of the API (`corral.api.insight`), as tables or JSON."""

from __future__ import annotations

import datetime
import json
from typing import Any

import click

from corral.cli import render
from corral.client import Client
from corral.home import Home


def _client() -> Client:
    return Client.for_home(Home.resolve())


def _time(at: float) -> str:
    return datetime.datetime.fromtimestamp(at).strftime("%H:%M:%S") if at else "-"


def _evidence(alert: dict[str, Any]) -> str:
    e = alert.get("evidence") or {}
    if not e:
        return ""
    text = f"{e['metric']}={e['value']:g} (threshold {e['threshold']:g}"
    text += f", window {render.duration(e['window_s'])})" if e.get("window_s") else ")"
    if e.get("trace_ids"):
        text += " traces: " + " ".join(e["trace_ids"])
    return text


def _print(data: Any) -> None:
    render.write(json.dumps(data, indent=2, sort_keys=True))


@click.command("alerts")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
def alerts(as_json: bool) -> None:
    """Firing alerts and recently resolved ones, with their evidence."""
    view = _client().request("GET", "/alerts")
    if as_json:
        _print(view)
        return
    for what, why in sorted(view.get("inputs", {}).items()):
        render.err.print(f"[yellow]{what} rules not evaluated:[/] {why}")
    if not view["firing"] and not view["resolved"]:
        render.write("no alerts")
    for title, rows in (("FIRING", view["firing"]), ("RESOLVED", view["resolved"])):
        if not rows:
            continue
        render.write(title)
        for a in rows:
            when = _time(a["fired_at"]) + (
                f" → {_time(a['resolved_at'])}" if a.get("resolved_at") else ""
            )
            render.write(f"  {when}  [{a['severity']}] {a['id']}: {a['summary']}")
            if evidence := _evidence(a):
                render.write(f"      {evidence}")
    if view["pending"]:
        render.write(f"pending: {', '.join(a['id'] for a in view['pending'])}")


@click.command("changes")
@click.option("--service", default="", help="Only changes of this service (and the platform).")
@click.option("--since", default="1h", show_default=True, help="How far back: 30m, 1h, 2d.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON (with the curves).")
def changes(service: str, since: str, as_json: bool) -> None:
    """Deploys, restarts, scaling and config changes in a window, beside error and latency."""
    view = _client().request("GET", "/changes", query={"service": service, "since": since})
    if as_json:
        _print(view)
        return
    if view.get("telemetry"):
        render.err.print(f"[yellow]no curves:[/] {view['telemetry']}")
    if not view["changes"]:
        render.write(f"no changes since {_time(view['start'])}")
    for c in view["changes"]:
        who = c["service"] or "platform"
        render.write(f"{_time(c['at'])}  {c['kind']:<8} {who:<20} {c['reason']}")
    for name, points in sorted(view["series"].items()):
        if not points:
            continue
        calls = sum(p[1] for p in points)
        errors = sum(p[2] for p in points)
        worst = max(p[5] for p in points)
        render.write(
            f"{name}: {calls} calls, {errors} errors ({errors / calls:.2%}), "
            f"worst minute p95 {worst:g} ms over {len(points)} minute(s)"
        )


def _size(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "Ki", "Mi", "Gi"):
        if value < 1024 or unit == "Gi":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}Gi"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


@click.command("capacity")
@click.option("--near", default=0.8, show_default=True, help="Flag usage at this fraction.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
def capacity(near: float, as_json: bool) -> None:
    """CPU and memory headroom per service and host; which run near their limits."""
    view = _client().request("GET", "/capacity", query={"near": near})
    if as_json:
        _print(view)
        return
    render.write(
        f"{'SERVICE':<24}{'INST':>5}  {'CPU USED/LIMIT':<18}{'MEMORY USED/LIMIT':<22}"
        f"{'HEADROOM':>9}  NEAR"
    )
    for s in view["services"]:
        cpu_used = "-" if s["cpu_used"] is None else f"{s['cpu_used']:.2f}"
        cpu_limit = "-" if s["cpu_limit"] is None else f"{s['cpu_limit']:g}"
        cpu = f"{cpu_used}/{cpu_limit} ({_pct(s['cpu_ratio'])})"
        mem = f"{_size(s['memory_used'])}/{_size(s['memory_limit'])} ({_pct(s['memory_ratio'])})"
        render.write(
            f"{s['service']:<24}{s['instances']:>5}  {cpu:<18}{mem:<22}"
            f"{_pct(s['headroom']):>9}  {','.join(s['near_limit'])}"
        )
    if view.get("telemetry"):
        render.err.print(f"[yellow]hosts unknown:[/] {view['telemetry']}")
    for h in view["hosts"]:
        render.write(
            f"host {h['host']}: cpu {_pct(h['cpu_ratio'])}, memory {_pct(h['memory_ratio'])}, "
            f"disk {_pct(h['disk_ratio'])}, headroom {_pct(h['headroom'])}"
            + (f"  NEAR: {','.join(h['near_limit'])}" if h["near_limit"] else "")
        )
