"""The `corral` command line. Every command is a thin call of the API through ``Client``;
user mistakes print ``error: … / hint: …`` and exit 2, an unreachable platform exits 3."""

from __future__ import annotations

import getpass
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml
from rich.markup import escape

from corral import __version__
from corral.cli import alerts as alerts_cli
from corral.cli import cluster as cluster_cli
from corral.cli import render
from corral.cli import traffic as traffic_cli
from corral.cli.gateway import gateway as gateway_group
from corral.cli.kv import kv as kv_group
from corral.client import Client
from corral.errors import CorralError, PlatformUnavailable, UserError
from corral.home import Home
from corral.manifest import LoadedManifest, load_manifest

F = TypeVar("F", bound=Callable[..., Any])
SERVER_START_SECONDS = 20.0
STORE_HELP = (
    "Where the platform keeps its state: sqlite ($CORRAL_HOME/store.db) or "
    "etcd://HOST:PORT,HOST:PORT/prefix (prefix optional). Remembered by the home; "
    "default: the last one."
)


def _home() -> Home:
    return Home.resolve()


def _client() -> Client:
    home = _home()
    client = Client.for_home(home)
    return client


def _load(path: str) -> LoadedManifest:
    loaded = load_manifest(path)
    for name, service in sorted(loaded.manifest.services.items()):
        # Valid, but worth knowing before it surprises someone (the manifest has no warnings
        # channel of its own; the CLI is where a person reads them).
        warning = service.kv.warning() if service.kv is not None else ""
        if warning:
            render.err.print(f"[yellow]warning:[/] services.{name}.kv: {escape(warning)}")
    return loaded


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _manifest_body(loaded: LoadedManifest, message: str = "") -> dict[str, Any]:
    # Send what the user wrote (already validated here); the server validates it again.
    assert loaded.path is not None
    return {
        "manifest": yaml.safe_load(loaded.path.read_text()),
        "source": str(loaded.path),
        "base_dir": str(loaded.base_dir),
        "message": message,
        "user": _user(),
    }


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="corral")
def cli() -> None:
    """Corral runs a fleet of services from one manifest and keeps them healthy.

    CORRAL_HOME selects the platform's state directory (default ~/.corral)."""


@cli.command()
@click.argument("manifest", type=click.Path())
def validate(manifest: str) -> None:
    """Check a manifest completely; exit 0 if valid, 2 with every problem listed if not."""
    loaded = _load(manifest)
    names = sorted(loaded.manifest.services)
    if loaded.manifest.gateway is not None:
        from corral.control.gateway_config import validate as validate_gateway

        validate_gateway(loaded.manifest.gateway, set(names), loaded.source)
    render.out.print(f"[green]✓[/] {loaded.path}: {len(names)} service(s): {', '.join(names)}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="API listen address")
@click.option("--port", default=0, type=int, help="API port (0: a free port)")
@click.option("--store", default=None, envvar="CORRAL_STORE", help=STORE_HELP)
@cluster_cli.server_options
def server(host: str, port: int, store: str | None = None, **cluster: Any) -> None:
    """Run the control plane in the foreground (with --cluster: one node of a replicated one)."""
    if cluster_cli.run_node_if_asked(_home(), host, port, cluster, sys.stderr.isatty(), store):
        return
    from corral import server as server_module

    server_module.main(_home(), host, port, foreground=sys.stderr.isatty(), store_url=store)


def _running_client(home: Home) -> Client | None:
    urls = home.api_urls()
    if not urls or not home.is_locked():
        return None
    client = Client(urls, home.token("admin"))
    return client if client.healthy() else None


def ensure_server(home: Home, store: str | None = None) -> Client:
    """Return a client of this home's control plane, starting one in the background if none
    is running (it re-adopts whatever instances are still running) on ``store`` if given."""
    client = _running_client(home)
    if client is not None:
        return client
    home.create()
    log = open(home.log_file, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.cli.main", "server", *(["--store", store] if store else [])],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        env={**os.environ, "CORRAL_HOME": str(home.path)},
        close_fds=True,
    )
    log.close()
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _tail(home.log_file, 15)
            raise PlatformUnavailable(
                f"the control plane exited at start (code {proc.returncode}):\n{tail}",
                f"see {home.log_file}",
            )
        client = _running_client(home)
        if client is not None:
            return client
        time.sleep(0.05)
    raise PlatformUnavailable(
        f"the control plane did not come up within {SERVER_START_SECONDS:g}s",
        f"see {home.log_file}",
    )


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _print_apply(result: dict[str, Any]) -> None:
    for name in result.get("discarded_live_edits") or []:
        render.out.print(f"  [yellow]discards[/] the live edit of gateway route {name}")
    _print_changes(result["changes"])
    if result.get("gateway"):
        render.out.print(f"  gateway   {result['gateway']}")


def _print_changes(changes: dict[str, str]) -> None:
    for name in sorted(changes):
        verb = changes[name]
        style = {"created": "green", "updated": "yellow", "removed": "red"}.get(verb, "dim")
        render.out.print(f"  [{style}]{verb:<9}[/] {name}")


def _settled(services: list[dict[str, Any]]) -> tuple[bool, list[dict[str, Any]]]:
    failed = [s for s in services if s["state"] == "failed"]
    done = all(
        s["state"] == "run" or (s["kind"] == "task" and s.get("reason", "").startswith("completed"))
        for s in services
    )
    return done and not failed, failed


def wait_ready(client: Client, timeout: float) -> tuple[bool, list[dict[str, Any]]]:
    deadline = time.monotonic() + timeout
    services: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        services = client.request("GET", "/services", query={"system": 1})
        ok, _ = _settled(services)
        if ok:
            return True, services
        time.sleep(0.1)
    return False, services


def _endpoints(client: Client) -> list[str]:
    lines = []
    try:
        gateway = client.request("GET", "/gateway/config")
        listen = gateway["config"].get("listen", "")
        lines.append(f"  {'gateway':<12} http://{listen}/   ← open this")
    except CorralError:
        pass
    lines.append(f"  {'dashboard':<12} {client.base_url}/   (`corral dashboard --open` signs in)")
    instances = client.request("GET", "/instances")
    seen: set[str] = set()
    for i in instances:
        if i["phase"] == "run" and i["port"] and i["service"] not in seen:
            seen.add(i["service"])
            lines.append(f"  {i['service']:<12} http://127.0.0.1:{i['port']}/")
    return lines


@cli.command()
@click.argument("manifest", type=click.Path(), default=".")
@click.option("-d", "--detach", is_flag=True, help="Return once every service is ready.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for ready.")
@click.option("-m", "--message", default="", help="Why (recorded with new releases).")
@click.option("--store", default=None, help=STORE_HELP + " Used when `up` starts the platform.")
def up(manifest: str, detach: bool, timeout: float, message: str, store: str | None) -> None:
    """Start the platform if needed, apply MANIFEST, and wait until every service is ready.

    In the foreground it follows status live and runs `down` on Ctrl-C."""
    loaded = _load(manifest)
    home = _home()
    client = ensure_server(home, store)
    result = client.request("POST", "/apply", _manifest_body(loaded, message))
    _print_apply(result)
    if detach:
        ok, services = wait_ready(client, timeout)
        if ok:
            render.out.print("[green]✓[/] every service is ready")
            for line in _endpoints(client):
                render.out.print(line)
            return
        render.print_table(render.services_table(services))
        not_ready = [s for s in services if s["state"] != "run"]
        for s in not_ready:
            render.err.print(f"[red]✗[/] {s['name']}: {s['state']} — {s.get('reason') or '?'}")
        raise SystemExit(1)
    _follow_foreground(client, home)


def _follow_foreground(client: Client, home: Home) -> None:
    from rich.live import Live

    stop = {"flag": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    announced = False
    with Live(refresh_per_second=4, console=render.out, transient=False) as live:
        while not stop["flag"]:
            try:
                services = client.request("GET", "/services")
            except CorralError:
                break
            live.update(render.services_table(services))
            ok, _ = _settled(services)
            if ok and not announced:
                announced = True
                lines = _endpoints(client)
                live.console.print(
                    f"[green]✓[/] every service is ready (home {home.path}); Ctrl-C stops all"
                )
                for line in lines:
                    live.console.print(line)
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline and not stop["flag"]:
                time.sleep(0.05)
    render.out.print()
    render.out.print("stopping every service…")
    _down(client, home, timeout=120.0)


@cli.command()
@click.argument("manifest", type=click.Path())
@click.option("-m", "--message", default="", help="Why (recorded with new releases).")
def apply(manifest: str, message: str) -> None:
    """Apply a changed manifest to the running platform."""
    loaded = _load(manifest)
    result = _client().request("POST", "/apply", _manifest_body(loaded, message))
    _print_apply(result)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--system", is_flag=True, help="Include the platform's own services.")
def status(as_json: bool, system: bool) -> None:
    """Services: state, desired, ready, release."""
    services = _client().request("GET", "/services", query={"system": int(system)})
    if as_json:
        render.write(json.dumps(services, indent=2))
        return
    render.print_table(render.services_table(services))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--system", is_flag=True, help="Include the platform's own processes.")
@click.option("--service", default=None, help="Only this service's instances.")
def ps(as_json: bool, system: bool, service: str | None) -> None:
    """Instances: id, service, phase, pid, port, restarts, age, last exit, next restart in."""
    query: dict[str, Any] = {"system": int(system)}
    if service:
        query["service"] = service
    instances = _client().request("GET", "/instances", query=query)
    if as_json:
        render.write(json.dumps(instances, indent=2))
        return
    render.print_table(render.instances_table(instances))


@cli.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--tail", default=100, show_default=True, help="Lines of history.")
def logs(name: str, follow: bool, tail: int) -> None:
    """Logs of a service (merged, prefixed by instance) or of one instance."""
    client = _client()
    try:
        for line in client.stream(f"/logs/{name}", {"tail": tail, "follow": int(follow)}):
            render.write(line)
    except KeyboardInterrupt:
        pass


@cli.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events.")
@click.option("--service", default=None, help="Only events of this service.")
@click.option("-n", "--limit", default=50, show_default=True)
def events(follow: bool, service: str | None, limit: int) -> None:
    """Every lifecycle transition with its reason."""
    client = _client()
    query: dict[str, Any] = {"limit": limit}
    if service:
        query["service"] = service
    for event in client.request("GET", "/events", query=query):
        render.write(render.event_line(event))
    if not follow:
        return
    stream_query = {"service": service} if service else None
    try:
        for line in client.stream("/events/stream", stream_query):
            if line.startswith("data: "):
                render.write(render.event_line(json.loads(line[6:])))
    except KeyboardInterrupt:
        pass


@cli.command()
@click.argument("assignments", nargs=-1, required=True)
def scale(assignments: tuple[str, ...]) -> None:
    """Set desired instances: `corral scale web=3 orders=2`."""
    client = _client()
    for item in assignments:
        name, sep, count = item.partition("=")
        if not sep or not count.strip().isdigit():
            raise UserError(f"cannot read {item!r}", "write SERVICE=COUNT, e.g. web=3")
        result = client.request("POST", f"/services/{name}/scale", {"instances": int(count)})
        render.out.print(f"{name}: {result['from']} → {result['to']}")


@cli.command()
@click.argument("name")
def restart(name: str) -> None:
    """Restart a service (rolling, within its disruption budget), or one instance by id."""
    client = _client()
    services = {s["name"] for s in client.request("GET", "/services", query={"system": 1})}
    path = f"/services/{name}/restart" if name in services else f"/instances/{name}/restart"
    result = client.request("POST", path)
    how = "rolling restart of" if result.get("rolling") else "restarting"
    render.out.print(f"{how} {', '.join(result['restarted']) or 'nothing'}")


@cli.command()
@click.argument("manifest", type=click.Path())
def diff(manifest: str) -> None:
    """What `apply` would change, per service, before doing it."""
    loaded = _load(manifest)
    result = _client().request("POST", "/diff", _manifest_body(loaded))
    render.diff(result)


@cli.command()
@click.argument("service")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def releases(service: str, as_json: bool) -> None:
    """A service's numbered release history: what changed, who/why, when, outcome."""
    history = _client().request("GET", f"/services/{service}/releases")
    if as_json:
        render.write(json.dumps(history, indent=2))
        return
    render.print_table(render.releases_table(history))


@cli.command()
@click.argument("service")
@click.option("--to", "to", type=int, default=None, help="Release number (default: last good).")
@click.option("-m", "--message", default="", help="Why.")
def rollback(service: str, to: int | None, message: str) -> None:
    """Roll back: a new release that copies an old one (config travels with code)."""
    body: dict[str, Any] = {"message": message, "user": _user()}
    if to is not None:
        body["to"] = to
    result = _client().request("POST", f"/services/{service}/rollback", body)
    render.out.print(
        f"{service}: release v{result['release']} (copy of v{result['copied_from']}) rolling out"
    )


@cli.group()
def rollout() -> None:
    """Follow and steer a service's current rollout."""


@rollout.command("status")
@click.argument("service")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def rollout_status(service: str, as_json: bool) -> None:
    """Progress of the current update, with the step it waits on."""
    state = _client().request("GET", f"/services/{service}/rollout")
    if as_json:
        render.write(json.dumps(state, indent=2))
        return
    render.rollout(state)


def _rollout_verb(verb: str) -> Callable[[str], None]:
    def command(service: str) -> None:
        result = _client().request("POST", f"/services/{service}/rollout/{verb}")
        render.out.print(f"{service}: rollout {verb} → {result.get('state', 'done')}")

    command.__doc__ = {
        "pause": "Pause the rollout where it is.",
        "resume": "Resume a paused rollout.",
        "abort": "Abort: return to the last healthy release.",
        "promote": "Promote a canary: continue the rollout to every instance.",
    }[verb]
    return command


for _verb in ("pause", "resume", "abort", "promote"):
    rollout.command(_verb)(click.argument("service")(_rollout_verb(_verb)))


def _down(client: Client, home: Home, timeout: float) -> None:
    client.request("POST", "/down")
    deadline = time.monotonic() + timeout
    remaining: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        remaining = client.request("GET", "/services", query={"system": 1})
        if not remaining:
            break
        time.sleep(0.1)
    if remaining:
        names = ", ".join(s["name"] for s in remaining)
        render.err.print(f"[yellow]still stopping after {timeout:g}s:[/] {names}")
    wait_for_lock = home.server_pid() is not None
    nodes: list[str] = []
    if home.cluster_file.exists() or len(client.urls) > 1:
        nodes = cluster_cli.node_urls(client, home)
    if nodes:  # a cluster: every node, not only the one that answered
        running = cluster_cli.stop_nodes(client, nodes)
        if running:
            render.err.print(f"[yellow]still running after 10s:[/] {', '.join(running)}")
        wait_for_lock = True  # nodes on this machine hold the home's lock until they exit
    else:
        client.request("POST", "/shutdown")
    deadline = time.monotonic() + 10.0
    while wait_for_lock and time.monotonic() < deadline and home.is_locked():
        time.sleep(0.05)
    render.out.print("[green]✓[/] stopped")


@cli.command()
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for stops.")
def down(timeout: float) -> None:
    """Stop every service in reverse dependency order, then the platform."""
    home = _home()
    _down(Client.for_home(home), home, timeout)


@cli.group()
def secret() -> None:
    """Manage secrets (values are never shown)."""


@secret.command("set")
@click.argument("name")
@click.option("--value", default=None, help="The value (default: read from stdin or a prompt).")
def secret_set(name: str, value: str | None) -> None:
    if value is None:
        if sys.stdin.isatty():
            value = click.prompt(f"value of {name}", hide_input=True)
        else:
            value = sys.stdin.read().rstrip("\n")
    _client().request("PUT", f"/secrets/{name}", {"value": value})
    render.out.print(f"secret {name} set")


@secret.command("list")
def secret_list() -> None:
    for name in _client().request("GET", "/secrets"):
        render.write(name)


@secret.command("rm")
@click.argument("name")
def secret_rm(name: str) -> None:
    _client().request("DELETE", f"/secrets/{name}")
    render.out.print(f"secret {name} removed")


@cli.command()
@click.argument("file", type=click.Path())
def backup(file: str) -> None:
    """Write a consistent snapshot of the platform's state to FILE."""
    data = _client().request("GET", "/backup", timeout=120)
    Path(file).write_bytes(data)
    render.out.print(f"backup written to {file} ({len(data)} bytes)")


@cli.command()
@click.argument("file", type=click.Path(exists=True))
def restore(file: str) -> None:
    """Replace the platform's state with a backup (the control plane must be stopped)."""
    from corral.store.sqlite import restore_backup

    home = _home()
    if home.is_locked():
        raise UserError(
            f"a control plane is running for {home.path}",
            "stop it first (`corral down`, or stop `corral server`), then restore",
        )
    home.create()
    restore_backup(Path(file), home.store_path)
    render.out.print(f"restored {file} into {home.store_path}")


@cli.command()
def schema() -> None:
    """Print the manifest's JSON Schema (for editors)."""
    from corral.manifest import manifest_json_schema

    render.write(json.dumps(manifest_json_schema(), indent=2))


cli.add_command(gateway_group)
cli.add_command(cluster_cli.cluster)
cli.add_command(kv_group)
cli.add_command(alerts_cli.alerts)
cli.add_command(alerts_cli.changes)
cli.add_command(alerts_cli.capacity)


@cli.command()
@click.option("--open", "open_browser", is_flag=True, help="Open it in the default browser.")
def dashboard(open_browser: bool) -> None:
    """Print the dashboard's address; it signs the browser in with the read token."""
    home = _home()
    base = home.api_url()
    if base is None or not home.is_locked():
        raise PlatformUnavailable(f"no control plane is running for {home.path}", "corral up")
    url = f"{base.rstrip('/')}/?token={home.token('read')}"
    click.echo(url)
    if open_browser:
        import webbrowser

        webbrowser.open(url)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def routes(as_json: bool) -> None:
    """The gateway's live routes (config version, source)."""
    view = _client().request("GET", "/gateway/config")
    if as_json:
        render.write(json.dumps(view, indent=2))
        return
    render.routes(view)


@cli.group()
def route() -> None:
    """Read and edit the gateway's live routes (each change is a new config version)."""


@route.command("get")
@click.argument("name")
def route_get(name: str) -> None:
    render.write(yaml.safe_dump(_client().request("GET", f"/gateway/routes/{name}")).rstrip())


@route.command("set")
@click.argument("name")
@click.argument("file", required=False, type=click.Path())
@click.option("--service", default=None, help="Target service (platform mode).")
@click.option("--prefix", "path_prefix", default=None, help="match.path_prefix")
@click.option("--path", default=None, help="match.path (exact)")
@click.option("--host", default=None, help="match.host")
@click.option("--priority", default=None, type=int)
@click.option("--dry-run", is_flag=True, help="Validate only; change nothing.")
def route_set(
    name: str,
    file: str | None,
    service: str | None,
    path_prefix: str | None,
    path: str | None,
    host: str | None,
    priority: int | None,
    dry_run: bool,
) -> None:
    """Create or replace route NAME from FILE (YAML; - for stdin) or from the options."""
    body: dict[str, Any] = {}
    if file:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
        loaded = yaml.safe_load(text)
        if not isinstance(loaded, dict):
            raise UserError(f"{file}: a route is a mapping", "name: …, match: …, service: …")
        body = loaded
    match = dict(body.get("match") or {})
    for key, value in (("path_prefix", path_prefix), ("path", path), ("host", host)):
        if value is not None:
            match[key] = value
    if match:
        body["match"] = match
    if service is not None:
        body["service"] = service
    if priority is not None:
        body["priority"] = priority
    body["name"] = name
    query = "?dry_run=1" if dry_run else ""
    result = _client().request("PUT", f"/gateway/routes/{name}{query}", body)
    verb = "valid (dry run; nothing changed)" if dry_run else f"set: config v{result['version']}"
    render.out.print(f"route {name} {verb}")


@route.command("delete")
@click.argument("name")
def route_delete(name: str) -> None:
    result = _client().request("DELETE", f"/gateway/routes/{name}")
    render.out.print(f"route {name} deleted: config v{result['version']}")


@route.command("rollback")
def route_rollback() -> None:
    """Return the gateway to its previous config version (as a new version)."""
    result = _client().request("POST", "/gateway/rollback")
    render.out.print(f"gateway config v{result['version']}")


traffic_cli.register(route, _client)


@cli.command()
@click.option("--service", default=None, help="Only traces through this service.")
@click.option("--endpoint", default=None, help="Only this endpoint (route template).")
@click.option("--min-duration", "min_ms", type=float, default=None, help="Milliseconds.")
@click.option("--error", is_flag=True, help="Only traces with an error.")
@click.option("--minutes", default=15, show_default=True, help="How far back.")
@click.option("-n", "--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def traces(
    service: str | None,
    endpoint: str | None,
    min_ms: float | None,
    error: bool,
    minutes: int,
    limit: int,
    as_json: bool,
) -> None:
    """Search traces (newest first)."""
    query: dict[str, Any] = {"minutes": minutes, "limit": limit}
    if service:
        query["service"] = service
    if endpoint:
        query["endpoint"] = endpoint
    if min_ms is not None:
        query["min_duration_us"] = int(min_ms * 1000)
    if error:
        query["error"] = "true"
    result = _client().request("GET", "/telemetry/traces", query=query)
    render.json_or_table(result, as_json, "traces")


@cli.command()
@click.argument("trace_id")
@click.option("--json", "as_json", is_flag=True)
def trace(trace_id: str, as_json: bool) -> None:
    """One trace as a waterfall."""
    result = _client().request("GET", f"/telemetry/trace/{trace_id}")
    render.json_or_table(result, as_json, "trace")


@cli.command()
@click.option("--minutes", default=60, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def deps(minutes: int, as_json: bool) -> None:
    """The service dependency map: calls, errors and latency per edge."""
    result = _client().request("GET", "/telemetry/dependencies", query={"minutes": minutes})
    render.json_or_table(result, as_json, "deps")


@cli.command()
@click.option("--by", type=click.Choice(["calls", "p95", "hotspot", "errors"]), default="hotspot")
@click.option("--group", type=click.Choice(["endpoint", "service"]), default="endpoint")
@click.option("--minutes", default=5, show_default=True)
@click.option("-n", default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def top(by: str, group: str, minutes: int, n: int, as_json: bool) -> None:
    """TOP-N endpoints or services by calls, p95 latency or hotspot (total time)."""
    query = {"by": by, "group": group, "minutes": minutes, "n": n}
    result = _client().request("GET", "/telemetry/top", query=query)
    render.json_or_table(result, as_json, "top")


@cli.command()
@click.option("--route", default=None, help="Only this gateway route.")
@click.option("--json", "as_json", is_flag=True)
def slo(route: str | None, as_json: bool) -> None:
    """SLOs of the gateway's routes: error budget left and burn rates (1 h/5 min, 6 h/30 min)."""
    query = {"route": route} if route else {}
    result = _client().request("GET", "/telemetry/slo", query=query)
    if as_json:
        render.json_or_table(result, True, "slo")
        return
    rows: list[dict[str, Any]] = []
    for r in result["routes"]:
        for o in r["objectives"]:
            objective = (
                f"{o['target'] * 100:g}% ok"
                if o["kind"] == "availability"
                else f"{o['target'] * 100:g}% ≤ {o['threshold_us'] / 1000:g}ms"
            )
            firing = [a["name"] for a in o["alerts"] if a["firing"]]
            rows.append(
                {
                    "route": r["route"],
                    "objective": objective,
                    "window": f"{r['window_s'] / 86400:g}d",
                    "requests": o["requests"],
                    "budget_left": f"{o['budget_left'] * 100:.1f}%",
                    "burn_1h/5m": f"{o['burn']['1h']:.1f}/{o['burn']['5m']:.1f}",
                    "burn_6h/30m": f"{o['burn']['6h']:.1f}/{o['burn']['30m']:.1f}",
                    "alert": ",".join(firing) or "-",
                }
            )
    if not rows and not result.get("gateway_config"):
        render.out.print("no gateway config: declare gateway.routes[*].slo in the manifest")
        return
    render.json_or_table(rows, False, "SLOs")


@cli.command()
@click.option("--host", default=None, help="A host name (as instances report host.name).")
@click.option("--instance", default=None, help="An instance id.")
@click.option("--sql", default=None, help="A statement fingerprint (or a raw statement).")
@click.option("--minutes", default=15, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def impact(
    host: str | None, instance: str | None, sql: str | None, minutes: int, as_json: bool
) -> None:
    """The external APIs whose requests reach a host, an instance or a SQL statement."""
    given = {k: v for k, v in (("host", host), ("instance", instance), ("sql", sql)) if v}
    if len(given) != 1:
        raise UserError(
            "give exactly one of --host, --instance and --sql", "corral impact --instance ID"
        )
    result = _client().request("GET", "/telemetry/impact", query={**given, "minutes": minutes})
    if as_json:
        render.json_or_table(result, True, "impact")
        return
    rows = [
        {
            "api": a["api"],
            "requests": a["requests"],
            "traffic": f"{a['traffic_share'] * 100:.1f}%",
            "time": f"{a['time_share'] * 100:.1f}%",
            "calls": a["calls"],
            "errors": a["target_errors"],
            "p95_ms": a["target_p95_us"] / 1000,
        }
        for a in result["apis"]
    ]
    render.json_or_table(rows, False, f"APIs reaching {result['target']}")


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except CorralError as exc:
        render.error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
