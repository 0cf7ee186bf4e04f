"""Routing: compile a gateway config into an immutable route table, and match requests on it.

Theory of operation. ``compile_routes(config, version)`` runs off the hot path (at start, on
SIGHUP, on an admin edit) and returns a ``RouteTable``: frozen routes in the order they are
tried, plus one ``Cluster`` per upstream pool. A worker swaps its table reference in one
assignment, so a request sees either the old table or the new one, never a mix (as Envoy's
RDS swaps a route table snapshot).

Order (the first route whose every condition holds wins):

1. higher ``priority`` first;
2. then the more specific host: exact, then wildcard ``*.suffix`` (longer suffix first), then
   none;
3. then the more specific path: exact, then template, then prefix (longer literal first), then
   none — a ``/`` prefix is the catch-all;
4. then more conditions (methods, headers, query) first;
5. then the order in the config.

A prefix matches on path-segment bounds: ``/api`` takes ``/api`` and ``/api/x`` but not
``/apix``; a prefix ending in ``/`` takes everything under it. Hosts compare case-insensitively
without the port. Header names compare case-insensitively, values exactly; ``"*"`` requires only
presence. Paths are matched as sent (no percent-decoding, no dot-segment removal).

Invariants: compiling is deterministic (no set iteration); matching reads nothing but its
arguments; a route's cluster key is ``service:<name>`` (platform mode, endpoints supplied by the
caller) or ``static:<route name>`` (its own upstream list). A route with a traffic ``split``
also gets a cluster per backend: ``service:<name>`` for another service and
``service:<route's service>@<release>`` for one release of its own service (the platform
supplies those endpoints too). ``guarded`` marks the routes whose requests go through the
traffic policies (``corral.gateway.policies``); every other route takes the plain path.
``extra`` marks the routes with request validation, a mirror or an admin switch on (``off``,
``force_fallback``); a route's ``disabled`` features are cleared before it is compiled
(``effective``), so a feature turned off costs what an absent one does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from corral.gateway.config import (
    AdaptiveConcurrency,
    GatewayConfig,
    HealthCheck,
    LoadBalancing,
    Outlier,
    Retries,
    Route,
    Timeouts,
)
from corral.gateway.policy_config import FEATURES, Fallback
from corral.gateway.validation import RequestValidator, compile_validator

__all__ = [
    "Cluster",
    "CompiledRoute",
    "Mirror",
    "RouteMatch",
    "RouteTable",
    "compile_routes",
    "effective",
]

HeaderLookup = Callable[[str], "str | None"]

_EXACT, _TEMPLATE, _PREFIX, _ANY = 0, 1, 2, 3
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class Cluster:
    """A pool of endpoints one or more routes send to."""

    key: str
    upstreams: tuple[tuple[str, int], ...]  # (address, weight); empty for service clusters
    lb: LoadBalancing
    outlier: Outlier
    health_check: HealthCheck | None

    @property
    def service(self) -> str | None:
        return self.key[8:] if self.key.startswith("service:") else None


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    priority: int
    cluster: str
    host: str | None  # lower-case exact host
    host_suffix: str | None  # ".example.com" for "*.example.com"
    kind: int
    path: str  # exact path or prefix ("" for any)
    pattern: re.Pattern[str] | None
    methods: frozenset[str] | None
    headers: tuple[tuple[str, str], ...]
    query: tuple[tuple[str, str], ...]
    rewrite_prefix: str | None
    rewrite_path: str | None
    add_headers: tuple[tuple[str, str], ...]
    remove_headers: tuple[str, ...]  # lower-case
    retries: Retries
    timeouts: Timeouts
    route: Route = field(compare=False)
    guarded: bool = False  # rate limits, concurrency, breaker, split or cache apply
    fallback: Fallback | None = None
    backends: tuple[tuple[str, str], ...] = ()  # split backend name → cluster key
    # The rarer per-request features; ``extra`` is set when any is, so a route with none of
    # them costs one attribute test.
    extra: bool = False
    off: bool = False  # admin switch: the route answers 503
    force_fallback: bool = False  # admin switch: the route answers its fallback
    validator: RequestValidator | None = None
    mirror: Mirror | None = None
    adaptive: AdaptiveConcurrency | None = None  # a gradient limit on the cluster's in-flight

    def upstream_path(self, path: str, params: Mapping[str, str]) -> str:
        """The path to send upstream after this route's rewrite (``path`` when none)."""
        if self.rewrite_prefix is not None:
            rest = path[len(self.path) :]
            new = self.rewrite_prefix
            if new.endswith("/") and rest.startswith("/"):
                rest = rest[1:]
            elif rest and not new.endswith("/") and not rest.startswith("/"):
                new += "/"
            return (new + rest) or "/"
        if self.rewrite_path is not None:
            out = self.rewrite_path
            for name, value in params.items():
                out = out.replace("{" + name + "}", value)
            return out
        return path


@dataclass(frozen=True, slots=True)
class Mirror:
    """Where a route's shadow copies go (``cluster``) and how many."""

    cluster: str
    fraction: float
    max_in_flight: int
    max_body_bytes: int
    timeout: float


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: CompiledRoute
    params: Mapping[str, str]


_NO_PARAMS: Mapping[str, str] = {}


@dataclass(frozen=True)
class RouteTable:
    version: int
    routes: tuple[CompiledRoute, ...]
    clusters: Mapping[str, Cluster]
    by_name: Mapping[str, CompiledRoute]
    config: GatewayConfig | None = None  # what the policies are built from
    # One prebuilt match per route for matches without path parameters: most requests match
    # such a route, and the table is immutable, so they need not build a RouteMatch each.
    _static: tuple[RouteMatch, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_static", tuple(RouteMatch(r, _NO_PARAMS) for r in self.routes))

    def match(
        self,
        method: str,
        host: str,
        path: str,
        query: str = "",
        header: HeaderLookup | None = None,
    ) -> RouteMatch | None:
        """The first route that takes the request, or None. ``host`` may carry a port."""
        host_l: str | None = None
        query_map: dict[str, str] | None = None
        for index, route in enumerate(self.routes):
            if route.methods is not None and method not in route.methods:
                continue
            if route.host is not None or route.host_suffix is not None:
                if host_l is None:
                    host_l = _bare_host(host)
                if route.host is not None:
                    if host_l != route.host:
                        continue
                elif not host_l.endswith(route.host_suffix or ""):
                    continue
            params = _NO_PARAMS
            kind = route.kind
            if kind == _PREFIX:
                rp = route.path
                if not path.startswith(rp):
                    continue
                if len(path) > len(rp) and rp[-1] != "/" and path[len(rp)] != "/":
                    continue
            elif kind == _EXACT:
                if path != route.path:
                    continue
            elif kind == _TEMPLATE:
                assert route.pattern is not None
                found = route.pattern.match(path)
                if found is None:
                    continue
                params = found.groupdict()
            if route.headers:
                if header is None:
                    continue
                if not all(_value_ok(header(name), want) for name, want in route.headers):
                    continue
            if route.query:
                if query_map is None:
                    query_map = dict(parse_qsl(query, keep_blank_values=True))
                if not all(_value_ok(query_map.get(k), want) for k, want in route.query):
                    continue
            return self._static[index] if params is _NO_PARAMS else RouteMatch(route, params)
        return None


def _value_ok(value: str | None, want: str) -> bool:
    return value is not None and (want == "*" or value == want)


def _bare_host(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    colon = host.rfind(":")
    return host[:colon] if colon >= 0 else host


def _template_pattern(template: str) -> re.Pattern[str]:
    out = "^"
    pos = 0
    for found in _PARAM.finditer(template):
        out += re.escape(template[pos : found.start()]) + f"(?P<{found.group(1)}>[^/]+)"
        pos = found.end()
    return re.compile(out + re.escape(template[pos:]) + "$")


def split_backends(route: Route) -> tuple[tuple[str, str], ...]:
    """(backend name, cluster key) of each backend of a route's split, in config order."""
    split = route.split
    if split is None:
        return ()
    backends: list[tuple[str, str]] = []
    entries = [(b.name, b.release, b.service) for b in split.to]
    if split.mirror is not None:
        to = split.mirror.to
        name = f"release-{to.release}" if to.release is not None else str(to.service)
        entries.append((name, to.release, to.service))
    for name, release, service in entries:
        key = f"service:{route.service}@{release}" if release is not None else f"service:{service}"
        if (name, key) not in backends:
            backends.append((name, key))
    return tuple(backends)


def effective(route: Route) -> Route:
    """The route with its ``disabled`` features cleared (an admin switch)."""
    if not route.disabled:
        return route
    cleared: dict[str, object] = {}
    for feature in FEATURES:
        if feature in route.disabled:
            default = Route.model_fields[feature].get_default(call_default_factory=True)
            cleared[feature] = default
    return route.model_copy(update=cleared)


def mirror_cluster(route: Route) -> str | None:
    mirror = route.mirror
    if mirror is None:
        return None
    return f"service:{mirror.service}" if mirror.service is not None else f"mirror:{route.name}"


def _compile_route(route: Route, adaptive: bool = False) -> CompiledRoute:
    route = effective(route)
    m = route.match
    host = host_suffix = None
    if m.host is not None:
        if m.host.startswith("*."):
            host_suffix = m.host[1:].lower()
        else:
            host = m.host.lower()
    pattern = None
    if m.path is not None:
        kind, path = _EXACT, m.path
    elif m.path_template is not None:
        kind, path, pattern = _TEMPLATE, m.path_template, _template_pattern(m.path_template)
    elif m.path_prefix is not None and m.path_prefix != "/":
        kind, path = _PREFIX, m.path_prefix
    else:
        kind, path = _ANY, ""
    cluster = f"service:{route.service}" if route.service is not None else f"static:{route.name}"
    validator = None
    if route.validation is not None:
        v = route.validation
        validator = compile_validator(
            body=v.body,
            headers=v.headers,
            query=v.query,
            content_types=v.content_types,
            max_body_bytes=v.max_body_bytes,
        )
    mirror = None
    if route.mirror is not None:
        mirror = Mirror(
            cluster=mirror_cluster(route) or "",
            fraction=route.mirror.percent / 100.0,
            max_in_flight=route.mirror.max_in_flight,
            max_body_bytes=route.mirror.max_body_bytes,
            timeout=route.mirror.timeout,
        )
    off = not route.enabled
    return CompiledRoute(
        name=route.name,
        priority=route.priority,
        cluster=cluster,
        host=host,
        host_suffix=host_suffix,
        kind=kind,
        path=path,
        pattern=pattern,
        methods=frozenset(m.methods) if m.methods else None,
        headers=tuple((k.lower(), v) for k, v in sorted(m.headers.items())),
        query=tuple(sorted(m.query.items())),
        rewrite_prefix=route.rewrite.path_prefix if route.rewrite else None,
        rewrite_path=route.rewrite.path if route.rewrite else None,
        add_headers=tuple(sorted(route.headers.add.items())),
        remove_headers=tuple(sorted({h.lower() for h in route.headers.remove})),
        retries=route.retries,
        timeouts=route.timeouts,
        route=route,
        guarded=adaptive or route.has_policies(),
        fallback=route.fallback,
        backends=split_backends(route),
        extra=off or route.force_fallback or validator is not None or mirror is not None,
        off=off,
        force_fallback=route.force_fallback,
        validator=validator,
        mirror=mirror,
        adaptive=route.adaptive_settings(),
    )


def _order(route: CompiledRoute, index: int) -> tuple[int, ...]:
    if route.host is not None:
        host_rank, host_len = 0, 0
    elif route.host_suffix is not None:
        host_rank, host_len = 1, -len(route.host_suffix)
    else:
        host_rank, host_len = 2, 0
    literal = len(_PARAM.sub("", route.path))
    conditions = (route.methods is not None) + len(route.headers) + len(route.query)
    return (-route.priority, host_rank, host_len, route.kind, -literal, -conditions, index)


def compile_routes(config: GatewayConfig, version: int = 0) -> RouteTable:
    """Compile a validated config into the table workers match on."""
    adaptive = config.adaptive is not None
    compiled = [_compile_route(r, adaptive) for r in config.routes]
    order = sorted(range(len(compiled)), key=lambda i: _order(compiled[i], i))
    routes = tuple(compiled[i] for i in order)
    clusters: dict[str, Cluster] = {}
    for route in config.routes:
        key = f"service:{route.service}" if route.service is not None else f"static:{route.name}"
        if key in clusters:
            continue  # routes to one service share its pool and the first route's policies
        clusters[key] = Cluster(
            key=key,
            upstreams=tuple((u.address, u.weight) for u in route.upstreams),
            lb=route.lb,
            outlier=route.outlier,
            health_check=route.health_check,
        )
    for route in config.routes:
        key = mirror_cluster(route) or ""
        if route.mirror is not None and key not in clusters:
            clusters[key] = Cluster(
                key=key,
                upstreams=tuple((a, 1) for a in route.mirror.upstreams),
                lb=LoadBalancing(),
                outlier=route.outlier,
                health_check=None,
            )
    for done in compiled:
        for _, key in done.backends:
            if key not in clusters:
                clusters[key] = Cluster(
                    key=key,
                    upstreams=(),
                    lb=done.route.lb,
                    outlier=done.route.outlier,
                    health_check=None,
                )
    return RouteTable(
        version=version,
        routes=routes,
        clusters=clusters,
        by_name={r.name: r for r in compiled},
        config=config,
    )
