"""Alert rules: observations + ``now`` in, Firing/Resolved decisions with their evidence out.

Theory of operation. A `Rule` measures one thing per *subject* (a route objective, a service,
an instance, a host) and says whether it is *breached* and whether it is *clear*. Each
(rule, subject) pair is an alert with a small state machine, Prometheus's shape
(``for:``/``keep_firing_for:``) plus a threshold band:

    inactive ──breach──▶ pending ──breach for `for_s`──▶ FIRING ──clear──▶ resolving
        ▲                   │ no breach                     ▲                │ clear for
        └───────────────────┘                               └──not clear─────┘ `keep_firing_for_s`
                                                                              ▼
                                                                          RESOLVED (→ inactive)

Only the two capitalised moves are decisions (an event and a webhook each); a pending alert
that stops breaching vanishes silently. Hysteresis has two parts so an alert does not flap:
time (``for_s`` before firing, ``keep_firing_for_s`` of continuous clear before resolving) and
level (``clear`` is stricter than "not breached": an above-threshold rule clears only at or
below ``threshold × (1 − hysteresis)``, a headroom rule only at or above ``threshold × (1 +
hysteresis)``). Invariants: a subject fires at most once until it resolves; every Resolved
follows a Firing of the same alert id; a rule whose input is unknown (``None``: the collector
did not answer) changes nothing — missing data neither fires nor resolves; a subject that has
gone from an input that *was* observed (an instance deleted, a route removed) counts as clear.

Measures (windows are whole minutes ending with the current one, as in `slo_report`):

* ``slo_burn`` — the Google SRE workbook's multiwindow, multi-burn-rate alert (ch. 5 §6):
  burn over a window = (bad / total) / (1 − target); breached when the long *and* the short
  window burn above the threshold (page: 1 h + 5 min over 14.4; ticket: 6 h + 30 min over 6).
  The short window makes it clear soon after the fault ends, so its level band is 0.
* ``error_rate`` — errors / calls of a service's entry spans over ``window_s`` (at least
  ``min_calls`` calls, else unknown);
* ``latency`` — the ``quantile`` of the same spans' histogram (`rollup.quantile`) in µs;
* ``instance_failed`` — an instance in phase ``failed``; clear once it is in ``run`` again
  (or gone), not merely restarting;
* ``host_down`` — a host whose last sample is older than ``threshold`` seconds;
* ``disk_headroom`` / ``memory_headroom`` — free fraction of a host's disk/memory below
  ``threshold``.

Pure: no clock, no I/O; iteration over subjects is sorted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import msgspec

from corral.telemetry.rollup import quantile

Kind = Literal[
    "slo_burn",
    "error_rate",
    "latency",
    "instance_failed",
    "host_down",
    "disk_headroom",
    "memory_headroom",
]
KINDS: tuple[str, ...] = (
    "slo_burn",
    "error_rate",
    "latency",
    "instance_failed",
    "host_down",
    "disk_headroom",
    "memory_headroom",
)
TELEMETRY_KINDS = frozenset({"slo_burn", "error_rate", "latency"})
HOST_KINDS = frozenset({"host_down", "disk_headroom", "memory_headroom"})
RESOLVED_KEPT = 50  # recently resolved alerts kept for `corral alerts`


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    threshold: float = 0.0  # see the module docstring for each kind's unit
    window_s: int = 300  # error_rate, latency; slo_burn: the long window
    short_window_s: int = 0  # slo_burn only
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    hysteresis: float = 0.1  # the level band, as a fraction of the threshold
    service: str = ""  # "" every service
    route: str = ""  # slo_burn: "" every route with an SLO
    quantile: float = 0.95  # latency
    min_calls: int = 10  # error_rate, latency: fewer calls in the window say nothing
    severity: str = "page"


PAGE_BURN = Rule("slo-burn-page", "slo_burn", 14.4, 3600, 300, severity="page")
TICKET_BURN = Rule("slo-burn-ticket", "slo_burn", 6.0, 6 * 3600, 1800, severity="ticket")
INSTANCE_FAILED = Rule("instance-failed", "instance_failed", severity="page")
DEFAULT_RULES: tuple[Rule, ...] = (PAGE_BURN, TICKET_BURN, INSTANCE_FAILED)


# -- observations --------------------------------------------------------------------------


class Minute(NamedTuple):
    """One minute of a service's entry spans (the rollups' cells summed)."""

    calls: int
    errors: int
    hist: Sequence[int]


class Tally(NamedTuple):
    """One minute of an SLO objective: requests, and how many were bad."""

    total: float
    bad: float


@dataclass(frozen=True)
class ObjectiveSeries:
    route: str
    kind: str  # availability | latency
    target: float  # fraction of good requests
    threshold_us: int  # latency objectives
    minutes: Mapping[int, Tally]  # minute index (µs // 60e6) → tally


@dataclass(frozen=True)
class InstanceObs:
    id: str
    service: str
    phase: str
    reason: str = ""
    since: float = 0.0


@dataclass(frozen=True)
class HostObs:
    last_sample_s: float
    mem_used: float = 0.0
    mem_total: float = 0.0
    disk_used: float = 0.0
    disk_total: float = 0.0


@dataclass(frozen=True)
class Observations:
    """What the adapter saw. ``None`` means "could not be observed": rules on it stand still."""

    minute: int  # the current minute index
    services: Mapping[str, Mapping[int, Minute]] | None = None
    objectives: Sequence[ObjectiveSeries] | None = None
    instances: Sequence[InstanceObs] | None = None
    hosts: Mapping[str, HostObs] | None = None
    examples: Mapping[str, Sequence[str]] = field(default_factory=dict)  # service → trace ids
    # the services the manifest declares (None: unknown). A declared service that sends no
    # spans at all is silent, not healthy: its traffic alerts stay as they are.
    declared: frozenset[str] | None = None


# -- records -------------------------------------------------------------------------------


class Evidence(msgspec.Struct):
    metric: str  # e.g. "error_rate", "burn_rate", "latency_p95_us"
    value: float
    threshold: float
    window_s: int = 0
    details: dict[str, float] = {}  # e.g. each window's burn rate, calls, errors
    trace_ids: list[str] = []  # examples; the adapter fills them in


class Alert(msgspec.Struct):
    id: str  # "<rule>/<subject>"
    rule: str
    kind: str
    severity: str
    subject: str
    service: str = ""
    state: str = "pending"  # pending | firing | resolving | resolved
    since: float = 0.0  # when the current state began
    fired_at: float = 0.0
    resolved_at: float = 0.0
    summary: str = ""
    evidence: Evidence | None = None


class Decision(NamedTuple):
    action: Literal["firing", "resolved"]
    alert: Alert


class Check(NamedTuple):
    subject: str
    service: str
    breach: bool
    clear: bool
    evidence: Evidence
    summary: str


# -- window math -------------------------------------------------------------------------


def window_sum(minutes: Mapping[int, Tally], now_minute: int, window_s: int) -> Tally:
    """Σ over the `window_s // 60` whole minutes ending with `now_minute` (inclusive)."""
    span = max(1, window_s // 60)
    total = bad = 0.0
    for minute, t in minutes.items():
        if 0 <= now_minute - minute < span:
            total += t.total
            bad += t.bad
    return Tally(total, bad)


def burn_rate(t: Tally, target: float) -> float:
    """How fast the error budget goes: 1.0 spends exactly all of it over the SLO window."""
    if t.total <= 0:
        return 0.0
    return (t.bad / t.total) / (1.0 - target)


def traffic(minutes: Mapping[int, Minute], now_minute: int, window_s: int) -> Minute:
    span = max(1, window_s // 60)
    calls = errors = 0
    hist: list[int] = []
    for minute, m in minutes.items():
        if 0 <= now_minute - minute < span:
            calls += m.calls
            errors += m.errors
            if len(hist) < len(m.hist):
                hist.extend([0] * (len(m.hist) - len(hist)))
            for i, n in enumerate(m.hist):
                hist[i] += n
    return Minute(calls, errors, hist)


def _label(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def _pct(value: float) -> str:
    return f"{value * 100:.3g}%"


def _ms(us: float) -> str:
    return f"{us / 1000:.4g}ms"


# -- checks per kind -------------------------------------------------------------------------


def _slo_checks(rule: Rule, obs: Observations) -> list[Check] | None:
    if obs.objectives is None:
        return None
    out = []
    for o in obs.objectives:
        if rule.route and o.route != rule.route:
            continue
        long = window_sum(o.minutes, obs.minute, rule.window_s)
        short = window_sum(o.minutes, obs.minute, rule.short_window_s)
        long_burn = burn_rate(long, o.target)
        short_burn = burn_rate(short, o.target)
        breach = long_burn > rule.threshold and short_burn > rule.threshold
        objective = "availability" if o.kind == "availability" else f"latency≤{_ms(o.threshold_us)}"
        subject = f"{o.route}:{objective}"
        wl, ws = _label(rule.window_s), _label(rule.short_window_s)
        evidence = Evidence(
            metric="burn_rate",
            value=round(min(long_burn, short_burn), 4),
            threshold=rule.threshold,
            window_s=rule.window_s,
            details={
                f"burn_{wl}": round(long_burn, 4),
                f"burn_{ws}": round(short_burn, 4),
                f"requests_{wl}": long.total,
                f"bad_{wl}": round(long.bad, 3),
                "target": o.target,
                # the adapter picks example traces slower than this for a latency objective
                **({"threshold_us": float(o.threshold_us)} if o.kind == "latency" else {}),
            },
        )
        summary = (
            f"route {o.route} {objective} (target {_pct(o.target)}) burns its error budget "
            f"{long_burn:.3g}× over {wl} and {short_burn:.3g}× over {ws} "
            f"(threshold {rule.threshold:g}×)"
        )
        out.append(Check(subject, "", breach, not breach, evidence, summary))
    return out


def _traffic_checks(rule: Rule, obs: Observations) -> list[Check] | None:
    if obs.services is None:
        return None
    out = []
    band_low = rule.threshold * (1.0 - rule.hysteresis)
    for service in sorted(obs.services):
        if rule.service and service != rule.service:
            continue
        t = traffic(obs.services[service], obs.minute, rule.window_s)
        if t.calls < rule.min_calls:
            # Too little traffic to say: neither a breach nor (for a firing alert) a recovery.
            continue
        window = _label(rule.window_s)
        details = {"calls": float(t.calls), "errors": float(t.errors)}
        if rule.kind == "error_rate":
            value = t.errors / t.calls
            metric, shown, limit = "error_rate", _pct(value), _pct(rule.threshold)
        else:
            value = quantile(t.hist, rule.quantile)
            metric = f"latency_p{round(rule.quantile * 100):d}_us"
            shown, limit = _ms(value), _ms(rule.threshold)
        evidence = Evidence(metric, round(value, 6), rule.threshold, rule.window_s, details)
        summary = f"service {service}: {metric} {shown} over {window} (threshold {limit})"
        out.append(
            Check(service, service, value > rule.threshold, value <= band_low, evidence, summary)
        )
    return out


def _instance_checks(rule: Rule, obs: Observations) -> list[Check] | None:
    if obs.instances is None:
        return None
    out = []
    for i in sorted(obs.instances, key=lambda i: i.id):
        if rule.service and i.service != rule.service:
            continue
        failed = i.phase == "failed"
        evidence = Evidence("instance_phase", 1.0 if failed else 0.0, 1.0)
        summary = f"instance {i.id} of {i.service} is {i.phase}" + (
            f": {i.reason}" if i.reason else ""
        )
        # Clear only in `run`: a failed instance passes through provision on each retry.
        out.append(Check(i.id, i.service, failed, i.phase == "run", evidence, summary))
    return out


def _host_checks(rule: Rule, obs: Observations, now: float) -> list[Check] | None:
    if obs.hosts is None:
        return None
    out = []
    for host in sorted(obs.hosts):
        h = obs.hosts[host]
        if rule.kind == "host_down":
            age = max(0.0, now - h.last_sample_s)
            down = age > rule.threshold
            evidence = Evidence("seconds_since_sample", round(age, 1), rule.threshold)
            summary = f"host {host}: no sample for {age:.0f}s (threshold {rule.threshold:g}s)"
            out.append(Check(host, "", down, not down, evidence, summary))
            continue
        disk = rule.kind == "disk_headroom"
        used, total = (h.disk_used, h.disk_total) if disk else (h.mem_used, h.mem_total)
        if total <= 0:
            continue
        free = max(0.0, 1.0 - used / total)
        what = "disk" if rule.kind == "disk_headroom" else "memory"
        evidence = Evidence(
            f"{what}_free_ratio", round(free, 4), rule.threshold, 0, {"used": used, "total": total}
        )
        summary = f"host {host}: {what} {_pct(free)} free (threshold {_pct(rule.threshold)})"
        clear = free >= rule.threshold * (1.0 + rule.hysteresis)
        out.append(Check(host, "", free < rule.threshold, clear, evidence, summary))
    return out


def checks(rule: Rule, obs: Observations, now: float) -> list[Check] | None:
    """Every subject `rule` measures now, or None when its input is unknown."""
    if rule.kind == "slo_burn":
        return _slo_checks(rule, obs)
    if rule.kind in ("error_rate", "latency"):
        return _traffic_checks(rule, obs)
    if rule.kind == "instance_failed":
        return _instance_checks(rule, obs)
    if rule.kind in HOST_KINDS:
        return _host_checks(rule, obs, now)
    raise ValueError(f"unknown alert kind {rule.kind!r}")


# -- the state machine -----------------------------------------------------------------------


class Outcome(NamedTuple):
    alerts: dict[str, Alert]  # every pending, firing and resolving alert, by id
    decisions: list[Decision]


def evaluate(
    rules: Iterable[Rule], obs: Observations, active: Mapping[str, Alert], now: float
) -> Outcome:
    """One evaluation pass: the alerts that are now pending/firing/resolving, and what fired or
    resolved in this pass (in rule order, subjects sorted)."""
    out: dict[str, Alert] = {}
    decisions: list[Decision] = []
    for rule in rules:
        prefix = f"{rule.name}/"
        mine = {k: a for k, a in active.items() if k.startswith(prefix)}
        found = checks(rule, obs, now)
        if found is None:
            out.update(mine)  # unknown input: nothing moves
            continue
        seen: set[str] = set()
        for check in found:
            alert_id = prefix + check.subject
            seen.add(alert_id)
            alert, decision = _step(rule, check, mine.get(alert_id), alert_id, now)
            if alert is not None:
                out[alert_id] = alert
            if decision is not None:
                decisions.append(decision)
        for alert_id in sorted(set(mine) - seen):
            alert = mine[alert_id]
            if alert.state == "pending":
                continue
            quiet = obs.services is not None and alert.service in obs.services
            silent = obs.declared is None or alert.service in obs.declared
            if _is_traffic_kind(rule.kind) and (quiet or silent):
                # Below min_calls, or no spans at all from a service that still exists: the
                # window says nothing (a service that went down must not resolve its alert).
                out[alert_id] = alert
                continue
            gone = Check(
                alert.subject,
                alert.service,
                False,
                True,
                alert.evidence or Evidence("gone", 0.0, 0.0),
                f"{alert.subject} is no longer observed",
            )
            kept, decision = _step(rule, gone, alert, alert_id, now)
            if kept is not None:
                out[alert_id] = kept
            if decision is not None:
                decisions.append(decision)
    return Outcome(out, decisions)


def _is_traffic_kind(kind: str) -> bool:
    return kind in ("error_rate", "latency")


def _new(rule: Rule, check: Check, alert_id: str, state: str, now: float) -> Alert:
    return Alert(
        id=alert_id,
        rule=rule.name,
        kind=rule.kind,
        severity=rule.severity,
        subject=check.subject,
        service=check.service,
        state=state,
        since=now,
        summary=check.summary,
        evidence=check.evidence,
    )


def _step(
    rule: Rule, check: Check, alert: Alert | None, alert_id: str, now: float
) -> tuple[Alert | None, Decision | None]:
    if alert is None or alert.state == "pending":
        if not check.breach:
            return None, None
        pending = alert or _new(rule, check, alert_id, "pending", now)
        if now - pending.since >= rule.for_s:
            fired = msgspec.structs.replace(
                pending,
                state="firing",
                since=now,
                fired_at=now,
                summary=check.summary,
                evidence=check.evidence,
            )
            return fired, Decision("firing", fired)
        waiting = msgspec.structs.replace(pending, summary=check.summary, evidence=check.evidence)
        return waiting, None
    if alert.state == "firing":
        if not check.clear:
            latest = msgspec.structs.replace(alert, summary=check.summary, evidence=check.evidence)
            return latest, None
        resolving = msgspec.structs.replace(alert, state="resolving", since=now)
        return _maybe_resolve(rule, check, resolving, now)
    # resolving
    if not check.clear:
        return msgspec.structs.replace(alert, state="firing", since=now), None
    return _maybe_resolve(rule, check, alert, now)


def _maybe_resolve(
    rule: Rule, check: Check, alert: Alert, now: float
) -> tuple[Alert | None, Decision | None]:
    if now - alert.since < rule.keep_firing_for_s:
        return alert, None
    resolved = msgspec.structs.replace(
        alert,
        state="resolved",
        since=now,
        resolved_at=now,
        summary=f"resolved: {check.summary}",
    )
    return None, Decision("resolved", resolved)


def remember(resolved: Sequence[Alert], decisions: Sequence[Decision]) -> list[Alert]:
    """The recently resolved list after `decisions`: newest first, at most RESOLVED_KEPT."""
    new = [d.alert for d in reversed(decisions) if d.action == "resolved"]
    return (new + list(resolved))[:RESOLVED_KEPT]
