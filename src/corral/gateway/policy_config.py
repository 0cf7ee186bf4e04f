"""Traffic-policy configuration: pydantic models for the manifest's ``gateway.policies``
(named policies shared by routes) and for the policy fields of ``gateway.routes[*]``.

Shape (every field optional; durations and sizes as elsewhere in the manifest)::

    gateway:
      policies:
        rate_limits:
          per-client: {rate: 100, per: 1s, burst: 200, key: client_ip, scope: route}
          api-key:    {algorithm: sliding_window, limit: 1000, window: 1m,
                       key: header:x-api-key, scope: global}
        hot_params:
          product:    {key: param:id, limit: 50, window: 1s, overrides: {"42": 500}}
        breakers:
          default:    {window: 10s, min_calls: 20, error_rate: 50, slow_call_duration: 2s,
                       slow_call_rate: 80, open_time: 30s, half_open_probes: 3}
        concurrency:
          orders-svc: {max_in_flight: 200, queue: 50, queue_timeout: 200ms, scope: service}
      adaptive: {cpu: 80, loop_lag: 50ms}        # BBR-style shedding by criticality
      cache: {max_bytes: 64MiB}
      tier: {period: 1s, stale_after: 3s}         # tier-wide limit exchange
      routes:
        - name: orders
          criticality: critical                   # critical | normal | best_effort
          rate_limits: [per-client, {rate: 5, key: "param:id"}]   # names or inline
          hot_params: [product]
          concurrency: [orders-svc, {max_in_flight: 20}]   # per service, per route
          breaker: default                        # or inline
          split:
            to: [{release: 8, weight: 5}, {release: 7, weight: 95}]  # canary first
            sticky_on: cookie:uid
            targets: [{header: X-Canary, value: "1", to: release-8}]
            mirror: {to: {service: orders-shadow}, percent: 10}
          cache: {ttl: 30s, max_entry_bytes: 1MiB}
          validation:                             # refused before any upstream call
            body: {type: object, required: [items], properties: {...}}   # JSON Schema
            headers: [x-api-key]                  # required request headers
            query: [page]                         # required query parameters
            content_types: [application/json]
            max_body_bytes: 64KiB
          mirror: {service: orders-shadow, percent: 10}   # or upstreams: [HOST:PORT]
          enabled: true                           # admin switches: false → 503 "turned off"
          force_fallback: false                   # true → every request gets the fallback
          disabled: [cache]                       # features turned off on this route
          fallback: {status: 200, body: '{"items": []}',      # breaker open or no endpoint
                     headers: {Content-Type: application/json}}
          plugins:                                # ordered; docs/plugins.md
            - {module: "myplugins.auth:deny", budget: 1ms, config: {key: secret}}
            - {process: "node examples/plugins/tag.js", timeout: 5ms}

(``criticality`` is the shedding priority; the route's existing ``priority`` stays the
integer that orders matching.) Models forbid unknown keys and are strict, as the gateway
config's are. ``validate_policy_data`` checks a gateway section's policy fields — on their own,
ignoring every other key — and reports every problem at its path at once: schema problems via
``corral.manifest.load``'s renderer, then references that need the whole config (a route naming
an unknown policy, ``scope: service`` on a route without a service, a ``param:`` key the route's
``path_template`` lacks, a split in standalone mode). To merge into ``gateway.config``: add
``RoutePolicies``' fields to ``Route`` and ``GatewayPolicies``' to ``GatewayConfig`` (or
inherit them), and extend ``validate_gateway_data`` with ``policy_reference_problems``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from corral.errors import ManifestError, Problem
from corral.manifest.load import _schema_problems
from corral.manifest.schema import Duration, PositiveDuration, Size, describe, problem

__all__ = [
    "FEATURES",
    "GATEWAY_POLICY_FIELDS",
    "ROUTE_POLICY_FIELDS",
    "Adaptive",
    "BreakerPolicy",
    "CachePolicy",
    "ConcurrencyPolicy",
    "Fallback",
    "GatewayPolicies",
    "HotParamPolicy",
    "Mirror",
    "Policies",
    "PolicyConfig",
    "RateLimitPolicy",
    "RouteMirror",
    "RoutePolicies",
    "Split",
    "SplitBackend",
    "SplitTarget",
    "Tier",
    "Validation",
    "policy_reference_problems",
    "validate_policy_data",
]

KEY_SPEC = re.compile(
    r"^(client_ip|none|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|cookie:[^\s;=,]+|param:[A-Za-z_]\w*)$"
)
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_FRAMING_HEADERS = frozenset(("content-length", "transfer-encoding", "connection"))
POLICY_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62})$")
TEMPLATE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_KEY_HINT = "use client_ip, header:NAME, cookie:NAME, param:NAME or none"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _header_name(value: object) -> object:
    if isinstance(value, str) and not HEADER_NAME.match(value):
        raise problem(f"{value!r} is not a valid header name", "use letters, digits and -")
    return value


def _key_spec(value: object) -> object:
    if isinstance(value, str) and not KEY_SPEC.match(value):
        raise problem(f"{value!r} is not a key", _KEY_HINT)
    return value


KeySpec = Annotated[str, BeforeValidator(_key_spec)]
Percent = Annotated[float, Field(gt=0, le=100)]
Criticality = Literal["critical", "normal", "best_effort"]


def _policy_name(value: object) -> object:
    if isinstance(value, str) and not POLICY_NAME.match(value):
        raise problem(f"{value!r} is not a policy name", "use letters, digits, . _ and -")
    return value


PolicyName = Annotated[str, BeforeValidator(_policy_name)]


class RateLimitPolicy(_Model):
    """A rate limit: token bucket (rate per ``per``, ``burst``) or sliding-window counter
    (``limit`` per ``window``), per ``key``, counted over ``scope``."""

    algorithm: Literal["token_bucket", "sliding_window"] = "token_bucket"
    rate: float | None = Field(default=None, gt=0, description="token bucket: requests per `per`")
    per: PositiveDuration = Field(default=1.0, description="token bucket: the rate's period")
    burst: int | None = Field(default=None, ge=1, description="token bucket: default ceil(rate)")
    limit: int | None = Field(default=None, ge=1, description="sliding window: requests/window")
    window: PositiveDuration = Field(default=1.0, description="sliding window: its length")
    key: KeySpec = Field(default="client_ip", description=_KEY_HINT)
    scope: Literal["route", "service", "global"] = Field(
        default="route", description="whose requests share the limit"
    )
    max_keys: int = Field(default=100_000, ge=1, description="keys remembered per worker (LRU)")

    @model_validator(mode="after")
    def _fits_algorithm(self) -> RateLimitPolicy:
        if self.algorithm == "token_bucket":
            if self.rate is None:
                raise problem("a token bucket needs rate", "e.g. rate: 100, per: 1s, burst: 200")
            if self.limit is not None:
                raise problem("limit belongs to sliding_window", "use rate and burst")
        else:
            if self.limit is None:
                raise problem("a sliding window needs limit", "e.g. limit: 1000, window: 1m")
            if self.rate is not None or self.burst is not None:
                raise problem("rate and burst belong to token_bucket", "use limit and window")
        return self

    def tokens_per_second(self) -> float:
        return (self.rate or 0.0) / self.per


class HotParamPolicy(_Model):
    """At most ``limit`` requests per ``window`` for any one value of ``key``."""

    key: KeySpec = Field(description="header:NAME, cookie:NAME or param:NAME")
    limit: int = Field(ge=1, description="requests per value per window")
    window: PositiveDuration = 1.0
    overrides: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="per-value limits"
    )
    top_k: int = Field(default=16, ge=1, le=1000, description="hot values reported")

    @model_validator(mode="after")
    def _keyed(self) -> HotParamPolicy:
        if self.key in ("none", "client_ip"):
            raise problem(
                f"key {self.key!r} is not a parameter",
                "use header:NAME, cookie:NAME or param:NAME; per-client limits are rate_limits",
            )
        return self


class BreakerPolicy(_Model):
    window: PositiveDuration = Field(default=10.0, description="sliding window of results")
    min_calls: int = Field(default=20, ge=1, description="calls in the window before it trips")
    error_rate: Percent = Field(default=50.0, description="% failed calls that opens it")
    slow_call_duration: PositiveDuration = Field(default=5.0, description="a slow call takes")
    slow_call_rate: Percent = Field(default=100.0, description="% slow calls that opens it")
    open_time: PositiveDuration = Field(default=30.0, description="refusing before a probe")
    max_open_time: PositiveDuration = Field(default=300.0, description="open time cap")
    half_open_probes: int = Field(default=3, ge=1, le=100)

    @model_validator(mode="after")
    def _times(self) -> BreakerPolicy:
        if self.max_open_time < self.open_time:
            raise problem(
                f"max_open_time {self.max_open_time:g}s is below open_time {self.open_time:g}s",
                "raise max_open_time or lower open_time",
            )
        return self


class ConcurrencyPolicy(_Model):
    max_in_flight: int = Field(ge=1, description="requests at once, per worker")
    queue: int = Field(default=0, ge=0, le=10_000, description="requests that may wait")
    queue_timeout: PositiveDuration = Field(default=0.5, description="longest wait in the queue")
    scope: Literal["route", "service"] = "route"
    adaptive: bool = Field(default=False, description="gradient limit per upstream")
    min_limit: int = Field(default=4, ge=1, description="adaptive: lowest limit")

    @model_validator(mode="after")
    def _bounds(self) -> ConcurrencyPolicy:
        if self.adaptive and self.min_limit > self.max_in_flight:
            raise problem(
                f"min_limit {self.min_limit} is above max_in_flight {self.max_in_flight}",
                "lower min_limit",
            )
        return self


class SplitBackend(_Model):
    """One side of a split: a release of the route's service, or another service."""

    release: int | None = Field(default=None, ge=1)
    service: str | None = None
    weight: int = Field(ge=0, le=10_000)

    @model_validator(mode="after")
    def _one(self) -> SplitBackend:
        if (self.release is None) == (self.service is None):
            raise problem("set exactly one of release and service", "")
        return self

    @property
    def name(self) -> str:
        return f"release-{self.release}" if self.release is not None else str(self.service)


class SplitTarget(_Model):
    header: str | None = None
    cookie: str | None = None
    value: str
    to: str = Field(description="a backend: release-N or a service name")

    @model_validator(mode="after")
    def _one(self) -> SplitTarget:
        if (self.header is None) == (self.cookie is None):
            raise problem("set exactly one of header and cookie", "e.g. header: X-Canary")
        return self


class MirrorTarget(_Model):
    release: int | None = Field(default=None, ge=1)
    service: str | None = None

    @model_validator(mode="after")
    def _one(self) -> MirrorTarget:
        if (self.release is None) == (self.service is None):
            raise problem("set exactly one of release and service", "")
        return self


class Mirror(_Model):
    to: MirrorTarget
    percent: Percent = 100.0


class Split(_Model):
    to: list[SplitBackend] = Field(min_length=1, description="backends, canary first")
    sticky_on: KeySpec | None = Field(default=None, description="user key: sticky assignment")
    targets: list[SplitTarget] = Field(default_factory=list)
    mirror: Mirror | None = None

    @model_validator(mode="after")
    def _backends(self) -> Split:
        names = [b.name for b in self.to]
        if len(set(names)) != len(names):
            raise problem("a backend appears twice", "list each release or service once")
        if sum(b.weight for b in self.to) <= 0:
            raise problem("the weights add up to 0", "give at least one backend a weight")
        for target in self.targets:
            if target.to not in names:
                close = difflib.get_close_matches(target.to, names, n=1, cutoff=0.5)
                hint = f"did you mean {close[0]!r}?" if close else "backends: " + ", ".join(names)
                raise problem(f"target sends to {target.to!r}, which is not a backend", hint)
        if self.sticky_on == "none":
            raise problem("sticky_on: none keeps no one sticky", "remove it, or name a key")
        return self


class CachePolicy(_Model):
    ttl: Duration = Field(default=0.0, description="lifetime when the response sets none")
    max_entry_bytes: Size = Field(default=1 << 20, ge=1, description="larger is not cached")


class Fallback(_Model):
    """A static response served instead of an error when the route's breaker is open or
    none of its endpoints is healthy (a degraded mode the route declares)."""

    status: int = Field(default=503, ge=200, le=599, description="the status to answer")
    body: str = Field(default="", description="the body, sent as UTF-8")
    headers: dict[str, str] = Field(
        default_factory=dict, description="response headers, e.g. Content-Type"
    )

    @model_validator(mode="after")
    def _headers(self) -> Fallback:
        for name, value in self.headers.items():
            if not HEADER_NAME.match(name):
                raise problem(f"{name!r} is not a valid header name", "use letters, digits and -")
            if name.lower() in _FRAMING_HEADERS:
                raise problem(f"fallback header {name!r} is set by the gateway", "leave it out")
            if "\r" in value or "\n" in value:
                raise problem(f"header {name!r} has a line break", "keep values on one line")
        return self


def _schema_compiles(value: object) -> object:
    if isinstance(value, dict):
        from corral.gateway.validation import SchemaProblem, compile_validator

        try:
            compile_validator(body=value)
        except SchemaProblem as error:
            where = f"at {error.path}" if error.path else "at its root"
            raise problem(f"the body schema {where}: {error.message}", error.hint) from None
    return value


class Validation(_Model):
    """Checks a request must pass before it goes upstream (``corral.gateway.validation``)."""

    body: Annotated[dict[str, Any], BeforeValidator(_schema_compiles)] | None = Field(
        default=None, description="JSON Schema of the request body (a supported subset)"
    )
    headers: list[Annotated[str, BeforeValidator(_header_name)]] = Field(
        default_factory=list, description="request headers that must be present"
    )
    query: list[str] = Field(default_factory=list, description="query parameters required")
    content_types: list[str] = Field(
        default_factory=list, description="media types a body may have; empty: any"
    )
    max_body_bytes: Size | None = Field(default=None, ge=0, description="larger: 413")


def _mirror_address(value: object) -> object:
    if isinstance(value, str):
        from corral.gateway.config import parse_address

        try:
            parse_address(value)
        except ValueError as error:
            raise problem(str(error), "write it like 127.0.0.1:9001") from None
    return value


class RouteMirror(_Model):
    """A shadow copy of a share of the route's requests; the shadow's answer is discarded."""

    service: str | None = Field(default=None, description="platform mode: another service")
    upstreams: list[Annotated[str, BeforeValidator(_mirror_address)]] = Field(
        default_factory=list, description="static addresses"
    )
    percent: Percent = Field(default=100.0, description="share of requests copied")
    max_in_flight: int = Field(default=64, ge=1, description="copies at once; more are skipped")
    max_body_bytes: Size = Field(default=64 * 1024, ge=0, description="larger bodies: no copy")
    timeout: PositiveDuration = Field(default=5.0, description="a copy is dropped after")

    @model_validator(mode="after")
    def _one(self) -> RouteMirror:
        if (self.service is None) == (not self.upstreams):
            raise problem("set exactly one of service and upstreams", "e.g. service: shadow")
        return self


FEATURES = (
    "rate_limits",
    "hot_params",
    "concurrency",
    "breaker",
    "split",
    "cache",
    "validation",
    "mirror",
)
Feature = Literal[
    "rate_limits",
    "hot_params",
    "concurrency",
    "breaker",
    "split",
    "cache",
    "validation",
    "mirror",
]


class Adaptive(_Model):
    cpu: Percent = Field(default=80.0, description="CPU % that counts as hot")
    loop_lag: PositiveDuration = Field(default=0.05, description="event-loop lag that is hot")
    window: PositiveDuration = Field(default=5.0, description="throughput/latency window")
    cool_off: Duration = Field(default=1.0, description="keep shedding this long after hot")


class Tier(_Model):
    period: PositiveDuration = Field(default=1.0, description="demand exchange period")
    stale_after: PositiveDuration = Field(default=3.0, description="drop silent workers after")

    @model_validator(mode="after")
    def _order(self) -> Tier:
        if self.stale_after <= self.period:
            raise problem("stale_after must exceed period", "e.g. period: 1s, stale_after: 3s")
        return self


class CacheStore(_Model):
    max_bytes: Size = Field(default=64 << 20, ge=0, description="per worker; 0 turns it off")


class Policies(_Model):
    rate_limits: dict[PolicyName, RateLimitPolicy] = Field(default_factory=dict)
    hot_params: dict[PolicyName, HotParamPolicy] = Field(default_factory=dict)
    breakers: dict[PolicyName, BreakerPolicy] = Field(default_factory=dict)
    concurrency: dict[PolicyName, ConcurrencyPolicy] = Field(default_factory=dict)


def _named_tag(value: object) -> str | None:
    if value is None:
        return "~none"
    if isinstance(value, str):
        return "~name"
    if isinstance(value, dict | BaseModel):
        return "~inline"
    return None


def _named_or_inline(example: str) -> Discriminator:
    return Discriminator(
        _named_tag,
        custom_error_type="corral_expected",
        custom_error_message="expected a policy name or an inline policy",
        custom_error_context={"hint": example},
    )


_Name = Annotated[str, Tag("~name")]
RateLimitRef = Annotated[
    _Name | Annotated[RateLimitPolicy, Tag("~inline")],
    _named_or_inline("e.g. per-client, or {rate: 10, key: client_ip}"),
]
HotParamRef = Annotated[
    _Name | Annotated[HotParamPolicy, Tag("~inline")],
    _named_or_inline("e.g. product, or {key: param:id, limit: 50}"),
]
# ``| None`` sits inside: a Discriminator's context dict cannot be hashed into a Union.
OptionalBreakerRef = Annotated[
    _Name | Annotated[BreakerPolicy, Tag("~inline")] | Annotated[None, Tag("~none")],
    _named_or_inline("e.g. default, or {error_rate: 50, open_time: 30s}"),
]
ConcurrencyRef = Annotated[
    _Name | Annotated[ConcurrencyPolicy, Tag("~inline")],
    _named_or_inline("e.g. orders-svc, or {max_in_flight: 100}"),
]


Phase = Literal["on_request", "on_response_headers", "on_body_chunk", "on_log"]
PHASES: tuple[Phase, ...] = ("on_request", "on_response_headers", "on_body_chunk", "on_log")


class PluginSpec(_Model):
    """One plugin of a route (docs/plugins.md): in-process ``module: "pkg.mod:attr"`` (a
    function or a class) or out-of-process ``process: "node tag.js"``."""

    module: str | None = Field(default=None, description='"pkg.mod:function" or a class')
    process: str | None = Field(default=None, description="command line of a plugin process")
    socket: str | None = Field(default=None, description="Unix socket path of the process")
    phases: list[Phase] = Field(default_factory=list, description="default: what it defines")
    budget: PositiveDuration = Field(default=0.001, description="in-process time per call")
    timeout: PositiveDuration = Field(default=0.005, description="out-of-process reply time")
    fail_closed: bool = Field(default=False, description="timeout → 503 instead of continue")
    config: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one(self) -> PluginSpec:
        if (self.module is None) == (self.process is None):
            raise problem(
                "a plugin needs exactly one of module or process",
                'e.g. {module: "myplugins.auth:deny"} or {process: "node tag.js"}',
            )
        if self.module is not None and ":" not in self.module:
            raise problem(
                f"plugin module {self.module!r} does not name an attribute",
                'write "package.module:function" or "package.module:Class"',
            )
        if self.process is not None and (set(self.phases) - {"on_request"}):
            raise problem(
                "out-of-process plugins run in the on_request phase only",
                "drop phases, or write an in-process plugin for the response phases",
            )
        return self

    @property
    def label(self) -> str:
        return self.module or self.process or "?"


class RoutePolicies(_Model):
    """The policy fields of one route (merged into ``gateway.config.Route``)."""

    criticality: Criticality = Field(default="normal", description="shedding priority")
    rate_limits: list[RateLimitRef] = Field(default_factory=list)
    hot_params: list[HotParamRef] = Field(default_factory=list)
    concurrency: list[ConcurrencyRef] = Field(default_factory=list)
    breaker: OptionalBreakerRef = None
    split: Split | None = None
    cache: CachePolicy | None = None
    fallback: Fallback | None = None
    validation: Validation | None = None
    mirror: RouteMirror | None = None
    enabled: bool = Field(default=True, description="false: every request gets 503")
    force_fallback: bool = Field(default=False, description="serve the fallback (planned)")
    disabled: list[Feature] = Field(
        default_factory=list, description="policy features turned off on this route"
    )
    plugins: list[PluginSpec] = Field(default_factory=list, description="ordered")

    @model_validator(mode="after")
    def _switches(self) -> RoutePolicies:
        if self.force_fallback and self.fallback is None:
            raise problem(
                "force_fallback is on, but the route has no fallback",
                "add fallback: {status: 200, body: ...}, or turn the route off instead",
            )
        return self

    def has_policies(self) -> bool:
        """Whether the route needs the guarded request path (a fallback alone does not: it
        is served from the error path)."""
        return bool(
            self.rate_limits
            or self.hot_params
            or self.concurrency
            or self.breaker is not None
            or self.split is not None
            or self.cache is not None
        )


class GatewayPolicies(_Model):
    """The gateway-level policy fields (merged into ``gateway.config.GatewayConfig``)."""

    policies: Policies = Field(default_factory=Policies)
    adaptive: Adaptive | None = None
    cache: CacheStore = Field(default_factory=CacheStore)
    tier: Tier = Field(default_factory=Tier)
    plugins_generation: int = Field(
        default=0,
        ge=0,
        description="bumped by POST /api/v1/gateway/plugins/reload: re-import plugin modules",
    )


ROUTE_POLICY_FIELDS = tuple(RoutePolicies.model_fields)
GATEWAY_POLICY_FIELDS = tuple(GatewayPolicies.model_fields)


class PolicyConfig(BaseModel):
    """What ``validate_policy_data`` returns: the gateway's policies and each route's, by
    route name (routes without a name are skipped: the gateway config reports them)."""

    model_config = ConfigDict(frozen=True)

    gateway: GatewayPolicies
    routes: dict[str, RoutePolicies]


# --- validation ---------------------------------------------------------------------------


def _at(prefix: tuple[str | int, ...], *parts: str | int) -> str:
    text = ""
    for part in (*prefix, *parts):
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def validate_policy_data(
    data: object, *, source: str = "gateway config", mode: str = "standalone"
) -> PolicyConfig:
    """Validate the policy fields of a gateway section (other keys are ignored); raises one
    ``ManifestError`` listing every problem."""
    prefix: tuple[str | int, ...] = ()
    if isinstance(data, Mapping) and list(data) == ["gateway"]:
        data, prefix = data["gateway"], ("gateway",)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problem_ = Problem(
            _at(prefix), f"the gateway config must be a mapping, got {describe(data)}", ""
        )
        raise ManifestError([problem_], source=source)
    problems: list[Problem] = []
    gateway: GatewayPolicies | None = None
    try:
        gateway = GatewayPolicies.model_validate(
            {k: data[k] for k in GATEWAY_POLICY_FIELDS if k in data}
        )
    except ValidationError as error:
        problems.extend(_schema_problems(error.errors(include_url=False), GatewayPolicies, prefix))
    routes: dict[str, RoutePolicies] = {}
    raw_routes = data.get("routes")
    for index, raw in enumerate(raw_routes if isinstance(raw_routes, list) else []):
        if not isinstance(raw, Mapping):
            continue
        at = (*prefix, "routes", index)
        try:
            route = RoutePolicies.model_validate(
                {k: raw[k] for k in ROUTE_POLICY_FIELDS if k in raw}
            )
        except ValidationError as error:
            problems.extend(_schema_problems(error.errors(include_url=False), RoutePolicies, at))
            continue
        if isinstance(raw.get("name"), str):
            routes[raw["name"]] = route
    problems.extend(policy_reference_problems(data, prefix=prefix, mode=mode))
    if problems or gateway is None:
        raise ManifestError(list(dict.fromkeys(problems)), source=source)
    return PolicyConfig(gateway=gateway, routes=routes)


def policy_reference_problems(
    data: Mapping[Any, Any], *, prefix: tuple[str | int, ...] = (), mode: str = "standalone"
) -> list[Problem]:
    """Checks that need the whole gateway section, on the raw data (so they run even when
    other fields are broken)."""
    policies = data.get("policies")
    policies = policies if isinstance(policies, Mapping) else {}
    routes = data.get("routes")
    problems: list[Problem] = []
    for index, route in enumerate(routes if isinstance(routes, list) else []):
        if not isinstance(route, Mapping):
            continue
        at = (*prefix, "routes", index)
        has_service = route.get("service") is not None
        match = route.get("match")
        template = match.get("path_template") if isinstance(match, Mapping) else None
        params = TEMPLATE_PARAM.findall(template) if isinstance(template, str) else []
        for field, kind in (
            ("rate_limits", "rate_limits"),
            ("hot_params", "hot_params"),
            ("concurrency", "concurrency"),
            ("breaker", "breakers"),
        ):
            refs = route.get(field)
            items = list(enumerate(refs)) if isinstance(refs, list) else [(None, refs)]
            named = policies.get(kind)
            named = named if isinstance(named, Mapping) else {}
            for position, ref in items:
                where = (*at, field) if position is None else (*at, field, position)
                spec: object = ref
                if isinstance(ref, str):
                    if ref not in named:
                        problems.append(_unknown_policy(where, kind, ref, list(named)))
                        continue
                    spec = named[ref]
                if not isinstance(spec, Mapping):
                    continue
                problems.extend(_use_problems(where, spec, has_service, params, template))
        mirror = route.get("mirror")
        if isinstance(mirror, Mapping) and mirror.get("service") and mode == "standalone":
            problems.append(
                Problem(
                    _at(at, "mirror", "service"),
                    "standalone mode has no services to mirror to",
                    "list static upstreams: [HOST:PORT] instead",
                )
            )
        split = route.get("split")
        if isinstance(split, Mapping):
            if mode == "standalone":
                problems.append(
                    Problem(
                        _at(at, "split"),
                        "standalone mode has no releases or services to split between",
                        "run the gateway in platform mode, or route by match instead",
                    )
                )
            elif not has_service and _mentions_release(split):
                problems.append(
                    Problem(
                        _at(at, "split"),
                        "splits between releases, but the route has no service",
                        "add service: NAME, or split between services",
                    )
                )
            sticky = split.get("sticky_on")
            if isinstance(sticky, str):
                problems.extend(
                    _param_problems((*at, "split", "sticky_on"), sticky, params, template)
                )
    return problems


def _unknown_policy(where: tuple[str | int, ...], kind: str, ref: str, names: list[Any]) -> Problem:
    known = sorted(str(n) for n in names)
    close = difflib.get_close_matches(ref, known, n=1, cutoff=0.6)
    if close:
        hint = f"did you mean {close[0]!r}?"
    elif known:
        hint = f"policies.{kind} has: " + ", ".join(known)
    else:
        hint = f"define it under policies.{kind}, or write the policy inline"
    return Problem(_at(where), f"names {kind} policy {ref!r}, which is not defined", hint)


def _use_problems(
    where: tuple[str | int, ...],
    spec: Mapping[Any, Any],
    has_service: bool,
    params: list[str],
    template: object,
) -> list[Problem]:
    problems: list[Problem] = []
    if spec.get("scope") == "service" and not has_service:
        problems.append(
            Problem(
                _at(where),
                "has scope: service, but the route targets static upstreams",
                "use scope: route or global, or route to a service",
            )
        )
    key = spec.get("key")
    if isinstance(key, str):
        problems.extend(_param_problems(where, key, params, template))
    return problems


def _param_problems(
    where: tuple[str | int, ...], key: str, params: list[str], template: object = None
) -> list[Problem]:
    if not key.startswith("param:"):
        return []
    name = key[len("param:") :]
    if name in params:
        return []
    if isinstance(template, str):
        message = f"keys on path parameter {name!r}, which match.path_template lacks"
        hint = "parameters here: " + ", ".join(params) if params else "add {" + name + "}"
    else:
        message = f"keys on path parameter {name!r}, but the route has no path_template"
        hint = "match on path_template: /items/{" + name + "}"
    return [Problem(_at(where), message, hint)]


def _mentions_release(split: Mapping[Any, Any]) -> bool:
    backends = split.get("to")
    entries = list(backends) if isinstance(backends, list) else []
    mirror = split.get("mirror")
    if isinstance(mirror, Mapping):
        entries.append(mirror.get("to"))
    return any(isinstance(b, Mapping) and b.get("release") is not None for b in entries)
