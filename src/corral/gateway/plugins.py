"""Gateway plugins: a route's ordered list of in-process and out-of-process hooks.

See docs/plugins.md for the user's view. The proxy asks ``Gateway.plugins`` (None when no
route has plugins: a plugin-free gateway pays one attribute test per request) for the route's
``PluginChain`` and drives it:

- ``on_request(request)`` in order; a plugin may answer (return ``Respond``) or edit the
  headers sent upstream (``request.set_header``/``remove_header``). An out-of-process plugin
  makes the chain *pending*: the proxy parks the request and ``resume`` is called with the
  outcome when the reply (or the timeout) arrives.
- ``on_response_headers(request, response)`` may edit the response head.
- ``on_body_chunk(request, chunk)`` (opt-in) sees each raw response body read as forwarded
  (chunked framing included); it observes, it cannot rewrite.
- ``on_log(records)`` gets ``LogRecord`` batches from the gateway's sweep, off the request path.

Headers are a lazy view over the raw head bytes: nothing is parsed until a plugin reads one.
A plugin that raises answers that request with 500 and is counted (``plugin_error``) and
logged; the route and the gateway keep serving. In-process calls are timed and fed to
``plugin_budget``: a plugin that keeps overrunning its budget is disabled (``plugin_disabled``).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from corral.errors import UserError
from corral.gateway.plugin_budget import BudgetRule, BudgetTracker
from corral.gateway.policy_config import PHASES, PluginSpec

__all__ = [
    "PENDING",
    "Headers",
    "LogRecord",
    "PluginChain",
    "PluginLoadError",
    "PluginRequest",
    "PluginResponse",
    "Respond",
    "load_plugin",
]

log = logging.getLogger("corral.gateway.plugins")

MAX_PENDING_LOGS = 10_000  # per chain between two sweeps; older records are dropped, counted


class PluginLoadError(UserError):
    """A plugin's ``module`` cannot be imported or does not name a usable object."""

    code = "plugin_load_failed"


class Headers:
    """A read-only, case-insensitive view over raw HTTP head bytes, parsed on first access."""

    __slots__ = ("_head", "_map")

    def __init__(self, head: bytes) -> None:
        self._head = head
        self._map: dict[str, list[str]] | None = None

    def _parsed(self) -> dict[str, list[str]]:
        parsed = self._map
        if parsed is None:
            parsed = self._map = {}
            for line in self._head.split(b"\r\n")[1:]:
                name, sep, value = line.partition(b":")
                if sep:
                    key = name.strip().decode("latin-1").lower()
                    parsed.setdefault(key, []).append(value.strip().decode("latin-1"))
        return parsed

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._parsed().get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        return list(self._parsed().get(name.lower(), ()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._parsed()

    def items(self) -> Iterator[tuple[str, str]]:
        for name, values in self._parsed().items():
            for value in values:
                yield name, value

    @property
    def parsed(self) -> bool:
        """Whether anything read the headers (tests check the lazy promise with it)."""
        return self._map is not None


class _Edits:
    __slots__ = ("_head", "_headers", "added", "removed")

    def __init__(self, head: bytes) -> None:
        self._head = head
        self._headers: Headers | None = None
        self.removed: list[str] = []
        self.added: list[tuple[str, str]] = []

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            headers = self._headers = Headers(self._head)
        return headers

    def set_header(self, name: str, value: str) -> None:
        """Replace every ``name`` header with one line ``name: value``."""
        _check_header(name, value)
        self.removed.append(name.lower())
        self.added = [(n, v) for n, v in self.added if n.lower() != name.lower()]
        self.added.append((name, value))

    def remove_header(self, name: str) -> None:
        self.removed.append(name.lower())
        self.added = [(n, v) for n, v in self.added if n.lower() != name.lower()]

    @property
    def edited(self) -> bool:
        return bool(self.removed or self.added)

    def apply(self, head: bytes) -> bytes:
        """``head`` (ending in a blank line) with these edits made."""
        if not self.edited:
            return head
        gone = {b"\r\n" + n.encode("latin-1") + b":" for n in self.removed}
        lines = head[:-4].split(b"\r\n")
        kept = [lines[0]]
        for line in lines[1:]:
            name = b"\r\n" + line.split(b":", 1)[0].strip().lower() + b":"
            if name not in gone:
                kept.append(line)
        kept.extend(n.encode("latin-1") + b": " + v.encode("latin-1") for n, v in self.added)
        return b"\r\n".join(kept) + b"\r\n\r\n"


def _check_header(name: str, value: str) -> None:
    bad = not name or any(c in name for c in ":\r\n \t") or "\r" in value or "\n" in value
    if bad:
        raise UserError(
            f"a plugin set an invalid header {name!r}: {value!r}",
            "names have no spaces or colons; values have no line breaks",
        )


class PluginRequest(_Edits):
    """What ``on_request`` sees: the request line parts, lazy ``headers``, and edits."""

    __slots__ = ("client", "host", "method", "path", "query", "request_id", "route", "state")

    def __init__(
        self,
        route: str,
        method: str,
        host: str,
        path: str,
        query: str,
        client: str,
        request_id: str,
        head: bytes,
    ) -> None:
        super().__init__(head)
        self.route = route
        self.method = method
        self.host = host
        self.path = path
        self.query = query
        self.client = client
        self.request_id = request_id
        self.state: dict[str, Any] = {}  # shared between one request's phases


class PluginResponse(_Edits):
    """What ``on_response_headers`` sees: the upstream's status and lazy ``headers``."""

    __slots__ = ("status",)

    def __init__(self, status: int, head: bytes) -> None:
        super().__init__(head)
        self.status = status


@dataclass(frozen=True, slots=True)
class Respond:
    """Returned by ``on_request``: answer the request now, without the upstream."""

    status: int
    body: bytes | str = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    def render(self, *, close: bool, request_id: bytes) -> bytes:
        body = self.body.encode() if isinstance(self.body, str) else self.body
        lines = [b"HTTP/1.1 %d %s" % (self.status, _reason(self.status))]
        names = {n.lower() for n in self.headers}
        for name, value in self.headers.items():
            _check_header(name, value)
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                lines.append(name.encode("latin-1") + b": " + value.encode("latin-1"))
        if "content-type" not in names and body:
            lines.append(b"Content-Type: text/plain; charset=utf-8")
        lines.append(b"Content-Length: %d" % len(body))
        if request_id:
            lines.append(b"X-Request-Id: " + request_id)
        if close:
            lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _reason(status: int) -> bytes:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


class LogRecord(NamedTuple):
    route: str
    method: str
    host: str
    path: str
    status: int
    duration: float  # seconds, request start → response accounted
    request_id: str
    client: str


class _Pending:
    def __repr__(self) -> str:
        return "PENDING"


PENDING: Any = _Pending()  # chain outcome: waiting for an out-of-process reply

Hook = Callable[..., Any]


def _import(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise PluginLoadError(
            f"plugin module {module_name!r} cannot be imported: {error!r}",
            "check the module is on the gateway's Python path (PYTHONPATH) and imports cleanly",
        ) from error
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise PluginLoadError(
                f"plugin {target!r}: module {module_name!r} has no {attr!r}",
                "name a function or a class defined in that module",
            )
    return obj


def reload_modules(specs: list[PluginSpec]) -> list[str]:
    """Re-import the modules of in-process ``specs`` (importlib.reload); returns their names."""
    names = sorted({s.module.partition(":")[0] for s in specs if s.module is not None})
    for name in names:
        module = importlib.import_module(name)
        try:
            importlib.reload(module)
        except Exception as error:
            raise PluginLoadError(
                f"plugin module {name!r} failed to reload: {error!r}",
                "fix the module; the previous version keeps serving until a reload succeeds",
            ) from error
    return names


@dataclass(eq=False)
class InProcess:
    """One loaded in-process plugin and its measured budget."""

    label: str
    hooks: dict[str, Hook]
    tracker: BudgetTracker
    disabled: bool = False

    def hook(self, phase: str) -> Hook | None:
        return None if self.disabled else self.hooks.get(phase)


def load_plugin(spec: PluginSpec, rule: BudgetRule | None = None) -> InProcess:
    """Import ``spec.module``: a class is instantiated with ``config`` and its phase methods
    are the hooks; a function serves ``spec.phases`` (default on_request) and gets ``config``
    as its last argument."""
    assert spec.module is not None
    obj: Any = _import(spec.module)
    hooks: dict[str, Hook] = {}
    config = dict(spec.config)
    if inspect.isclass(obj):
        factory: Any = obj
        try:
            instance = factory(config)
        except Exception as error:
            raise PluginLoadError(
                f"plugin class {spec.module!r} failed to start: {error!r}",
                "its __init__ takes one argument, the route's plugin config dict",
            ) from error
        for phase in spec.phases or PHASES:
            method = getattr(instance, phase, None)
            if callable(method):
                hooks[phase] = method
    elif callable(obj):
        function = obj
        phases: tuple[str, ...] = tuple(spec.phases) or ("on_request",)
        for name in phases:
            hooks[name] = _with_config(function, config)
    else:
        raise PluginLoadError(
            f"plugin {spec.module!r} is neither a function nor a class",
            'point module at "package.module:function" or "package.module:Class"',
        )
    if not hooks:
        raise PluginLoadError(
            f"plugin {spec.module!r} defines none of the phases {', '.join(spec.phases or PHASES)}",
            "define on_request, on_response_headers, on_body_chunk or on_log",
        )
    return InProcess(spec.module, hooks, BudgetTracker(rule or BudgetRule(spec.budget)))


def _with_config(function: Hook, config: dict[str, Any]) -> Hook:
    def call(*args: Any) -> Any:
        return function(*args, config)

    return call


class RemoteCall:
    """What a chain needs from an out-of-process plugin (``plugins_process.PluginProcess``)."""

    label: str
    timeout: float
    fail_closed: bool

    def call(self, message: dict[str, Any], reply: Callable[[dict[str, Any] | None], None]) -> None:
        raise NotImplementedError


Counter = Callable[[str, str], None]


class PluginChain:
    """One route's plugins, in order, with the hooks of each phase picked out."""

    def __init__(self, route: str, entries: list[InProcess | RemoteCall], count: Counter) -> None:
        self.route = route
        self.entries = entries
        self.count = count
        self.response = [e for e in entries if isinstance(e, InProcess) and e.hooks.get(PH_RESP)]
        self.body = [e for e in entries if isinstance(e, InProcess) and e.hooks.get(PH_BODY)]
        self.logs = [e for e in entries if isinstance(e, InProcess) and e.hooks.get(PH_LOG)]
        self.pending_logs: list[LogRecord] = []

    # --- timing and isolation ---------------------------------------------------------------

    def _call(self, entry: InProcess, hook: Hook, *args: Any) -> Any:
        """Run one hook, timed; an exception propagates as ``PluginFailed``."""
        start = time.perf_counter()
        try:
            return hook(*args)
        except Exception as error:
            self.count(self.route, "plugin_error")
            log.warning(
                "gateway plugin %s on route %s raised %r; that request gets a 500",
                entry.label,
                self.route,
                error,
                exc_info=error,
            )
            raise PluginFailed(entry.label) from error
        finally:
            end = time.perf_counter()
            verdict = entry.tracker.record(end - start, end)
            if verdict is not None:
                entry.disabled = True
                self.count(self.route, "plugin_disabled")
                log.warning(
                    "gateway plugin %s on route %s disabled: %s (reload the route or "
                    "POST /api/v1/gateway/plugins/reload to enable it again)",
                    entry.label,
                    self.route,
                    verdict.reason,
                )

    # --- phases -----------------------------------------------------------------------------

    def on_request(
        self, request: PluginRequest, resume: Callable[[Respond | None], None], start: int = 0
    ) -> Respond | None:
        """Run ``on_request`` hooks from ``start``: a ``Respond``, None (go on upstream), or
        PENDING (``resume`` will be called with the outcome)."""
        entries = self.entries
        for i in range(start, len(entries)):
            entry = entries[i]
            if isinstance(entry, InProcess):
                hook = entry.hook(PH_REQ)
                if hook is None:
                    continue
                try:
                    answer = self._call(entry, hook, request)
                except PluginFailed as failed:
                    return Respond(500, f"plugin {failed.label} failed\n")
                if isinstance(answer, Respond):
                    self.count(self.route, "plugin_answered")
                    return answer
                continue
            entry.call(_message(request), self._on_reply(entry, request, resume, i))
            return PENDING  # type: ignore[no-any-return]  # the PENDING sentinel is Any
        return None

    def _on_reply(
        self,
        entry: RemoteCall,
        request: PluginRequest,
        resume: Callable[[Respond | None], None],
        index: int,
    ) -> Callable[[dict[str, Any] | None], None]:
        def reply(message: dict[str, Any] | None) -> None:
            if message is None:  # timed out, or the process is down
                self.count(self.route, "plugin_timeout")
                if entry.fail_closed:
                    resume(Respond(503, f"plugin {entry.label} did not answer in time\n"))
                    return
            else:
                try:
                    answer = _apply_reply(message, request)
                except Exception as error:
                    self.count(self.route, "plugin_error")
                    log.warning("gateway plugin %s sent a bad reply: %r", entry.label, error)
                    resume(Respond(500, f"plugin {entry.label} failed\n"))
                    return
                if answer is not None:
                    self.count(self.route, "plugin_answered")
                    resume(answer)
                    return
            outcome = self.on_request(request, resume, index + 1)
            if outcome is not PENDING:
                resume(outcome)

        return reply

    def on_response_headers(self, request: PluginRequest, status: int, head: bytes) -> bytes:
        """The response head after every ``on_response_headers`` hook (raises
        ``PluginFailed``)."""
        response = PluginResponse(status, head)
        for entry in self.response:
            hook = entry.hook(PH_RESP)
            if hook is not None:
                self._call(entry, hook, request, response)
        return response.apply(head)

    def on_body_chunk(self, request: PluginRequest, chunk: bytes) -> None:
        for entry in self.body:
            hook = entry.hook(PH_BODY)
            if hook is not None:
                try:
                    self._call(entry, hook, request, chunk)
                except PluginFailed:
                    pass  # the response is already under way: counted and logged, no 500

    def record(self, record: LogRecord) -> None:
        pending = self.pending_logs
        if len(pending) >= MAX_PENDING_LOGS:
            del pending[: len(pending) // 2]
            self.count(self.route, "plugin_log_dropped")
        pending.append(record)

    def flush_logs(self) -> None:
        """Hand the batched records to each ``on_log`` hook (the gateway's sweep calls it)."""
        batch = self.pending_logs
        if not batch:
            return
        self.pending_logs = []
        for entry in self.logs:
            hook = entry.hook(PH_LOG)
            if hook is not None:
                try:
                    self._call(entry, hook, batch)
                except PluginFailed:
                    pass  # counted and logged; the next batch tries again


PH_REQ, PH_RESP, PH_BODY, PH_LOG = PHASES


class PluginFailed(Exception):
    """An in-process hook raised (internal: the proxy turns it into a 500)."""

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.label = label


def _message(request: PluginRequest) -> dict[str, Any]:
    return {
        "phase": "on_request",
        "route": request.route,
        "method": request.method,
        "host": request.host,
        "path": request.path,
        "query": request.query,
        "client": request.client,
        "request_id": request.request_id,
        "headers": [[n, v] for n, v in request.headers.items()],
    }


def _apply_reply(message: Mapping[str, Any], request: PluginRequest) -> Respond | None:
    """Apply a process's reply (docs/plugins.md) to ``request``; a ``Respond`` to answer."""
    action = message.get("action", "continue")
    if action == "respond":
        headers = message.get("headers") or {}
        body = message.get("body") or ""
        if not isinstance(headers, dict) or not isinstance(body, str):
            raise UserError("respond needs headers as an object and body as a string")
        return Respond(
            int(message.get("status", 200)), body, {str(k): str(v) for k, v in headers.items()}
        )
    if action != "continue":
        raise UserError(f"unknown action {action!r}", 'use "continue" or "respond"')
    for name in message.get("remove_headers") or ():
        request.remove_header(str(name))
    for name, value in (message.get("set_headers") or {}).items():
        request.set_header(str(name), str(value))
    return None
