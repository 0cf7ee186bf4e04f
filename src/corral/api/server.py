"""The HTTP API (aiohttp), under ``/api/v1``.

Handlers are thin: parse and check the request, call the control-plane function that does the
work, render the result. Every error leaves as ``{code, message, hint}`` with a fitting status
(a malformed body becomes a 400 before any handler logic runs); secrets never leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from corral import __version__, clock, model
from corral.api import auth, insight, views
from corral.api.metrics import PlatformMetrics, ReconcilerView
from corral.control import alerter as alerting
from corral.control import apply as applying
from corral.control import events, gateway_config, releases, system
from corral.control.alerter import Alerter
from corral.control.diff import spec_changes as diff_specs
from corral.control.diff import summary as change_summary
from corral.control.rollout import template_digest
from corral.control.usage_sampler import UsageSampler
from corral.dashboard import app as dashboard
from corral.dashboard import public as dashboard_public
from corral.dashboard import session
from corral.errors import (
    Compacted,
    CorralError,
    Forbidden,
    NotFound,
    PlatformUnavailable,
    UserError,
)
from corral.gateway import admin as gateway_admin
from corral.home import Home
from corral.manifest import service_record, validate_manifest_data
from corral.runtime import logs as logfiles
from corral.store.base import Compare, Delete, Put, Store, WatchEvent
from corral.telemetry.capacity import NEAR
from corral.telemetry.exposition import content_type, wants_openmetrics

log = logging.getLogger("corral.api")
WATCH_HEARTBEAT = 5.0  # seconds of silence on a Store watch before a ": ping" comment

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str


class Api:
    def __init__(
        self,
        store: Store,
        home: Home,
        tokens: dict[str, str],
        on_shutdown: Callable[[], None] | None = None,
        passes: Callable[[], int] | None = None,
        extra_routes: Sequence[Route] = (),
        reconciler: ReconcilerView | None = None,
    ) -> None:
        self.store = store
        self.home = home
        self.tokens = tokens
        self.on_shutdown = on_shutdown
        self.metrics = PlatformMetrics(store, passes, reconciler)
        self._http: aiohttp.ClientSession | None = None
        self.alerter = Alerter(store, home)  # started with the app unless the Store is replicated
        # A replicated Store (cluster mode) runs the alerter on the leader only, among the
        # leader's controllers (control.leader_watch); this one only reads its state there.
        self.runs_alerter = not hasattr(store, "is_leader")
        self.usage = UsageSampler(home.instances_dir)
        self.routes = [
            Route("GET", "/api/v1/health", self.health, "Liveness of the control plane"),
            Route("GET", "/api/v1/openapi.json", self.openapi, "This API's OpenAPI document"),
            Route("POST", "/api/v1/apply", self.apply, "Apply a manifest"),
            Route("POST", "/api/v1/validate", self.validate, "Validate a manifest"),
            Route("GET", "/api/v1/services", self.services, "Services: state, desired, ready"),
            Route("GET", "/api/v1/services/{name}", self.service, "One service"),
            Route("POST", "/api/v1/services/{name}/scale", self.scale, "Set desired count"),
            Route("POST", "/api/v1/services/{name}/restart", self.restart_service, "Restart"),
            Route("POST", "/api/v1/diff", self.diff, "What apply would change, per service"),
            Route("GET", "/api/v1/services/{name}/releases", self.releases, "Release history"),
            Route("GET", "/api/v1/services/{name}/rollout", self.rollout, "Current rollout"),
            Route("POST", "/api/v1/services/{name}/rollback", self.rollback, "Roll back"),
            Route("POST", "/api/v1/services/{name}/rollout/{verb}", self.rollout_verb, "Control"),
            Route("GET", "/api/v1/instances", self.instances, "Instances with their phase"),
            Route("POST", "/api/v1/instances/{id}/restart", self.restart_instance, "Restart one"),
            Route("GET", "/api/v1/events", self.events, "Recent lifecycle events"),
            Route("GET", "/api/v1/events/stream", self.event_stream, "Events as SSE"),
            Route("GET", "/api/v1/alerts", self.alerts, "Firing and recently resolved alerts"),
            Route("GET", "/api/v1/changes", self.changes, "What changed, beside the curves"),
            Route("GET", "/api/v1/capacity", self.capacity, "Headroom against limits"),
            Route("GET", "/api/v1/logs/{name}", self.logs, "Logs of a service or instance"),
            Route("GET", "/api/v1/secrets", self.secrets, "Secret names (never values)"),
            Route("PUT", "/api/v1/secrets/{name}", self.set_secret, "Set a secret"),
            Route("DELETE", "/api/v1/secrets/{name}", self.delete_secret, "Remove a secret"),
            Route("POST", "/api/v1/down", self.down, "Stop every service (reverse order)"),
            Route("POST", "/api/v1/shutdown", self.shutdown, "Stop the control plane"),
            Route("GET", "/api/v1/backup", self.backup, "A consistent snapshot of the Store"),
            Route("GET", "/api/v1/gateway/config", self.gateway_get, "Live gateway config"),
            Route("GET", "/api/v1/gateway/routes", self.routes_list, "Gateway routes"),
            Route("POST", "/api/v1/gateway/routes", self.route_create, "Create a route"),
            Route("GET", "/api/v1/gateway/routes/{name}", self.route_get, "One route"),
            Route("PUT", "/api/v1/gateway/routes/{name}", self.route_put, "Replace a route"),
            Route("DELETE", "/api/v1/gateway/routes/{name}", self.route_delete, "Delete a route"),
            Route("POST", "/api/v1/gateway/rollback", self.gateway_rollback, "Previous config"),
            Route("POST", "/api/v1/gateway/routes/{name}/switch", self.route_switch, "Switches"),
            Route(
                "POST", "/api/v1/gateway/routes/{name}/breaker/reset", self.breaker_reset, "Reset"
            ),
            Route("POST", "/api/v1/gateway/cache/purge", self.cache_purge, "Purge the cache"),
            Route("POST", "/api/v1/gateway/plugins/reload", self.plugins_reload, "Reload plugins"),
            Route("GET", "/api/v1/telemetry/{query:.+}", self.telemetry, "Telemetry queries"),
            Route("GET", "/api/v1/store/range", self.store_range, "Read keys under a prefix"),
            Route("GET", "/api/v1/store/watch", self.store_watch, "Follow changes (SSE)"),
            *extra_routes,  # e.g. api.cluster's, on a replicated control plane
        ]

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth], client_max_size=8 << 20)
        for route in self.routes:
            app.router.add_route(route.method, route.path, route.handler)
        app.router.add_route("GET", "/metrics", self.prometheus)
        dashboard.setup(app, self)
        app.on_startup.append(self._start_alerter)
        app.on_cleanup.append(self._stop_alerter)
        return app

    async def _start_alerter(self, app: web.Application) -> None:
        if self.runs_alerter:
            await self.alerter.start()

    async def _stop_alerter(self, app: web.Application) -> None:
        await self.alerter.close()

    # -- middleware -------------------------------------------------------------------------

    def _count(self, request: web.Request, status: int) -> None:
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        self.metrics.observe_request(request.method, route, status)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
            self._count(request, response.status)
            return response
        except CorralError as exc:
            self._count(request, exc.status)
            body: dict[str, Any] = exc.to_dict()
            problems = getattr(exc, "problem_dicts", None)
            if problems is not None:
                body["problems"] = problems()
            return web.json_response(body, status=exc.status)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return web.json_response(
                    {"code": "http_error", "message": exc.reason, "hint": ""}, status=exc.status
                )
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return web.json_response(
                {
                    "code": "internal",
                    "message": "the control plane failed to handle this request",
                    "hint": f"see {self.home.log_file}",
                },
                status=500,
            )

    async def prometheus(self, request: web.Request) -> web.StreamResponse:
        """Prometheus text. Open on a loopback listener (scrapers rarely send tokens, DESIGN.md
        *Security*); elsewhere it needs the read token like any GET."""
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        host = str(sockname[0]) if sockname else ""
        if not (host.startswith("127.") or host == "::1"):
            auth.authorize(
                "GET", "/api/v1/metrics", request.headers.get("Authorization"), self.tokens
            )
        openmetrics = wants_openmetrics(request.headers.get("Accept"))
        body = await self.metrics.render(openmetrics=openmetrics)
        return web.Response(body=body, headers={"Content-Type": content_type(openmetrics)})

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization")
        cookie = request.cookies.get(session.COOKIE)
        public = await dashboard_public.lets_through(
            self.store, request.method, request.path, header, cookie, self.tokens
        )
        auth.authorize(request.method, request.path, header, self.tokens, cookie, public)
        return await handler(request)

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError("the request body is not valid JSON", "send a JSON object") from None
        if not isinstance(data, dict):
            raise UserError("the request body must be a JSON object", "send {…}")
        return data

    @staticmethod
    def _name(request: web.Request, key: str = "name") -> str:
        value = request.match_info[key]
        if not value or not set(value) <= NAME_CHARS or len(value) > 100:
            raise UserError(f"{value!r} is not a valid name", "use lowercase letters, digits, '-'")
        return value

    async def _service(self, name: str) -> tuple[int, model.ServiceRecord]:
        kv = await self.store.get(model.SERVICES + name)
        if kv is None:
            services = await views.load_services(self.store)
            raise NotFound(
                f"no service named {name!r}",
                "known services: " + (", ".join(sorted(services)) or "none (apply a manifest)"),
            )
        return kv.mod_revision, model.decode(kv.value, model.ServiceRecord)

    # -- handlers ---------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True, "version": __version__, "home": str(self.home.path)})

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        paths: dict[str, dict[str, Any]] = {}
        for route in self.routes:
            op: dict[str, Any] = {
                "summary": route.summary,
                "responses": {
                    "200": {"description": "OK"},
                    "default": {
                        "description": "Error",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    },
                },
            }
            params = [p[1:-1] for p in route.path.split("/") if p.startswith("{")]
            if params:
                op["parameters"] = [
                    {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                    for p in params
                ]
            if auth.required_role(route.method, route.path):
                op["security"] = [{"token": []}]
            paths.setdefault(route.path, {})[route.method.lower()] = op
        doc = {
            "openapi": "3.1.0",
            "info": {"title": "Corral API", "version": __version__},
            "paths": paths,
            "components": {
                "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
                "schemas": {
                    "Error": {
                        "type": "object",
                        "required": ["code", "message", "hint"],
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "hint": {"type": "string"},
                        },
                    }
                },
            },
        }
        return web.json_response(doc)

    async def _loaded(self, request: web.Request) -> Any:
        body = await self._body(request)
        source = str(body.get("source") or "manifest")
        base_dir = Path(str(body.get("base_dir") or self.home.path))
        if "manifest" not in body:
            raise UserError("the body needs a `manifest` object", "send {manifest: {...}}")
        return validate_manifest_data(body["manifest"], source=source, base_dir=base_dir), body

    async def validate(self, request: web.Request) -> web.StreamResponse:
        loaded, _ = await self._loaded(request)
        return web.json_response({"ok": True, "services": sorted(loaded.manifest.services)})

    async def apply(self, request: web.Request) -> web.StreamResponse:
        loaded, body = await self._loaded(request)
        await alerting.check_secrets(self.store, loaded.manifest)
        settings = dashboard_public.from_manifest(loaded.manifest.dashboard)
        also = await alerting.config_ops(self.store, loaded.manifest)
        also += await dashboard_public.change_ops(self.store, settings)
        result = await applying.apply_manifest(
            self.store,
            loaded,
            str(body.get("message") or ""),
            str(body.get("user") or ""),
            home=self.home.path,
            also=also,
        )
        await system.ensure_collector(
            self.store,
            self.home.path,
            system.retention_argument(loaded.manifest.metrics.retention),
        )
        return web.json_response(
            {
                "changes": result.changes,
                "revision": result.revision,
                "gateway": result.gateway,
                "discarded_live_edits": result.discarded_live_edits,
            }
        )

    async def _service_views(self, include_system: bool) -> list[dict[str, Any]]:
        services = await views.load_services(self.store)
        statuses = {
            kv.key[len(model.SERVICE_STATUS) :]: model.decode(kv.value, model.ServiceStatus)
            for kv in (await self.store.range(model.SERVICE_STATUS)).kvs
        }
        now = clock.wall()
        by_service: dict[str, list[dict[str, Any]]] = {}
        for spec, status in await views.load_instances(self.store):
            view = views.instance_view(spec, status, services.get(spec.service), now)
            by_service.setdefault(spec.service, []).append(view)
        out = []
        for name in sorted(services):
            record = services[name]
            if record.system and not include_system:
                continue
            out.append(views.service_view(record, statuses.get(name), by_service.get(name, [])))
        return out

    async def services(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self._service_views(_flag(request, "system")))

    async def service(self, request: web.Request) -> web.StreamResponse:
        name = self._name(request)
        await self._service(name)
        for view in await self._service_views(True):
            if view["name"] == name:
                return web.json_response(view)
        raise NotFound(f"no service named {name!r}")

    async def instances(self, request: web.Request) -> web.StreamResponse:
        services = await views.load_services(self.store)
        include_system = _flag(request, "system")
        only = request.query.get("service")
        now = clock.wall()
        out = []
        for spec, status in await views.load_instances(self.store):
            if spec.system and not include_system:
                continue
            if only and spec.service != only:
                continue
            out.append(views.instance_view(spec, status, services.get(spec.service), now))
        return web.json_response(out)

    async def scale(self, request: web.Request) -> web.StreamResponse:
        name = self._name(request)
        body = await self._body(request)
        count = body.get("instances")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise UserError(
                f"scale {name}: `instances` must be a whole number >= 0, got {count!r}",
                f"corral scale {name}=3",
            )
        for _attempt in range(5):
            revision, record = await self._service(name)
            if record.stopping:
                raise UserError(f"service {name!r} is stopping", "apply a manifest that has it")
            if not record.min <= count <= record.max:
                raise UserError(
                    f"services.{name}.instances: {count} is outside [{record.min}, {record.max}]",
                    f"declare `instances: {{min: .., max: ..}}` that admits {count} and apply",
                )
            previous = record.desired
            record.desired = count
            event = events.make(name, "service", f"scaled from {previous} to {count}", service=name)
            txn = await self.store.txn(
                [Compare(model.SERVICES + name, "mod_revision", "==", revision)],
                [
                    Put(model.SERVICES + name, model.encode(record)),
                    Put(events.event_key(event.at), model.encode(event)),
                ],
            )
            if txn.succeeded:
                return web.json_response({"service": name, "from": previous, "to": count})
        raise UserError(f"service {name!r} kept changing while scaling", "try again")

    async def _restart(self, instance_ids: list[str], reason: str) -> list[str]:
        restarted = []
        for instance_id in instance_ids:
            key = model.instance_key(instance_id, "spec")
            kv = await self.store.get(key)
            if kv is None:
                continue
            spec = model.decode(kv.value, model.InstanceSpec)
            if spec.desired != "running":
                continue
            spec.incarnation += 1
            event = events.make(instance_id, "instance", reason, service=spec.service)
            txn = await self.store.txn(
                [Compare(key, "mod_revision", "==", kv.mod_revision)],
                [
                    Put(key, model.encode(spec)),
                    Put(events.event_key(event.at), model.encode(event)),
                ],
            )
            if txn.succeeded:
                restarted.append(instance_id)
        return restarted

    async def restart_service(self, request: web.Request) -> web.StreamResponse:
        """A rolling restart: a new template generation, rolled out like any update (surge
        first for cattle, one pet at a time), within the disruption budget."""
        name = self._name(request)
        for _attempt in range(5):
            revision, record = await self._service(name)
            rollout_revision, previous = await releases.read_rollout(self.store, name)
            old = model.decode(model.encode(record), model.ServiceRecord)
            record.restart_generation += 1
            record.digest = template_digest(record.spec, record.restart_generation)
            rollout = releases.start_rollout("restart", old, record, previous, clock.wall())
            if previous is not None and previous.state == "complete":
                # Restarting a healthy release: roll back to it (not to anything older).
                rollout.stable_release, rollout.stable_digest = old.release, old.digest
            event = events.make(name, "service", "rolling restart requested", service=name)
            txn = await self.store.txn(
                [
                    Compare(model.SERVICES + name, "mod_revision", "==", revision),
                    Compare(releases.rollout_key(name), "mod_revision", "==", rollout_revision),
                ],
                [
                    Put(model.SERVICES + name, model.encode(record)),
                    Put(releases.rollout_key(name), model.encode(rollout)),
                    Put(events.event_key(event.at), model.encode(event)),
                ],
            )
            if txn.succeeded:
                ids = [s.id for s, _ in await views.load_instances(self.store) if s.service == name]
                return web.json_response({"restarted": ids, "rolling": True})
        raise UserError(f"service {name!r} kept changing during the restart", "try again")

    async def diff(self, request: web.Request) -> web.StreamResponse:
        loaded, _ = await self._loaded(request)
        services = await views.load_services(self.store)
        out: dict[str, Any] = {}
        for name in sorted(set(services) | set(loaded.manifest.services)):
            service = loaded.manifest.services.get(name)
            old = services.get(name)
            if old is not None and old.system:
                continue
            if service is None:
                out[name] = (
                    {"change": "removed", "changes": []} if old and not old.stopping else None
                )
                continue
            new = service_record(name, service, release=0, base_dir=loaded.base_dir)
            if service.source is not None:
                applying.attach_artifact(
                    new.spec,
                    service.source,
                    service.cwd,
                    loaded.base_dir,
                    self.home.path,
                    copy=False,
                )
            changes = diff_specs(old.spec if old else None, new.spec)
            restarts = old is None or template_digest(
                new.spec, old.restart_generation
            ) != template_digest(old.spec, old.restart_generation)
            verb = "created" if old is None else ("updated" if changes else "unchanged")
            out[name] = {
                "change": verb,
                "changes": [c.render() for c in changes],
                "new_release": bool(changes) and verb != "unchanged",
                "replaces_instances": bool(changes) and restarts,
            }
        return web.json_response({k: v for k, v in out.items() if v is not None})

    async def releases(self, request: web.Request) -> web.StreamResponse:
        name = self._name(request)
        _, record = await self._service(name)
        history = await releases.list_releases(self.store, name)
        out = []
        previous: dict[str, Any] | None = None
        for release in history:
            if previous is None:
                what = "first release kept"
            elif release.copied_from:
                what = f"copy of v{release.copied_from}"
            else:
                what = change_summary(diff_specs(previous, release.spec))
            out.append(
                {
                    "release": release.number,
                    "version": release.spec.get("version"),
                    "created_at": release.created_at,
                    "message": release.message,
                    "user": release.user,
                    "changes": what,
                    "outcome": release.outcome
                    or ("rolling out" if release.number == record.release else ""),
                    "current": release.number == record.release,
                }
            )
            previous = release.spec
        return web.json_response(out)

    async def rollout(self, request: web.Request) -> web.StreamResponse:
        name = self._name(request)
        _, record = await self._service(name)
        _, rollout = await releases.read_rollout(self.store, name)
        if rollout is None:
            raise NotFound(f"service {name!r} has no rollout yet", "apply a manifest first")
        members = [(s, st) for s, st in await views.load_instances(self.store) if s.service == name]
        current = [s.id for s, _ in members if s.desired == "running" and s.digest == record.digest]
        outdated = [
            s.id for s, _ in members if s.desired == "running" and s.digest != record.digest
        ]
        body = msgspec_to_dict(rollout)
        body.update({"current": current, "outdated": outdated, "desired": record.desired})
        return web.json_response(body)

    async def rollback(self, request: web.Request) -> web.StreamResponse:
        name = self._name(request)
        body = await self._body(request) if request.can_read_body else {}
        to = body.get("to")
        if to is not None and (not isinstance(to, int) or isinstance(to, bool) or to < 1):
            raise UserError(f"rollback {name}: `to` must be a release number", "--to 7")
        release = await releases.rollback(
            self.store,
            name,
            to,
            user=str(body.get("user") or ""),
            message=str(body.get("message") or ""),
        )
        return web.json_response(
            {"service": name, "release": release.number, "copied_from": release.copied_from}
        )

    async def rollout_verb(self, request: web.Request) -> web.StreamResponse:
        name = self._name(request)
        verb = request.match_info["verb"]
        if verb not in ("pause", "resume", "abort", "promote"):
            raise NotFound(f"no rollout command {verb!r}", "use pause, resume, abort or promote")
        if verb == "abort":
            revision, rollout = await releases.read_rollout(self.store, name)
            if rollout is None or rollout.state not in ("progressing", "paused"):
                raise UserError(f"service {name!r} has no rollout in progress to abort")
            if not rollout.stable_release:
                raise UserError(
                    f"service {name!r} has no earlier healthy release to return to",
                    "apply a fixed manifest instead",
                )
            release = await releases.rollback(
                self.store, name, rollout.stable_release, message="rollout aborted"
            )
            return web.json_response({"service": name, "aborted": True, "release": release.number})
        for _attempt in range(5):
            revision, rollout = await releases.read_rollout(self.store, name)
            if rollout is None or rollout.state not in ("progressing", "paused"):
                raise UserError(
                    f"service {name!r} has no rollout in progress",
                    f"`corral rollout status {name}` shows the last one",
                )
            if verb == "pause":
                rollout.state = "paused"
            elif verb == "resume":
                rollout.state = "progressing"
                rollout.last_progress_at = clock.wall()
            else:
                rollout.promoted = True
            event = events.make(name, "service", f"rollout {verb}d", service=name)
            txn = await self.store.txn(
                [Compare(releases.rollout_key(name), "mod_revision", "==", revision)],
                [
                    Put(releases.rollout_key(name), model.encode(rollout)),
                    Put(events.event_key(event.at), model.encode(event)),
                ],
            )
            if txn.succeeded:
                return web.json_response({"service": name, "state": rollout.state, "verb": verb})
        raise UserError(f"the rollout of {name!r} kept changing", "try again")

    async def restart_instance(self, request: web.Request) -> web.StreamResponse:
        instance_id = self._name(request, "id")
        if await self.store.get(model.instance_key(instance_id, "spec")) is None:
            raise NotFound(f"no instance {instance_id!r}", "`corral ps` lists instance ids")
        done = await self._restart([instance_id], "restart requested (corral restart)")
        return web.json_response({"restarted": done})

    async def events(self, request: web.Request) -> web.StreamResponse:
        limit = _int_query(request, "limit", 100)
        only = request.query.get("service")
        listing = await self.store.range(model.EVENTS)
        out = []
        for kv in listing.kvs:
            event = model.decode(kv.value, model.Event)
            if only and event.service != only and event.subject != only:
                continue
            out.append(events.as_dict(event))
        return web.json_response(out[-limit:] if limit else out)

    async def alerts(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await insight.alerts_view(self.alerter))

    async def changes(self, request: web.Request) -> web.StreamResponse:
        service = request.query.get("service", "")
        view = await insight.changes_view(
            self.store, self.alerter, service, request.query.get("since", "1h")
        )
        return web.json_response(view)

    async def capacity(self, request: web.Request) -> web.StreamResponse:
        try:
            near = float(request.query.get("near", NEAR))
        except ValueError:
            raise UserError("near must be a fraction, e.g. near=0.8", "near=0.8") from None
        view = await insight.capacity_view(self.store, self.alerter, self.usage, near)
        return web.json_response(view)

    async def event_stream(self, request: web.Request) -> web.StreamResponse:
        only = request.query.get("service")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        listing = await self.store.range(model.EVENTS, limit=1)
        revision = listing.revision + 1
        await response.write(b": connected\n\n")
        while True:
            try:
                async for change in self.store.watch(model.EVENTS, revision):
                    revision = change.kv.mod_revision + 1
                    if change.type != "put":
                        continue
                    event = model.decode(change.kv.value, model.Event)
                    if only and event.service != only and event.subject != only:
                        continue
                    data = json.dumps(events.as_dict(event))
                    await response.write(f"event: lifecycle\ndata: {data}\n\n".encode())
                return response
            except Compacted as exc:
                revision = exc.revision

    async def logs(self, request: web.Request) -> web.StreamResponse:
        name = self._name(request)
        tail = _int_query(request, "tail", 100)
        follow = _flag(request, "follow")
        instances = [
            s.id
            for s, _ in await views.load_instances(self.store)
            if s.service == name or s.id == name
        ]
        if not instances:
            raise NotFound(
                f"no service or instance named {name!r} has logs",
                "`corral ps` lists services and instance ids",
            )
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        width = max(len(i) for i in instances)
        files = {i: self.home.instances_dir / i / "output.log" for i in instances}
        for instance_id in instances:
            paths = logfiles.rotation_set(self.home.instances_dir / instance_id / "output.log")
            for line in await logfiles.tail(paths, tail):
                await response.write(f"{instance_id:<{width}} | {line}\n".encode())
        if not follow:
            await response.write_eof()
            return response
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)

        async def pump(instance_id: str, path: Path) -> None:
            async for line in logfiles.follow(path):
                await queue.put(f"{instance_id:<{width}} | {line}\n")

        tasks = [asyncio.create_task(pump(i, p)) for i, p in files.items()]
        try:
            while True:
                line = await queue.get()
                await response.write(line.encode())
        finally:
            for task in tasks:
                task.cancel()

    async def secrets(self, request: web.Request) -> web.StreamResponse:
        listing = await self.store.range(model.SECRETS)
        return web.json_response([kv.key[len(model.SECRETS) :] for kv in listing.kvs])

    async def set_secret(self, request: web.Request) -> web.StreamResponse:
        name = self._name(request)
        body = await self._body(request)
        value = body.get("value")
        if not isinstance(value, str):
            raise UserError(f"secret {name}: `value` must be a string", "send {value: '...'}")
        await self.store.txn([], [Put(model.SECRETS + name, value.encode())])
        event = events.make("platform", "platform", f"secret {name} set")
        await events.record(self.store, event)
        return web.json_response({"name": name})

    async def delete_secret(self, request: web.Request) -> web.StreamResponse:
        name = self._name(request)
        key = model.SECRETS + name
        txn = await self.store.txn([Compare(key, "exists", "==", True)], [Delete(key)])
        if not txn.succeeded:
            raise NotFound(f"no secret named {name!r}", "`corral secret list` shows the names")
        await events.record(
            self.store, events.make("platform", "platform", f"secret {name} removed")
        )
        return web.json_response({"name": name})

    async def down(self, request: web.Request) -> web.StreamResponse:
        names = await applying.stop_all(self.store)
        return web.json_response({"stopping": names})

    async def shutdown(self, request: web.Request) -> web.StreamResponse:
        if self.on_shutdown is not None:
            asyncio.get_running_loop().call_later(0.05, self.on_shutdown)
        return web.json_response({"ok": True})

    # -- gateway admin -----------------------------------------------------------------------

    async def _gateway_view(self) -> dict[str, Any]:
        _, record = await gateway_config.read(self.store)
        if record is None:
            raise NotFound(
                "no gateway is configured",
                "add a gateway: section to the manifest, or create a route (corral route set)",
            )
        status: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            status = json.loads((self.home.path / "gateway" / "status.json").read_text())
        return {
            "version": record.version,
            "source": record.source,
            "updated_at": record.updated_at,
            "message": record.message,
            "config": record.config,
            "live": status,
        }

    async def gateway_get(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self._gateway_view())

    async def routes_list(self, request: web.Request) -> web.StreamResponse:
        view = await self._gateway_view()
        return web.json_response(
            {"version": view["version"], "routes": view["config"].get("routes", [])}
        )

    async def route_get(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        view = await self._gateway_view()
        index = gateway_config.route_index(view["config"], name)
        return web.json_response(view["config"]["routes"][index])

    async def _edit(self, request: web.Request, change: Any, message: str) -> web.StreamResponse:
        services = set(await views.load_services(self.store))
        dry_run = _flag(request, "dry_run")
        record, config = await gateway_config.edit(
            self.store, services, self.home.path, change, message=message, dry_run=dry_run
        )
        return web.json_response(
            {
                "dry_run": dry_run,
                "version": record.version if record else 0,
                "routes": [r.name for r in config.routes],
            }
        )

    async def route_create(self, request: web.Request) -> web.StreamResponse:
        route = await self._body(request)
        name = str(route.get("name", ""))

        def change(config: dict[str, Any]) -> dict[str, Any]:
            if any(r.get("name") == name for r in config["routes"]):
                raise UserError(f"route {name!r} exists", f"corral route set {name} replaces it")
            config["routes"].append(route)
            return config

        return await self._edit(request, change, f"route {name} created")

    async def route_put(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        route = await self._body(request)
        route.setdefault("name", name)
        if route["name"] != name:
            raise UserError(
                f"the body names route {route['name']!r}, the path {name!r}", "make them agree"
            )

        def change(config: dict[str, Any]) -> dict[str, Any]:
            routes = config["routes"]
            for i, existing in enumerate(routes):
                if existing.get("name") == name:
                    routes[i] = route
                    return config
            routes.append(route)
            return config

        return await self._edit(request, change, f"route {name} set")

    async def route_delete(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]

        def change(config: dict[str, Any]) -> dict[str, Any]:
            del config["routes"][gateway_config.route_index(config, name)]
            return config

        return await self._edit(request, change, f"route {name} deleted")

    async def gateway_rollback(self, request: web.Request) -> web.StreamResponse:
        previous = await gateway_config.previous_version(self.store)
        return await self._edit(
            request,
            lambda _config: dict(previous.config),
            f"rolled back to the config of v{previous.version}",
        )

    async def route_switch(self, request: web.Request) -> web.StreamResponse:
        """Admin switches (route on/off, forced fallback, features off): a config version."""
        name = request.match_info["name"]
        change, message = gateway_admin.switch(name, await self._body(request))
        return await self._edit(request, change, message)

    async def breaker_reset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        gateway_config.route_index((await self._gateway_view())["config"], name)
        action = gateway_admin.GatewayAction("reset_breaker", route=name)
        await gateway_admin.request(self.store, action)
        return web.json_response({"action": action.action, "route": name, "at": action.at})

    async def plugins_reload(self, request: web.Request) -> web.StreamResponse:
        """Re-import in-process gateway plugins: a config version bumping the generation, so
        every gateway worker reloads (and disabled plugins start over)."""

        def change(config: dict[str, Any]) -> dict[str, Any]:
            config["plugins_generation"] = int(config.get("plugins_generation", 0)) + 1
            return config

        return await self._edit(request, change, "gateway plugins reloaded")

    async def cache_purge(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        route, prefix = str(body.get("route") or ""), str(body.get("prefix") or "")
        if route:
            gateway_config.route_index((await self._gateway_view())["config"], route)
        action = gateway_admin.GatewayAction("purge", route=route, prefix=prefix)
        await gateway_admin.request(self.store, action)
        return web.json_response(
            {"action": action.action, "route": route, "prefix": prefix, "at": action.at}
        )

    async def telemetry(self, request: web.Request) -> web.StreamResponse:
        """Front the collector's queries (it is its own process, so heavy ingest never delays
        this API): traces, dependencies, latency, top, slow-sql."""
        try:
            base = (self.home.path / "collector").read_text().strip()
        except FileNotFoundError:
            raise PlatformUnavailable(
                "the telemetry collector is not running",
                "`corral ps --system` shows corral-collector; see its logs",
            ) from None
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        token = self.tokens.get("read", "")
        url = f"{base}/telemetry/{request.match_info['query']}"
        try:
            async with self._http.get(
                url, params=request.query, headers={"Authorization": f"Bearer {token}"}
            ) as upstream:
                body = await upstream.read()
                return web.Response(
                    body=body,
                    status=upstream.status,
                    content_type=upstream.content_type,
                )
        except aiohttp.ClientError as exc:
            raise PlatformUnavailable(
                f"the telemetry collector at {base} does not answer ({exc})",
                "`corral ps --system` shows corral-collector",
            ) from None

    @staticmethod
    def _store_prefix(request: web.Request) -> str:
        prefix = request.query.get("prefix", "")
        if not prefix.startswith(model.PREFIX):
            raise UserError(f"prefix {prefix!r} is outside {model.PREFIX}", "prefix=/corral/…")
        if prefix.startswith(model.SECRETS) or model.SECRETS.startswith(prefix):
            # Secrets never leave through the remote Store: list narrower prefixes instead.
            raise Forbidden(f"prefix {prefix!r} would include secrets", "read a narrower prefix")
        config = alerting.CONFIG_KEY
        if prefix.startswith(config) or config.startswith(prefix):
            # Webhook URLs carry their receivers' credentials: as secret as secrets.
            raise Forbidden(
                f"prefix {prefix!r} would include the alerting config ({config})",
                "read a narrower prefix",
            )
        return prefix

    async def store_range(self, request: web.Request) -> web.StreamResponse:
        """The remote Store's read side, for platform processes (gateway, collector)."""
        prefix = self._store_prefix(request)
        listing = await self.store.range(prefix, _int_query(request, "limit", 0))
        return web.json_response(
            {
                "revision": listing.revision,
                "more": listing.more,
                "kvs": [_kv_dict(kv) for kv in listing.kvs],
            }
        )

    async def store_watch(self, request: web.Request) -> web.StreamResponse:
        """Every change under ``prefix`` from ``start_revision`` on, as server-sent events;
        an ``event: compacted`` (data: the compacted revision) means re-list and watch again."""
        prefix = self._store_prefix(request)
        start = _int_query(request, "start_revision", 0)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        await response.write(b": watching\n\n")
        # A comment line every WATCH_HEARTBEAT seconds of silence: a watcher cut off from this
        # node (packets dropped, no reset) notices the missing heartbeats and fails over.
        changes: AsyncIterator[WatchEvent] | None = None
        pending: asyncio.Future[WatchEvent] | None = None
        try:
            # inside the try: a start already compacted may raise right here
            changes = self.store.watch(prefix, start).__aiter__()
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(changes.__anext__())
                done, _ = await asyncio.wait({pending}, timeout=WATCH_HEARTBEAT)
                if not done:
                    await response.write(b": ping\n\n")
                    continue
                try:
                    change = pending.result()
                except StopAsyncIteration:
                    break
                pending = None
                data = json.dumps({"type": change.type, "kv": _kv_dict(change.kv)})
                await response.write(f"data: {data}\n\n".encode())
        except Compacted as exc:
            await response.write(f"event: compacted\ndata: {exc.revision}\n\n".encode())
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await pending
            aclose = getattr(changes, "aclose", None) if changes is not None else None
            if aclose is not None:
                await aclose()
        return response

    async def backup(self, request: web.Request) -> web.StreamResponse:
        backup = getattr(self.store, "backup", None)
        if backup is None:
            raise UserError("this store backend cannot take a backup through the API")
        target = self.home.path / f".backup-{clock.wall():.0f}.db"
        try:
            await backup(target)
            data = target.read_bytes()
        finally:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
        return web.Response(body=data, content_type="application/octet-stream")


def msgspec_to_dict(record: Any) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(record)
    return result


def _kv_dict(kv: Any) -> dict[str, Any]:
    return {
        "key": kv.key,
        "value": kv.value.decode("utf-8", "replace"),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    }


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")


def _int_query(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return max(0, int(raw))
    except ValueError:
        raise UserError(f"query parameter {name}={raw!r} is not a number", f"{name}=100") from None


async def listen(api: Api, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``api`` on ``host:port`` (port 0: a free one); the runner and the bound port."""
    runner = web.AppRunner(api.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = port
    for address in runner.addresses:
        bound = int(address[1])
        break
    return runner, bound
