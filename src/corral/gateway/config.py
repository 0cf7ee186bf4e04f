"""The gateway's configuration: pydantic models of what a user writes, and loading it.

One schema serves both modes (DESIGN.md, *Gateway configuration*): a standalone config file
(``corral gateway serve --config gw.yaml``) holds exactly what a manifest's ``gateway:`` section
holds — ``listen``, ``workers``, ``tls``, ``admin``, ``limits`` and ``routes`` — and a file may
also wrap it in a top-level ``gateway:`` key, so a manifest's section can be copied as is.

Every model forbids unknown keys and is strict about types, as the manifest's are. Durations
are float seconds and sizes int bytes once validated (``corral.manifest.units``). Problems are
reported all at once as one ``ManifestError`` whose paths read like ``routes[2].match.path``;
checks that need the whole config (unique route names, a route's target) run on the raw data
so they are reported even when other fields are broken.

A route targets either ``service`` (platform mode: that service's instances in phase ``run``)
or static ``upstreams`` (standalone mode); ``mode="standalone"`` refuses ``service``.

Traffic policies (``corral.gateway.policy_config``) are part of the same schema: a ``Route``
carries ``RoutePolicies``' fields (``criticality``, ``rate_limits``, ``hot_params``,
``concurrency``, ``breaker``, ``split``, ``cache``, ``fallback``) and ``GatewayConfig`` carries
``GatewayPolicies``' (``policies``, ``adaptive``, ``cache``, ``tier``), plus ``telemetry``
(edge spans to a Zipkin v2 collector) and ``access_log`` (a JSON-lines file). References
between them (a route naming an unknown policy…) are checked by ``policy_reference_problems``
with the other whole-config checks.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from corral.errors import ManifestError, NotFound, Problem
from corral.gateway.policy_config import (
    GatewayPolicies,
    RoutePolicies,
    policy_reference_problems,
)
from corral.manifest.load import _UNPARSED, _parse_yaml, _schema_problems
from corral.manifest.schema import Duration, PositiveDuration, Size, describe, problem

__all__ = [
    "METHODS",
    "AdaptiveConcurrency",
    "Admin",
    "GatewayConfig",
    "HeaderEdits",
    "HealthCheck",
    "Limits",
    "LoadBalancing",
    "Match",
    "Outlier",
    "Retries",
    "Rewrite",
    "Route",
    "Slo",
    "Telemetry",
    "Timeouts",
    "Tls",
    "Upstream",
    "load_gateway_config",
    "parse_address",
    "parse_gateway_config",
    "validate_gateway_data",
]

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
ROUTE_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62})$")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
HOST_PATTERN = re.compile(r"^(\*\.)?[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
TEMPLATE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
QUANTILE_KEY = re.compile(r"^p(\d{1,2}(\.\d{1,3})?)$")
SLO_MAX_WINDOW_S = 30 * 86400  # the collector's rollup retention (telemetry.store.Retention)
SLO_MIN_WINDOW_S = 3600  # the burn-rate alert windows run from 5 min to 6 h
HASH_ON = re.compile(r"^(client_ip|path|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|cookie:[^\s;=]+)$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def parse_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9001"``, ``"[::1]:80"``, ``"localhost:8080"``, ``":8080"`` → (host, port).

    Raises ``ValueError`` with a readable message; an empty host means every interface."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{text!r} is not host:port")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    elif not host:
        host = "0.0.0.0"
    elif not HOST_PATTERN.match(host):
        raise ValueError(f"{host!r} is not a host name or IP address")
    return host, port


def _address(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        parse_address(value)
    except ValueError as error:
        raise problem(str(error), "write it like 127.0.0.1:9001 or [::1]:9001") from None
    return value


Address = Annotated[str, BeforeValidator(_address)]


def _upper_method(value: object) -> object:
    if isinstance(value, str):
        upper = value.upper()
        if upper not in METHODS:
            close = difflib.get_close_matches(upper, METHODS, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else "methods: " + ", ".join(METHODS)
            raise problem(f"{value!r} is not an HTTP method", hint)
        return upper
    return value


Method = Annotated[str, BeforeValidator(_upper_method)]


def _header_name(value: object) -> object:
    if isinstance(value, str) and not HEADER_NAME.match(value):
        raise problem(f"{value!r} is not a valid header name", "use letters, digits and -")
    return value


HeaderName = Annotated[str, BeforeValidator(_header_name)]


def _path(value: object) -> object:
    if isinstance(value, str) and (not value.startswith("/") or any(c in value for c in " \t?#")):
        raise problem(
            f"{value!r} is not a request path",
            "start it with / and leave out spaces, ? and #",
        )
    return value


PathText = Annotated[str, BeforeValidator(_path)]


class Match(_Model):
    """Which requests a route takes; every given condition must hold."""

    host: str | None = Field(default=None, description="Host header: exact, or *.example.com")
    path: PathText | None = Field(default=None, description="exact path")
    path_prefix: PathText | None = Field(default=None, description="path prefix, on / bounds")
    path_template: PathText | None = Field(default=None, description="like /orders/{id}")
    methods: list[Method] = Field(default_factory=list, description="empty: any method")
    headers: dict[HeaderName, str] = Field(
        default_factory=dict, description="header values to require; '*' means present"
    )
    query: dict[str, str] = Field(
        default_factory=dict, description="query parameters to require; '*' means present"
    )

    @model_validator(mode="after")
    def _one_path_kind(self) -> Match:
        given = [k for k in ("path", "path_prefix", "path_template") if getattr(self, k)]
        if len(given) > 1:
            raise problem(
                f"sets {' and '.join(given)}; a route matches one kind of path",
                "keep one of path, path_prefix and path_template",
            )
        if self.host is not None and not HOST_PATTERN.match(self.host):
            raise problem(f"host {self.host!r} is not a host name", "like shop.local or *.shop")
        if self.path_template is not None:
            names = TEMPLATE_PARAM.findall(self.path_template)
            if len(set(names)) != len(names):
                raise problem("a template parameter appears twice", "name each {param} once")
            if "{" in TEMPLATE_PARAM.sub("", self.path_template):
                raise problem(
                    f"template {self.path_template!r} has a malformed {{param}}",
                    "write parameters like /orders/{id}",
                )
        return self


class Rewrite(_Model):
    """Change the path sent upstream: replace the matched prefix, or fill a template."""

    path_prefix: str | None = Field(default=None, description="replaces the matched prefix")
    path: str | None = Field(default=None, description="a new path; may use {param}s")

    @model_validator(mode="after")
    def _one(self) -> Rewrite:
        if (self.path_prefix is None) == (self.path is None):
            raise problem("set exactly one of path_prefix and path", "")
        return self


class HeaderEdits(_Model):
    add: dict[HeaderName, str] = Field(default_factory=dict, description="set these headers")
    remove: list[HeaderName] = Field(default_factory=list, description="drop these headers")


class LoadBalancing(_Model):
    policy: Literal["least_request", "round_robin", "ewma", "ring_hash", "maglev"] = Field(
        default="least_request", description="how an endpoint is picked"
    )
    hash_on: str | None = Field(
        default=None, description="ring_hash/maglev key: header:NAME, cookie:NAME, client_ip, path"
    )
    bounded_load: float = Field(
        default=1.25, ge=1.0, description="hashing: an endpoint takes at most this × mean load"
    )

    @model_validator(mode="after")
    def _hash(self) -> LoadBalancing:
        hashing = self.policy in ("ring_hash", "maglev")
        if hashing and self.hash_on is None:
            raise problem(f"{self.policy} needs hash_on", "e.g. hash_on: header:x-user-id")
        if self.hash_on is not None and not HASH_ON.match(self.hash_on):
            raise problem(
                f"hash_on {self.hash_on!r} is not a key",
                "use header:NAME, cookie:NAME, client_ip or path",
            )
        return self


class Retries(_Model):
    attempts: int = Field(default=2, ge=0, le=10, description="extra tries after the first")
    retryable: bool = Field(
        default=False, description="retry non-idempotent methods too (the route declares it safe)"
    )
    budget_percent: float = Field(
        default=20.0, ge=0, le=100, description="retries may add at most this % of load"
    )


class Timeouts(_Model):
    connect: PositiveDuration = Field(default=2.0, description="to open an upstream connection")
    per_try: PositiveDuration = Field(default=15.0, description="for one upstream try's response")
    total: PositiveDuration = Field(default=30.0, description="for the whole request, all tries")


class HealthCheck(_Model):
    """Active health checks of static upstreams, run once per gateway."""

    type: Literal["http", "tcp"] = "http"
    path: PathText = "/"
    interval: PositiveDuration = 5.0
    timeout: PositiveDuration = 1.0
    healthy_threshold: int = Field(default=2, ge=1, le=100)
    unhealthy_threshold: int = Field(default=3, ge=1, le=100)
    expect_status: list[int] = Field(
        default_factory=list, description="statuses that pass; empty: 200-399"
    )


class Outlier(_Model):
    """Passive ejection of endpoints that fail real requests."""

    consecutive_5xx: int = Field(default=5, ge=1)
    consecutive_connect_failures: int = Field(default=3, ge=1)
    base_ejection: PositiveDuration = 30.0
    max_ejection: PositiveDuration = 300.0
    max_ejection_percent: float = Field(default=50.0, ge=0, le=100)
    panic_threshold: float = Field(
        default=50.0, ge=0, le=100, description="below this % healthy, route to every endpoint"
    )


class Upstream(_Model):
    address: Address
    weight: int = Field(default=1, ge=1, le=1000)


def _availability(value: object) -> object:
    """``99.9%`` or ``99.9`` → 99.9 (a percentage of requests that must succeed)."""
    if isinstance(value, str):
        text = value.strip().removesuffix("%").strip()
        try:
            value = float(text)
        except ValueError:
            raise problem(f"{value!r} is not a percentage", "write it like 99.9%") from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not 1 < value < 100:
            raise problem(
                f"availability {value} is not a percentage between 1 and 100 (exclusive)",
                "write the share of requests that must succeed, like 99.9%",
            )
        return float(value)
    return value


def _quantile_key(value: object) -> object:
    if isinstance(value, str):
        found = QUANTILE_KEY.match(value)
        if not found or not 0 < float(found.group(1)) < 100:
            raise problem(
                f"{value!r} is not a latency quantile",
                "write pNN, like p95: 300ms or p99.9: 1s",
            )
    return value


def _slo_window(seconds: float) -> float:
    if not SLO_MIN_WINDOW_S <= seconds <= SLO_MAX_WINDOW_S:
        longer = " (longer than the collector keeps rollups)" if seconds > SLO_MAX_WINDOW_S else ""
        raise problem(
            f"window {_human(seconds)} is outside 1h…30d{longer}",
            "use a window between 1h and 30d, like 30d or 7d",
        )
    return seconds


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


_PERCENT_JSON: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "exclusiveMinimum": 1, "exclusiveMaximum": 100},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*%?\s*$"},
    ],
    "description": "a percentage: 99.9% or 99.9",
}


class Slo(_Model):
    """A service-level objective, measured at the gateway on the route's edge spans."""

    availability: (
        Annotated[float, BeforeValidator(_availability), WithJsonSchema(_PERCENT_JSON)] | None
    ) = Field(default=None, description="% of requests that must not fail (5xx), like 99.9%")
    latency: dict[Annotated[str, BeforeValidator(_quantile_key)], PositiveDuration] = Field(
        default_factory=dict, description="pNN: bound, like {p95: 300ms}"
    )
    window: Annotated[Duration, AfterValidator(_slo_window)] = Field(
        default=30 * 86400.0, description="the compliance window, 1h…30d"
    )

    @model_validator(mode="after")
    def _something(self) -> Slo:
        if self.availability is None and not self.latency:
            raise problem(
                "an SLO needs an availability or a latency objective",
                "like slo: {availability: 99.9%, latency: {p95: 300ms}}",
            )
        return self

    def latency_targets(self) -> list[tuple[float, float]]:
        """(fraction of requests, bound in seconds) for each latency objective, by quantile."""
        return sorted((round(float(k[1:]) / 100, 6), v) for k, v in self.latency.items())


class AdaptiveConcurrency(_Model):
    """Gradient adaptive concurrency (``corral.gateway.gradient``): each worker limits the
    requests in flight to the route's upstream cluster, and the limit follows the latency."""

    initial: int = Field(default=20, ge=1, description="the limit before any sample")
    min_limit: int = Field(default=4, ge=1, description="the limit never falls below this")
    max_limit: int = Field(default=1000, ge=1, description="the limit never rises above this")
    smoothing: float = Field(default=0.2, gt=0, le=1, description="share of a new estimate taken")
    tolerance: float = Field(default=1.0, ge=1, description="latency growth tolerated (x)")
    window: PositiveDuration = Field(default=0.1, description="samples per limit update")
    min_samples: int = Field(default=10, ge=1, description="fewest samples per update")
    retry_after: int = Field(default=1, ge=0, description="Retry-After (s) when refused")

    @model_validator(mode="after")
    def _order(self) -> AdaptiveConcurrency:
        if not (self.min_limit <= self.initial <= self.max_limit):
            raise problem(
                f"min_limit {self.min_limit} ≤ initial {self.initial} ≤ max_limit "
                f"{self.max_limit} does not hold",
                "keep min_limit ≤ initial ≤ max_limit",
            )
        return self


def _upstream(value: object) -> object:
    return {"address": value} if isinstance(value, str) else value


class Route(RoutePolicies):
    name: str = Field(description="unique; the admin API addresses routes by name")
    match: Match = Field(default_factory=Match)
    service: str | None = Field(default=None, description="platform mode: a service's instances")
    upstreams: list[Annotated[Upstream, BeforeValidator(_upstream)]] = Field(
        default_factory=list, description="standalone mode: static addresses"
    )
    priority: int = Field(default=0, description="higher wins; ties: the most specific match")
    rewrite: Rewrite | None = None
    headers: HeaderEdits = Field(default_factory=HeaderEdits, description="request headers")
    lb: LoadBalancing = Field(default_factory=LoadBalancing)
    retries: Retries = Field(default_factory=Retries)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    health_check: HealthCheck | None = None
    outlier: Outlier = Field(default_factory=Outlier)
    slo: Slo | None = Field(default=None, description="objectives measured at the gateway")
    adaptive_concurrency: bool | AdaptiveConcurrency = Field(
        default=False,
        description="true or {initial, min_limit, …}: a gradient concurrency limit per upstream",
    )

    def adaptive_settings(self) -> AdaptiveConcurrency | None:
        """The gradient limit's settings, or None when the route has none."""
        found = self.adaptive_concurrency
        if found is True:
            return AdaptiveConcurrency()
        return found or None

    @model_validator(mode="after")
    def _target(self) -> Route:
        if not ROUTE_NAME.match(self.name):
            raise problem(
                f"route name {self.name!r} is not a name", "use letters, digits, . _ and -"
            )
        rewrite = self.rewrite
        if rewrite is not None and rewrite.path_prefix is not None and not self.match.path_prefix:
            raise problem(
                "rewrite.path_prefix needs match.path_prefix",
                "match on a prefix, or rewrite with path:",
            )
        if self.rewrite is not None and self.rewrite.path is not None:
            known = set(TEMPLATE_PARAM.findall(self.match.path_template or ""))
            unknown = sorted(set(TEMPLATE_PARAM.findall(self.rewrite.path)) - known)
            if unknown:
                raise problem(
                    f"rewrite.path uses {{{unknown[0]}}}, which match.path_template lacks",
                    "name only parameters of the matched template",
                )
        return self


class Tls(_Model):
    cert: str = Field(description="PEM certificate chain file")
    key: str = Field(description="PEM private key file")


class Admin(_Model):
    listen: Address = Field(description="the admin listener: /metrics and /healthz")
    token: str | None = Field(
        default=None,
        min_length=16,
        description="bearer token for admin actions (cache purge, breaker reset); none: refused",
    )


class Limits(_Model):
    max_connections: int = Field(default=10_000, ge=1, description="client connections/worker")
    max_header_bytes: Size = Field(default=32 * 1024, ge=1024, description="request line+headers")
    max_body_bytes: Size = Field(default=10 * 1024 * 1024, ge=0, description="request body")
    header_timeout: PositiveDuration = Field(default=10.0, description="to receive headers")
    idle_timeout: PositiveDuration = Field(default=60.0, description="keep-alive, both sides")
    retry_buffer_bytes: Size = Field(
        default=64 * 1024, ge=0, description="request bodies up to this size may be retried"
    )
    drain: Duration = Field(default=10.0, description="on stop, time to finish requests")


def _collector_url(value: object) -> object:
    if isinstance(value, str) and not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise problem(
            f"{value!r} is not an http(s) URL",
            "e.g. http://127.0.0.1:9411/api/v2/spans",
        )
    return value


class Telemetry(_Model):
    """Edge spans: one SERVER span per request and one CLIENT span per upstream try."""

    zipkin: Annotated[str, BeforeValidator(_collector_url)] | None = Field(
        default=None,
        description="Zipkin v2 JSON endpoint (platform mode: the platform's collector if unset)",
    )
    enabled: bool = Field(default=True, description="false: no spans (platform mode too)")
    service_name: str = Field(default="corral-gateway", min_length=1, max_length=128)
    max_buffer: int = Field(
        default=10_000, ge=1, le=1_000_000, description="finished requests kept for export"
    )


class GatewayConfig(GatewayPolicies):
    """The gateway's configuration (standalone file, or a manifest's ``gateway:`` section)."""

    listen: Address = "127.0.0.1:8080"
    workers: int = Field(default=1, ge=1, le=64)
    tls: Tls | None = None
    admin: Admin | None = None
    limits: Limits = Field(default_factory=Limits)
    telemetry: Telemetry | None = Field(default=None, description="edge span export")
    access_log: str | None = Field(
        default=None, min_length=1, description="a file for JSON access-log lines (off if unset)"
    )
    routes: list[Route] = Field(default_factory=list)


# --- loading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Raw:
    data: Mapping[Any, Any]
    prefix: tuple[str | int, ...]


def load_gateway_config(path: str | Path, *, mode: str = "standalone") -> GatewayConfig:
    """Read and validate a gateway config file; relative TLS paths resolve beside it.

    Raises ``NotFound`` for a missing file and ``ManifestError`` listing every problem."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(
            f"no gateway config at {file}: the file does not exist", "check the path"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise NotFound(
            f"cannot read the gateway config {file}: {error}", "check the file is UTF-8 YAML"
        ) from None
    config = parse_gateway_config(text, source=str(file), mode=mode)
    if config.tls is not None:
        base = file.parent.absolute()
        tls = Tls(cert=str(base / config.tls.cert), key=str(base / config.tls.key))
        config = config.model_copy(update={"tls": tls})
    return config


def parse_gateway_config(text: str, *, source: str, mode: str = "standalone") -> GatewayConfig:
    data, problems = _parse_yaml(text)
    if data is _UNPARSED:
        raise ManifestError(problems, source=source)
    return validate_gateway_data(data, source=source, mode=mode, problems=problems)


def validate_gateway_data(
    data: object,
    *,
    source: str = "gateway config",
    mode: str = "standalone",
    problems: list[Problem] | None = None,
) -> GatewayConfig:
    """Validate parsed data; ``mode`` is ``standalone`` (static upstreams) or ``platform``."""
    problems = list(problems or [])
    prefix: tuple[str | int, ...] = ()
    if isinstance(data, Mapping) and list(data) == ["gateway"]:
        data, prefix = data["gateway"], ("gateway",)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.append(
            Problem(
                ".".join(map(str, prefix)),
                f"the gateway config must be a mapping, got {describe(data)}",
                "start with listen: and routes:",
            )
        )
        raise ManifestError(problems, source=source)
    config: GatewayConfig | None = None
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as error:
        problems.extend(_schema_problems(error.errors(include_url=False), GatewayConfig, prefix))
    problems.extend(_route_problems(_Raw(data, prefix), mode))
    problems.extend(policy_reference_problems(data, prefix=prefix, mode=mode))
    if problems or config is None:
        raise ManifestError(list(dict.fromkeys(problems)), source=source)
    return config


def _route_problems(raw: _Raw, mode: str) -> list[Problem]:
    routes = raw.data.get("routes")
    if not isinstance(routes, list):
        return []
    problems: list[Problem] = []
    first: dict[str, int] = {}
    base = ".".join(map(str, raw.prefix))
    for index, route in enumerate(routes):
        at = f"{base}.routes[{index}]" if base else f"routes[{index}]"
        if not isinstance(route, Mapping):
            continue
        name = route.get("name")
        if isinstance(name, str):
            if name in first:
                problems.append(
                    Problem(
                        f"{at}.name",
                        f"route name {name!r} is already used by routes[{first[name]}]",
                        "give each route a unique name",
                    )
                )
            else:
                first[name] = index
        has_service = route.get("service") is not None
        has_upstreams = bool(route.get("upstreams"))
        if has_service and has_upstreams:
            problems.append(
                Problem(at, "sets both service and upstreams", "a route targets one of them")
            )
        elif not has_service and not has_upstreams:
            hint = (
                "add upstreams: [127.0.0.1:9001]"
                if mode == "standalone"
                else "add service: NAME or upstreams: [HOST:PORT]"
            )
            problems.append(Problem(at, "has no target", hint))
        elif has_service and mode == "standalone":
            problems.append(
                Problem(
                    f"{at}.service",
                    "standalone mode has no services to route to",
                    "list static upstreams: [HOST:PORT] instead",
                )
            )
        if route.get("health_check") is not None and has_service:
            problems.append(
                Problem(
                    f"{at}.health_check",
                    "a service's instances are checked by their readiness probes",
                    "remove health_check, or set the service's health.readiness",
                )
            )
    return problems
