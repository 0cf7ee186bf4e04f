"""Everything the CLI prints, rendered with rich in one place."""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from corral.errors import CorralError, ManifestError

# Tables must not be cut when piped (tests, `| grep`): a wide console off a terminal.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)

PHASE_STYLE = {
    "run": "green",
    "ready": "yellow",
    "provision": "cyan",
    "destroy": "dim",
    "failed": "bold red",
}


def error(exc: CorralError) -> None:
    if isinstance(exc, ManifestError):
        err.print(f"[bold red]error:[/] {exc.problems and 'the manifest is invalid'}")
        for problem in exc.problems:
            where = escape(problem.path or "(top)")
            err.print(f"  [red]✗[/] [bold]{where}[/]: {escape(problem.message)}")
            if problem.hint:
                err.print(f"      [dim]hint: {escape(problem.hint)}[/]")
        return
    # Messages quote user input and server logs: text like "[/x]" must print, not parse.
    err.print(f"[bold red]error:[/] {escape(exc.message)}")
    if exc.hint:
        err.print(f"  [dim]hint: {escape(exc.hint)}[/]")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def services_table(services: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("SERVICE", "STATE", "READY", "DESIRED", "RELEASE", "MODE", "REASON"):
        table.add_column(column)
    for s in services:
        style = PHASE_STYLE.get(s["state"], "")
        table.add_row(
            s["name"],
            f"[{style}]{s['state']}[/]" if style else s["state"],
            f"{s['ready']}/{s['desired']}",
            str(s["desired"]),
            f"v{s['release']}" + (f" ({s['version']})" if s.get("version") else ""),
            f"{s['mode']}/{s['kind']}" if s["kind"] != "service" else s["mode"],
            s.get("reason", ""),
        )
    return table


def instances_table(instances: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in (
        "INSTANCE",
        "SERVICE",
        "PHASE",
        "PID",
        "PORT",
        "RESTARTS",
        "AGE",
        "LAST EXIT",
        "NEXT RESTART IN",
    ):
        table.add_column(column)
    for i in instances:
        style = PHASE_STYLE.get(i["phase"], "")
        table.add_row(
            i["id"],
            i["service"],
            f"[{style}]{i['phase']}[/]" if style else i["phase"],
            str(i["pid"] or "-"),
            str(i["port"] or "-"),
            str(i["restarts"]),
            duration(i["age"]),
            i["last_exit"] or "-",
            duration(i["next_restart_in"]) if i["next_restart_in"] is not None else "-",
        )
    return table


def event_line(event: dict[str, Any]) -> str:
    at = datetime.datetime.fromtimestamp(event["at"]).strftime("%H:%M:%S.%f")[:-3]
    move = f" {event['from'] or '∅'} → {event['to']}" if event.get("to") else ""
    return f"{at}  {event['subject']:<24}{move}  {event['reason']}"


def print_table(table: Table) -> None:
    out.print(table)


def write(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def diff(result: dict[str, Any]) -> None:
    styles = {"created": "green", "updated": "yellow", "removed": "red", "unchanged": "dim"}
    for name in sorted(result):
        entry = result[name]
        verb = entry["change"]
        note = ""
        if verb == "updated":
            note = (
                " (new release; replaces instances)"
                if entry.get("replaces_instances")
                else " (new release; no instance replaced)"
            )
        out.print(f"[{styles.get(verb, '')}]{verb:<9}[/] {name}{note}")
        for line in entry.get("changes", []):
            out.print(f"    {line}", markup=False)


def releases_table(history: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("RELEASE", "VERSION", "WHEN", "WHO", "WHAT CHANGED", "WHY", "OUTCOME"):
        table.add_column(column)
    for r in history:
        when = datetime.datetime.fromtimestamp(r["created_at"]).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            ("* " if r["current"] else "  ") + f"v{r['release']}",
            str(r["version"] or "-"),
            when,
            r["user"] or "-",
            r["changes"],
            r["message"] or "-",
            r["outcome"] or "-",
        )
    return table


def rollout(state: dict[str, Any]) -> None:
    out.print(
        f"[bold]{state['service']}[/]: {state['kind']} v{state['from_release']} → "
        f"v{state['to_release']}: [bold]{state['state']}[/]"
    )
    out.print(f"  step:     {state['step'] or '-'}", markup=False)
    out.print(f"  progress: {state['progress'] or '-'}", markup=False)
    out.print(
        f"  current:  {len(state['current'])}/{state['desired']} "
        f"({', '.join(state['current']) or '-'})",
        markup=False,
    )
    if state["outdated"]:
        out.print(f"  outdated: {', '.join(state['outdated'])}", markup=False)
    if state.get("stable_release"):
        out.print(f"  rollback target: v{state['stable_release']}")
    if state.get("reason"):
        out.print(f"  reason:   {state['reason']}", markup=False)


def routes(view: dict[str, Any]) -> None:
    config = view["config"]
    live = view.get("live") or {}
    stale = " [red](stale: the gateway lost the control plane)[/]" if live.get("stale") else ""
    out.print(
        f"gateway on {config.get('listen')} — config v{view['version']} from {view['source']}"
        + (f", serving v{live.get('version')}" if live.get("version") else "")
        + stale
    )
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ROUTE", "MATCH", "TARGET", "PRIORITY"):
        table.add_column(column)
    for r in config.get("routes", []):
        match = r.get("match") or {}
        text = " ".join(f"{k}={v}" for k, v in sorted(match.items())) or "*"
        target = r.get("service") or ", ".join(str(u) for u in r.get("upstreams", []))
        table.add_row(r["name"], text, target, str(r.get("priority", 0)))
    out.print(table)


def json_or_table(result: Any, as_json: bool, kind: str) -> None:
    """Telemetry answers: JSON as asked, else a compact table of the rows it holds."""
    if as_json:
        write(json.dumps(result, indent=2))
        return
    rows = result
    if isinstance(result, dict):
        rows = next((v for v in result.values() if isinstance(v, list)), [result])
    if not isinstance(rows, list) or not rows:
        out.print(f"no {kind} in this window")
        return
    columns = [k for k, v in rows[0].items() if not isinstance(v, dict | list)][:8]
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column.upper())
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    out.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)
