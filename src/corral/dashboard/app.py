"""The dashboard's routes on the API's aiohttp application.

`setup(app, api)` adds the pages and `/static/…`. Pages are server-rendered from the Store (the
same views as the API) and need the read role: a bearer token, or the session cookie that
`/?token=READ_TOKEN` sets before redirecting to the same address without the token. A browser
that is not signed in gets an HTML sign-in page (401), not the API's JSON error; that is why
the API's auth middleware leaves paths outside `/api/` to this module (see `corral.api.auth`).
The pages' scripts then read `/api/v1/…` with the cookie, which the middleware accepts for
GET requests only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from corral.api import auth
from corral.control import gateway_config
from corral.dashboard import assets, data, public, render, session

if TYPE_CHECKING:
    from corral.api.server import Api

log = logging.getLogger("corral.dashboard")

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Inline style attributes are how uPlot and Cytoscape size their canvases.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
}
MISSING_CHARTS = (
    "Charts and the topology graph are not available: their libraries are not installed "
    "(scripts/bootstrap.sh runs <code>npm ci</code> in src/corral/dashboard/vendor). "
    "Every value is still shown in the tables."
)

Page = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHANGES_WINDOW_S = 3600  # the service page's charts cover the last hour


class Dashboard:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.layout = assets.template("layout.html")
        missing = assets.missing_vendor()
        if missing:
            log.warning("dashboard charts unavailable; missing %s", ", ".join(missing))

    # -- sign-in ----------------------------------------------------------------------------

    def signed_in(self, request: web.Request) -> bool:
        role = auth.role_of(request.headers.get("Authorization"), self.api.tokens)
        if role in session.READ_ROLES:
            return True
        return session.grants_read(request.cookies.get(session.COOKIE), self.api.tokens)

    async def _sign_in(self, request: web.Request) -> web.StreamResponse | None:
        """A response that ends the request here (a redirect that sets the cookie, or the
        sign-in page), or None when the request may see the page (signed in, or the
        dashboard is public)."""
        token = request.query.get("token")
        if token is not None:
            value = session.cookie_value(self.api.tokens)
            if value is None or session.token_role(token, self.api.tokens) is None:
                return self._html(
                    request,
                    "Sign in",
                    "",
                    render.sign_in("That token does not sign in: use the read token."),
                    status=401,
                )
            kept = [(k, v) for k, v in request.query.items() if k != "token"]
            target = request.rel_url.with_query(kept or None)
            response = web.Response(status=303, headers={"Location": str(target), **PAGE_HEADERS})
            response.set_cookie(session.COOKIE, value, httponly=True, samesite="Strict", path="/")
            return response
        if self.signed_in(request) or (await public.read(self.api.store)).public:
            return None
        return self._html(
            request,
            "Sign in",
            "",
            render.sign_in("This dashboard needs the platform's read token."),
            status=401,
        )

    # -- rendering --------------------------------------------------------------------------

    def _html(
        self,
        request: web.Request,
        title: str,
        active: str,
        body: str,
        *,
        script: str = "",
        status: int = 200,
    ) -> web.Response:
        missing = assets.missing_vendor()
        text = render.page(
            self.layout,
            title=title,
            active=active,
            body=body,
            script=script,
            notice=MISSING_CHARTS if missing and script else "",
            charts=not missing,
        )
        return web.Response(
            text=text, status=status, content_type="text/html", headers=PAGE_HEADERS
        )

    def guarded(self, page: Page) -> Page:
        async def handler(request: web.Request) -> web.StreamResponse:
            stop = await self._sign_in(request)
            if stop is not None:
                return stop
            return await page(request)

        return handler

    # -- pages ------------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.StreamResponse:
        services = await data.services(self.api.store)
        return self._html(
            request, "Overview", "overview", render.overview(services), script="overview.js"
        )

    async def service(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        found = [s for s in await data.services(self.api.store, True) if s["name"] == name]
        if not found:
            return self._html(
                request,
                "Not found",
                "",
                render.not_found(f"No service named {name!r}."),
                status=404,
            )
        events = await data.events(self.api.store, name)
        recent = await data.changes(self.api.store, name, CHANGES_WINDOW_S)
        body = render.service_page(found[0], events, recent)
        return self._html(request, name, "overview", body, script="service.js")

    async def service_changes(self, request: web.Request) -> web.StreamResponse:
        """The "what changed" list as JSON, for the service page to follow live."""
        name = request.match_info["name"]
        recent = await data.changes(self.api.store, name, CHANGES_WINDOW_S)
        return web.json_response(
            [c._asdict() for c in recent], headers={"Cache-Control": "no-store"}
        )

    async def hosts(self, request: web.Request) -> web.StreamResponse:
        services = await data.services(self.api.store, True)
        return self._html(request, "Hosts", "hosts", render.hosts_page(services), script="hosts.js")

    async def slo(self, request: web.Request) -> web.StreamResponse:
        return self._html(request, "SLOs", "slo", render.slo_page(), script="slo.js")

    async def impact(self, request: web.Request) -> web.StreamResponse:
        kind = request.query.get("kind", "instance")
        if kind not in dict(render.IMPACT_KINDS):
            kind = "instance"
        body = render.impact_page(kind, request.query.get("value", ""))
        return self._html(request, "Impact", "impact", body, script="impact.js")

    async def gateway(self, request: web.Request) -> web.StreamResponse:
        _, record = await gateway_config.read(self.api.store)
        view: dict[str, Any] | None = None
        if record is not None:
            view = {
                "version": record.version,
                "source": record.source,
                "message": record.message,
                "config": record.config,
                "live": {},
            }
        return self._html(
            request, "Gateway", "gateway", render.gateway_page(view), script="gateway.js"
        )

    async def topology(self, request: web.Request) -> web.StreamResponse:
        body = render.shell(
            "Topology",
            "Who calls whom over the chosen window, from traces: services and the "
            "uninstrumented peers they call (databases, queues, external hosts).",
            TOPOLOGY,
        )
        return self._html(request, "Topology", "topology", body, script="topology.js")

    async def traces(self, request: web.Request) -> web.StreamResponse:
        body = render.shell("Traces", "Find traces, then open one as a waterfall.", TRACES)
        return self._html(request, "Traces", "traces", body, script="traces.js")

    async def trace(self, request: web.Request) -> web.StreamResponse:
        trace_id = request.match_info["id"]
        body = render.shell(
            "Trace",
            f'<code id="trace-id" data-trace="{render.esc(trace_id)}">{render.esc(trace_id)}'
            "</code> — spans in call order; the critical path (what the request waited for) "
            "is marked.",
            WATERFALL,
        )
        return self._html(request, "Trace", "traces", body, script="trace.js")

    async def top(self, request: web.Request) -> web.StreamResponse:
        body = render.shell(
            "TOP-N", "The busiest, slowest and costliest endpoints, and slow SQL.", TOP
        )
        return self._html(request, "TOP-N", "top", body, script="top.js")

    # -- static files -----------------------------------------------------------------------

    async def static(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        found = assets.resolve(path)
        if found is None:
            hint = ""
            if path.startswith("vendor/"):
                hint = " (not installed: run scripts/bootstrap.sh, which runs npm ci in vendor/)"
            return web.Response(status=404, text=f"no file /static/{path}{hint}\n")
        content_type = assets.CONTENT_TYPES.get(found.suffix, "application/octet-stream")
        return web.FileResponse(
            found,
            headers={
                "Content-Type": content_type,
                "Cache-Control": "max-age=300",
                "X-Content-Type-Options": "nosniff",
            },
        )


TOPOLOGY = (
    '<form class="search" id="window-form"><label>Window'
    '<select name="minutes" id="minutes"><option value="15">15 minutes</option>'
    '<option value="60" selected>1 hour</option><option value="360">6 hours</option>'
    '<option value="1440">24 hours</option></select></label></form>'
    '<p id="topology-status" role="status">Loading the dependency map…</p>'
    '<div id="graph" role="img" aria-label="Dependency graph; the table below lists every '
    'edge"></div>'
    '<table class="grid" id="edges"><caption>Every edge: caller → callee, with calls, errors '
    "and latency</caption>"
    '<thead><tr><th scope="col">Caller</th><th scope="col">Callee</th>'
    '<th scope="col">Calls</th><th scope="col">Errors</th><th scope="col">Error rate</th>'
    '<th scope="col">Average</th><th scope="col">p95</th><th scope="col">Callee kind</th>'
    "</tr></thead><tbody></tbody></table>"
)

TRACES = (
    '<form class="search" id="trace-search" method="get" action="/traces">'
    '<label>Service<input name="service" id="f-service" size="14"></label>'
    '<label>Endpoint<input name="endpoint" id="f-endpoint" size="22"></label>'
    '<label>Min duration (ms)<input name="min_ms" id="f-min" type="number" min="0" size="6">'
    "</label>"
    '<label>Last<select name="minutes" id="f-minutes"><option value="15">15 minutes</option>'
    '<option value="60" selected>1 hour</option><option value="1440">24 hours</option>'
    "</select></label>"
    '<label><span>Errors only</span><input type="checkbox" name="error" value="1" '
    'id="f-error"></label><button type="submit">Search</button></form>'
    '<p id="traces-status" role="status"></p>'
    '<table class="grid" id="traces"><caption>Matching traces, most recent first</caption>'
    '<thead><tr><th scope="col">Trace</th><th scope="col">Root</th>'
    '<th scope="col">Started</th><th scope="col">Duration</th><th scope="col">Spans</th>'
    '<th scope="col">Errors</th><th scope="col">Services</th></tr></thead>'
    "<tbody></tbody></table>"
)

WATERFALL = (
    '<p id="trace-status" role="status">Loading the trace…</p>'
    '<dl class="facts" id="trace-facts"></dl>'
    '<table class="grid" id="waterfall"><caption>Spans: service, operation, start offset and '
    "duration; select a row (Enter) for its details</caption>"
    '<thead><tr><th scope="col">Operation</th><th scope="col">Service</th>'
    '<th scope="col">Offset</th><th scope="col">Duration</th>'
    '<th scope="col" class="bar-cell">Timeline</th></tr></thead><tbody></tbody></table>'
    '<section aria-labelledby="h-span"><h2 id="h-span">Span details</h2>'
    '<div id="span-details" aria-live="polite">Select a span.</div></section>'
)

TOP = (
    '<form class="search" id="window-form"><label>Window'
    '<select name="minutes" id="minutes"><option value="5" selected>5 minutes</option>'
    '<option value="15">15 minutes</option><option value="60">1 hour</option>'
    '<option value="1440">24 hours</option></select></label></form>'
    '<p id="top-status" role="status"></p>'
    '<div class="cols">'
    '<section><h2 id="h-calls">By calls</h2><table class="grid" data-top="calls" '
    'aria-labelledby="h-calls"></table></section>'
    '<section><h2 id="h-p95">By p95 latency</h2><table class="grid" data-top="p95" '
    'aria-labelledby="h-p95"></table></section>'
    '<section><h2 id="h-hotspot">By hotspot (total time)</h2><table class="grid" '
    'data-top="hotspot" aria-labelledby="h-hotspot"></table></section>'
    '<section><h2 id="h-errors">By errors</h2><table class="grid" data-top="errors" '
    'aria-labelledby="h-errors"></table></section></div>'
    '<section><h2 id="h-sql">Slow SQL and the APIs it serves</h2>'
    '<label>p95 at least (ms) <input type="number" id="sql-threshold" value="10" min="0">'
    '</label><table class="grid" id="slow-sql" aria-labelledby="h-sql"></table></section>'
)

APP_KEY = web.AppKey("corral.dashboard", Dashboard)


def setup(app: web.Application, api: Api) -> None:
    """Add the dashboard's pages and static files to the API's application (idempotent)."""
    if APP_KEY in app:
        return
    dashboard = Dashboard(api)
    app[APP_KEY] = dashboard
    pages: dict[str, Page] = {
        "/": dashboard.overview,
        "/services/{name}": dashboard.service,
        "/topology": dashboard.topology,
        "/traces": dashboard.traces,
        "/traces/{id}": dashboard.trace,
        "/top": dashboard.top,
        "/gateway": dashboard.gateway,
        "/hosts": dashboard.hosts,
        "/slo": dashboard.slo,
        "/impact": dashboard.impact,
        "/services/{name}/changes": dashboard.service_changes,
    }
    for path, page in pages.items():
        app.router.add_get(path, dashboard.guarded(page))
    app.router.add_get("/static/{path:.+}", dashboard.static)
