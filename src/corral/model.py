"""The records the control plane keeps in the Store, and the keys they live under.

These are what machines exchange (msgspec, JSON-encoded in the Store); what users write is the
pydantic manifest in ``corral.manifest``. One writer per key: the API writes services and
releases, the reconciler writes instance specs, the agent writes instance statuses, and
everyone appends events.

    /corral/services/<name>               ServiceRecord     desired state of a service
    /corral/service-status/<name>         ServiceStatus     derived state, written by reconciler
    /corral/releases/<name>/<NNNNNNNN>    Release           immutable spec snapshot
    /corral/instances/<id>/spec           InstanceSpec      what should run (reconciler)
    /corral/instances/<id>/status         InstanceStatus    what runs (agent)
    /corral/events/<NNNNNNNNNNNNNNNNNNNN>  Event            lifecycle transitions with reasons
    /corral/secrets/<name>                raw bytes         never returned by the API
    /corral/nodes/<node>                  NodeRecord        attached to the agent's lease
    /corral/rollouts/<name>               Rollout           the current (or last) rollout
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec

Mode = Literal["cattle", "pet"]
Kind = Literal["service", "task"]
Condition = Literal["healthy", "started", "completed"]
Phase = Literal["provision", "ready", "run", "destroy", "failed"]
ServiceState = Literal["provision", "run", "scale", "update", "rollback", "destroy", "failed"]
DesiredRun = Literal["running", "stopped"]

PREFIX = "/corral/"
SERVICES = PREFIX + "services/"
SERVICE_STATUS = PREFIX + "service-status/"
RELEASES = PREFIX + "releases/"
INSTANCES = PREFIX + "instances/"
EVENTS = PREFIX + "events/"
SECRETS = PREFIX + "secrets/"
NODES = PREFIX + "nodes/"
ROLLOUTS = PREFIX + "rollouts/"
PLATFORM = PREFIX + "platform"


class BackoffPolicy(msgspec.Struct, frozen=True):
    """Restart backoff: immediate, then ``initial`` doubling to ``max`` with ±``jitter``;
    the crash count resets after ``reset_after`` seconds healthy; ``failed_after`` consecutive
    crashes show the instance as ``failed`` (it keeps being retried)."""

    initial: float = 1.0
    max: float = 60.0
    reset_after: float = 600.0
    failed_after: int = 5
    jitter: float = 0.1


class UpdatePolicy(msgspec.Struct, frozen=True):
    """How a new release replaces the running one (manifest ``update:``)."""

    strategy: Literal["rolling", "recreate"] = "rolling"
    max_surge: int | str = "25%"
    max_unavailable: int | str = 0
    min_healthy: float = 10.0
    healthy_deadline: float = 300.0
    progress_deadline: float = 600.0
    auto_rollback: bool = True
    canary: int = 0
    auto_promote: bool = False


class AutoscalePolicy(msgspec.Struct, frozen=True):
    """Scale ``desired`` between the record's ``min`` and ``max`` following one metric
    (manifest ``autoscale:``; see ``corral.control.autoscale``). ``target`` is a fraction of
    the CPU limit for cpu (0.7 for 70 %), requests per second per instance for rps, seconds
    for latency_p95."""

    metric: Literal["cpu", "rps", "latency_p95"]
    target: float
    period: float = 15.0
    scale_down_window: float = 300.0


class Dependency(msgspec.Struct, frozen=True):
    service: str
    condition: Condition = "healthy"


class ServiceRecord(msgspec.Struct):
    """Desired state of one service (``/corral/services/<name>``)."""

    name: str
    release: int
    desired: int
    min: int
    max: int
    mode: Mode = "cattle"
    kind: Kind = "service"
    depends_on: list[Dependency] = []
    backoff: BackoffPolicy = BackoffPolicy()
    stopping: bool = False  # removed from the manifest, or the platform is going down
    system: bool = False  # the platform's own (gateway, collector): hidden from `ps`
    spec: dict[str, Any] = {}  # the release's spec (manifest service, secrets as references)
    digest: str = ""  # of the instance template (spec + restart generation): what "current" is
    restart_generation: int = 0  # bumped by `corral restart SERVICE` (a rollout, same release)
    update: UpdatePolicy = UpdatePolicy()
    disruption: int = 1  # voluntary operations take at most this many out of `run` at once
    drain: float = 1.0  # seconds out of routing before the stop signal (updates, scale-in)
    autoscale: AutoscalePolicy | None = None  # the autoscaler moves `desired` within min..max


class Release(msgspec.Struct):
    """An immutable snapshot of a service's spec; only ``outcome`` changes afterwards."""

    service: str
    number: int
    spec: dict[str, Any]
    created_at: float
    message: str = ""
    user: str = ""
    digest: str = ""
    copied_from: int | None = None  # a rollback copies an older release
    outcome: str = ""  # "" while rolling out; complete / failed: … / rolled back / aborted


class Rollout(msgspec.Struct):
    """The rollout of one service to its current template (``/corral/rollouts/<name>``).

    Written by the API when a rollout starts (and for pause/resume/promote/abort), and by the
    reconciler as it progresses; every write is a compare-and-set on the key's revision."""

    service: str
    kind: Literal["update", "rollback", "restart"]
    from_release: int
    to_release: int
    to_digest: str
    started_at: float
    state: Literal["progressing", "paused", "complete", "failed", "aborted"] = "progressing"
    step: str = ""  # what it waits on now, for `corral rollout status`
    stable_release: int = 0  # the last release that was fully healthy (0: none yet)
    stable_digest: str = ""
    promoted: bool = False  # canary promoted
    progress: str = ""  # a marker of progress; when it changes, last_progress_at moves
    last_progress_at: float = 0.0
    finished_at: float = 0.0
    reason: str = ""


class InstanceSpec(msgspec.Struct):
    """What should run (``/corral/instances/<id>/spec``), written by the reconciler.

    ``incarnation`` counts (re)starts the reconciler asked for: the agent starts the process
    whenever the spec's incarnation is newer than the one it last started."""

    id: str
    service: str
    release: int
    node: str
    created_at: float
    ordinal: int | None = None  # pets only: stable 0..N-1
    ports: dict[str, int] = {}
    desired: DesiredRun = "running"
    incarnation: int = 1
    restarts: int = 0  # inherited by a cattle replacement so `ps` shows the slot's history
    consecutive_crashes: int = 0  # inherited likewise, so a crash loop keeps its backoff
    replaces: str | None = None
    system: bool = False
    digest: str = ""  # the service template it runs (see ServiceRecord.digest)
    since: float = 0.0  # when it got this template (created, or a pet updated in place)
    drain: float = 0.0  # with desired "stopped": leave routing this long before the signal


class ExitInfo(msgspec.Struct, frozen=True):
    at: float
    reason: str  # "exited 1", "killed by SIGKILL", "OOM-killed (memory limit 64Mi)", …
    code: int | None = None
    signal: int | None = None
    oom: bool = False
    start_failed: bool = False  # the command never started (not found, permission, …)
    requested: bool = False  # the platform stopped it (stop, restart, scale down)


class InstanceStatus(msgspec.Struct):
    """What runs (``/corral/instances/<id>/status``), written by the agent."""

    id: str
    phase: Phase = "provision"
    reason: str = ""
    incarnation: int = 0  # the spec incarnation the agent last started
    alive: bool = False  # a process for this incarnation is running
    pid: int | None = None  # the application process (not its shim)
    shim_pid: int | None = None
    started_at: float | None = None
    run_since: float | None = None  # entered `run` (for the healthy stretch that resets backoff)
    exit: ExitInfo | None = None  # the last exit, kept after a restart for `ps`
    restarts: int = 0
    consecutive_crashes: int = 0
    restart_at: float | None = None  # when the next restart is due (for `ps`)
    updated_at: float = 0.0


class ServiceStatus(msgspec.Struct):
    name: str
    state: ServiceState
    reason: str = ""
    ready: int = 0
    desired: int = 0
    release: int = 0
    updated_at: float = 0.0


class Event(msgspec.Struct):
    at: float
    subject: str  # instance id, service name, or "platform"
    kind: Literal["instance", "service", "platform"]
    reason: str
    service: str = ""
    from_phase: str = ""
    to_phase: str = ""


class NodeRecord(msgspec.Struct):
    name: str
    address: str
    started_at: float


T = TypeVar("T")
_encoder = msgspec.json.Encoder()


def encode(record: msgspec.Struct) -> bytes:
    return _encoder.encode(record)


def encode_value(value: object) -> bytes:
    """Canonical JSON of a plain value (sorted keys), for comparing specs."""
    return msgspec.json.encode(value, order="sorted")


def decode(data: bytes, kind: type[T]) -> T:
    return msgspec.json.decode(data, type=kind)


def instance_key(instance_id: str, part: Literal["spec", "status"]) -> str:
    return f"{INSTANCES}{instance_id}/{part}"


def release_key(service: str, number: int) -> str:
    return f"{RELEASES}{service}/{number:08d}"
