"""The manifest's schema (v1): pydantic models of what a user writes.

Every model forbids unknown keys and is strict about types (``instances: "3"`` is a mistake to
report, not to guess at). Validators normalize as they go, so consumers never parse a string:
durations are float seconds, sizes int bytes, ``command`` and probe ``exec`` lists of words, env
values strings or ``SecretRef``, ``depends_on`` a ``{service: condition}`` map, ``stop.signal`` a
``SIG*`` name. Errors raised here carry a hint in their context that ``corral.manifest.load``
turns into a ``Problem``.

The models check what one model can see (``min <= max``, one probe kind). Checks that need the
whole manifest (``depends_on`` naming a service, cycles, ``completed`` on a task, probes naming
declared ports) live in ``corral.manifest.load`` so they run even when other fields are broken;
validate through ``validate_manifest_data`` rather than ``Manifest.model_validate``.

Regenerate the committed JSON Schema with
``python -m corral.manifest.schema > docs/manifest.schema.json``.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
import sys
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from corral.errors import UserError
from corral.kv import service as kv_service
from corral.kv.coordinator import Quorum
from corral.manifest.expand import unclosed_reference
from corral.manifest.graph import DependencyGraph
from corral.manifest.units import UnitError, parse_duration, parse_size
from corral.telemetry import retention

__all__ = [
    "SCALE_LIMIT",
    "SIGNALS",
    "Autoscale",
    "Backoff",
    "Health",
    "InstanceRange",
    "KvSettings",
    "Manifest",
    "Probe",
    "Resources",
    "Restart",
    "SecretRef",
    "Service",
    "Stop",
    "Telemetry",
    "Update",
    "manifest_json_schema",
    "port_env_var",
    "render_json_schema",
]

SCALE_LIMIT = 1000
"""The most instances one service may ask for; also the upper scale bound of ``instances: N``."""

SIGNALS = ("TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2")

Condition = Literal["healthy", "started", "completed"]

SERVICE_NAME = re.compile(r"^[a-z](?:[a-z0-9-]{0,38}[a-z0-9])?$")
PORT_NAME = re.compile(r"^[a-z](?:[a-z0-9_-]{0,30}[a-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,126})$")


def problem(message: str, hint: str = "") -> PydanticCustomError:
    """A validation error whose message is shown as is, with a hint, at the field's path."""
    return PydanticCustomError("corral", "{message}", {"message": message, "hint": hint})


def describe(value: object) -> str:
    """How a value reads in a message: ``'abc'``, ``integer 5``, ``a list``, ``nothing (null)``."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- scalar types -------------------------------------------------------------------------


def _duration(value: object) -> float:
    try:
        return parse_duration(value)
    except UnitError as error:
        raise problem(error.message, error.hint) from None


def _size(value: object) -> int:
    try:
        return parse_size(value)
    except UnitError as error:
        raise problem(error.message, error.hint) from None


_N = r"(\d+(\.\d+)?|\.\d+)"
_DURATION_PATTERN = rf"^\s*({_N}|({_N}d)?({_N}h)?({_N}m)?({_N}s)?({_N}ms)?)\s*$"
_DURATION_JSON: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": _DURATION_PATTERN},
    ],
    "description": "a duration: 500ms, 10s, 1m30s, 10m, 2h; a bare number is seconds",
}
_SIZE_JSON: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?|\.\d+)\s*(Ki|Mi|Gi|Ti|k|K|M|G|T)?B?$"},
    ],
    "description": "a size: 256Mi, 1Gi, 512M, 100k; a bare integer is bytes",
}

Duration = Annotated[float, BeforeValidator(_duration), WithJsonSchema(_DURATION_JSON)]
Size = Annotated[int, BeforeValidator(_size), WithJsonSchema(_SIZE_JSON)]
PositiveDuration = Annotated[Duration, Field(gt=0)]
PositiveInt = Annotated[int, Field(ge=1)]


def _words(value: object) -> object:
    """A string is split as a shell would (quotes group words); a list passes unchanged."""
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as error:
            raise problem(
                f"cannot split {value!r} into words: {str(error).lower()}",
                "close the quote, or write the command as a list of words",
            ) from None
    return value


def _check_references(word: str) -> str:
    if unclosed_reference(word) is not None:
        raise problem(
            f"{word!r} has a malformed ${{...}} reference",
            "write ${NAME} with a letter or _ first, or $$ for a literal $",
        )
    return word


def _check_argv(words: list[str]) -> list[str]:
    if not words:
        raise problem("the command is empty", "give the program to run, e.g. python app.py")
    if not words[0]:
        raise problem("the program name is empty", "the first word names the program to run")
    return words


Word = Annotated[str, AfterValidator(_check_references)]
Argv = Annotated[
    list[Word],
    BeforeValidator(_words, json_schema_input_type=str | list[str]),
    AfterValidator(_check_argv),
]


def _check_service_name(name: str) -> str:
    if not SERVICE_NAME.match(name):
        suggestion = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40].strip("-")
        hint = "lowercase letters, digits and '-', starting with a letter, at most 40 characters"
        if suggestion and SERVICE_NAME.match(suggestion):
            hint += f"; e.g. {suggestion!r}"
        raise problem(f"{name!r} is not a valid name", hint)
    return name


ServiceName = Annotated[
    str,
    AfterValidator(_check_service_name),
    WithJsonSchema({"type": "string", "pattern": SERVICE_NAME.pattern, "maxLength": 40}),
]


def port_env_var(port_name: str) -> str:
    """The variable an instance finds a named port in: ``admin-http`` → ``PORT_ADMIN_HTTP``."""
    return "PORT_" + port_name.upper().replace("-", "_")


def _check_port_name(name: str) -> str:
    if not PORT_NAME.match(name):
        raise problem(
            f"{name!r} is not a valid port name",
            "lowercase letters, digits, '-' and '_', starting with a letter, at most 32 characters",
        )
    return name


def _check_port_value(value: object) -> object:
    if value == "auto":
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    raise problem(
        f'expected "auto" or a port number from 1 to 65535, got {describe(value)}',
        "auto lets the platform pick a free port and tell the instance in $PORT_<NAME>",
    )


def _port_ref(value: object) -> object:
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise problem(
        f"expected a port name or number, got {describe(value)}",
        "name a port declared under ports (e.g. http), or give a number",
    )


PortName = Annotated[str, AfterValidator(_check_port_name)]
PortRef = Annotated[
    str | int,
    BeforeValidator(_port_ref),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
]
PortValue = Annotated[
    Literal["auto"] | int,
    BeforeValidator(_check_port_value),
    WithJsonSchema(
        {"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1, "maximum": 65535}]}
    ),
]


def _check_env_name(name: str) -> str:
    if not ENV_NAME.match(name):
        raise problem(
            f"{name!r} is not a valid environment variable name",
            "letters, digits and _, not starting with a digit",
        )
    return name


def _check_secret_name(name: str) -> str:
    if not SECRET_NAME.match(name):
        raise problem(
            f"{name!r} is not a valid secret name",
            "letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return name


class SecretRef(_Model):
    """An env value taken from a secret set with ``corral secret set NAME``."""

    secret: Annotated[str, AfterValidator(_check_secret_name)] = Field(
        description="the name of a secret set with `corral secret set NAME`"
    )


def _env_scalar(value: object) -> object:
    """Numbers and booleans become the text a process will see (``true``, ``8080``, ``0.5``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _env_tag(value: object) -> str | None:
    if isinstance(value, str):
        return "~text"
    if isinstance(value, dict | SecretRef):
        return "~secret"
    return None


EnvValue = Annotated[
    Annotated[Word, Tag("~text")] | Annotated[SecretRef, Tag("~secret")],
    Discriminator(
        _env_tag,
        custom_error_type="corral_expected",
        custom_error_message="expected a string, number, boolean or {secret: NAME}",
        custom_error_context={"hint": "quote the value, or use '' for an empty string"},
    ),
    BeforeValidator(_env_scalar, json_schema_input_type=str | int | float | bool | SecretRef),
]


def _check_signal(value: object) -> object:
    if not isinstance(value, str):
        raise problem(f"expected a signal name, got {describe(value)}", _SIGNAL_HINT)
    name = value.strip().upper().removeprefix("SIG")
    if name not in SIGNALS:
        suggestion = _did_you_mean(name, list(SIGNALS))
        raise problem(
            f"unknown stop signal {value!r}",
            f"{suggestion + ' ' if suggestion else ''}use one of {', '.join(SIGNALS)}",
        )
    return "SIG" + name


_SIGNAL_HINT = f"use one of {', '.join(SIGNALS)}"
Signal = Annotated[
    Literal["SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1", "SIGUSR2"],
    BeforeValidator(_check_signal),
    WithJsonSchema({"enum": [*SIGNALS, *("SIG" + s for s in SIGNALS)]}),
]


def _cpu(value: object) -> object:
    """Kubernetes millicores (``500m``) are accepted as well as cores (``0.5``)."""
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+m", text):
            return int(text[:-1]) / 1000
        if re.fullmatch(r"\d+(\.\d+)?|\.\d+", text):
            return float(text)
        raise problem(f"invalid cpu {value!r}", "write cores (0.5, 2) or millicores (500m)")
    return value


Cpu = Annotated[
    float,
    BeforeValidator(_cpu),
    Field(gt=0),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": r"^\d+m$"},
            ]
        }
    ),
]


def _text_or_int(value: object) -> object:
    """``user: 1000`` means the uid; keep it as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _version(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        raise problem(
            f"YAML read this version as the number {value}, which loses digits (1.10 is 1.1)",
            f'quote it: version: "{value}"',
        )
    return value


def _depends_on(value: object) -> object:
    """A list names dependencies that must be ``healthy``; a map gives each its condition."""
    if not isinstance(value, list):
        return value
    result: dict[object, str] = {}
    for item in value:
        if not isinstance(item, str):
            raise problem(
                f"expected service names, got {describe(item)} in the list",
                "write depends_on: [db, cache] or depends_on: {db: healthy}",
            )
        if item in result:
            raise problem(f"{item!r} is listed twice", "name each dependency once")
        result[item] = "healthy"
    return result


# --- models -------------------------------------------------------------------------------


class Probe(_Model):
    """One health check: exactly one of ``http``, ``tcp`` or ``exec``."""

    http: str | None = Field(
        default=None, description="HTTP GET this path; healthy on a 2xx or 3xx answer"
    )
    port: PortRef | None = Field(
        default=None,
        description="for http: the port name (or number) to call; default: the first port",
    )
    tcp: PortRef | None = Field(
        default=None, description="healthy when a TCP connection to this port name or number opens"
    )
    exec: Argv | None = Field(
        default=None, description="healthy when this command exits 0 (a list, or a shell-like line)"
    )
    period: PositiveDuration = Field(default=1.0, description="time between checks")
    timeout: PositiveDuration = Field(default=1.0, description="a check slower than this fails")
    failure_threshold: PositiveInt = Field(
        default=3, description="consecutive failures that make the probe fail"
    )
    success_threshold: PositiveInt = Field(
        default=1, description="consecutive successes that make the probe pass"
    )
    initial_delay: Duration = Field(
        default=0.0, description="wait this long before the first check"
    )

    @property
    def kind(self) -> Literal["http", "tcp", "exec"]:
        if self.http is not None:
            return "http"
        if self.tcp is not None:
            return "tcp"
        return "exec"

    @model_validator(mode="after")
    def _one_kind(self) -> Probe:
        kinds = [k for k in ("http", "tcp", "exec") if getattr(self, k) is not None]
        if len(kinds) != 1:
            got = "none" if not kinds else " and ".join(kinds)
            raise problem(
                f"a probe needs exactly one of http, tcp or exec (got {got})",
                "e.g. {http: /healthz} or {tcp: http} or {exec: [pg_isready]}",
            )
        if self.http is not None and not self.http.startswith("/"):
            raise problem(
                f"the http probe path {self.http!r} must start with /", "e.g. http: /healthz"
            )
        if self.port is not None and self.http is None:
            raise problem(
                "port applies only to http probes",
                "for tcp, name the port in tcp itself: {tcp: http}",
            )
        for value in (self.tcp, self.port):
            if isinstance(value, int) and not 1 <= value <= 65535:
                raise problem(f"port {value} is out of range", "ports go from 1 to 65535")
        return self


class Health(_Model):
    """Kubernetes semantics: startup gates the others; liveness failure restarts or replaces
    the instance; readiness decides whether it is in ``run`` (routable)."""

    startup: Probe | None = Field(default=None, description="gates liveness and readiness")
    liveness: Probe | None = Field(
        default=None, description="failing restarts a pet in place or replaces a cattle instance"
    )
    readiness: Probe | None = Field(
        default=None,
        description="passing puts the instance in run (routable); without it, an instance is "
        "ready once its process has stayed up 1s",
    )


class Backoff(_Model):
    initial: PositiveDuration = Field(
        default=1.0, description="delay after the second crash (the first restart is immediate)"
    )
    max: PositiveDuration = Field(default=60.0, description="the delay doubles up to this cap")
    reset_after: PositiveDuration = Field(
        default=600.0, description="this long healthy resets the crash count"
    )

    @model_validator(mode="after")
    def _initial_within_max(self) -> Backoff:
        if self.initial > self.max:
            raise problem(
                f"initial ({self.initial:g}s) is longer than max ({self.max:g}s)",
                "the delay starts at initial and doubles up to max",
            )
        return self


class Restart(_Model):
    backoff: Backoff = Field(default_factory=Backoff)
    failed_after: PositiveInt = Field(
        default=5,
        description="consecutive crashes (with no reset_after healthy stretch) before the "
        "instance shows failed; it keeps being retried",
    )


class Stop(_Model):
    signal: Signal = Field(default="SIGTERM", description="sent to the process group first")
    grace: Duration = Field(default=30.0, description="then SIGKILL after this long")
    drain: Duration = Field(
        default=1.0,
        description="for updates and scale-in: the instance leaves routing this long before "
        "it gets its stop signal",
    )


def _count_or_percent(value: object) -> object:
    if isinstance(value, bool):
        raise problem(f"expected a count or a percentage, got {describe(value)}", "e.g. 1 or 25%")
    if isinstance(value, int):
        if value < 0:
            raise problem(f"{value} is negative", "use 0 or more")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%") and text[:-1].strip().replace(".", "", 1).isdigit():
            percent = float(text[:-1])
            if percent > 100:
                raise problem(f"{text} is more than 100%", "use 0%…100%")
            return f"{percent:g}%"
    raise problem(f"expected a count or a percentage, got {describe(value)}", "e.g. 1 or 25%")


CountOrPercent = Annotated[
    int | str,
    BeforeValidator(_count_or_percent),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*%$"},
            ],
            "description": "a count of instances, or a percentage of desired (25%)",
        }
    ),
]


class Update(_Model):
    """How a new release replaces the running one."""

    strategy: Literal["rolling", "recreate"] = Field(
        default="rolling",
        description="rolling: surge new instances first; recreate: stop all, then start new",
    )
    max_surge: CountOrPercent = Field(
        default="25%", description="extra instances during a rolling update (rounded up)"
    )
    max_unavailable: CountOrPercent = Field(
        default=0, description="instances that may be out of run during an update (rounded down)"
    )
    min_healthy: Duration = Field(
        default=10.0, description="a new instance must stay in run this long to count"
    )
    healthy_deadline: PositiveDuration = Field(
        default=300.0, description="a new instance not healthy within this fails the rollout"
    )
    progress_deadline: PositiveDuration = Field(
        default=600.0, description="no progress for this long fails the rollout"
    )
    auto_rollback: bool = Field(
        default=True, description="on failure, return to the last release that was healthy"
    )
    canary: Annotated[int, Field(ge=0, le=SCALE_LIMIT)] = Field(
        default=0,
        description="start this many new instances beside the old ones and wait for "
        "`corral rollout promote`",
    )
    auto_promote: bool = Field(
        default=False, description="promote a canary once its instances are healthy"
    )


class Disruption(_Model):
    max_unavailable: PositiveInt = Field(
        default=1,
        description="voluntary operations (scale-in, updates, restarts) never take more "
        "instances than this out of run at once",
    )


class Telemetry(_Model):
    auto_instrument: bool = Field(
        default=True,
        description="Python services get OpenTelemetry auto-instrumentation (HTTP server and "
        "client, sqlite3 spans) with no code of their own; false turns it off",
    )


class Resources(_Model):
    cpu: Cpu | None = Field(
        default=None, description="CPU quota in cores (0.5) or millicores (500m)"
    )
    memory: Size | None = Field(
        default=None, description="hard memory limit: 256Mi, 1Gi (the instance is killed beyond)"
    )

    @field_validator("memory")
    @classmethod
    def _memory_not_tiny(cls, value: int | None) -> int | None:
        if value is not None and value < 1024 * 1024:
            raise problem(
                f"a memory limit of {value} bytes is too small to start a process",
                f"sizes without a unit are bytes: did you mean {value}Mi?",
            )
        return value


class InstanceRange(_Model):
    min: Annotated[int, Field(ge=0, le=SCALE_LIMIT)] = Field(
        default=1, description="instances to start with; `corral scale` cannot go below"
    )
    max: Annotated[int, Field(ge=0, le=SCALE_LIMIT)] = Field(
        description="`corral scale` cannot go above"
    )

    @model_validator(mode="after")
    def _min_within_max(self) -> InstanceRange:
        if self.min > self.max:
            raise problem(
                f"min ({self.min}) is greater than max ({self.max})",
                "min is where desired starts and max the most `corral scale` allows",
            )
        return self


# The metrics an autoscale policy can follow: cpu per instance (a fraction of its CPU limit, or
# of one core without one), requests per second per instance, and p95 latency.
AutoscaleMetric = Literal["cpu", "rps", "latency_p95"]


def _autoscale_target(value: object, info: ValidationInfo) -> object:
    """cpu: a percentage (``70%``; a bare number is percent too), kept as ``"70%"`` so a stored
    spec validates back to itself; rps: a number per instance; latency_p95: a duration."""
    metric = info.data.get("metric", "cpu")
    if isinstance(value, bool):
        raise problem(f"expected a target, got {describe(value)}", _TARGET_HINTS.get(metric, ""))
    if metric == "cpu":
        text = str(value).strip() if isinstance(value, int | float | str) else None
        number = text[:-1].strip() if text and text.endswith("%") else text
        try:
            percent = float(number) if number is not None else None
        except ValueError:
            percent = None
        if percent is None or not 0 < percent < float("inf"):
            raise problem(
                f"expected a cpu percentage above 0, got {describe(value)}", _TARGET_HINTS["cpu"]
            )
        if not (isinstance(value, str) and value.strip().endswith("%")) and percent <= 1:
            raise problem(
                f"a cpu target of {value} reads as {percent:g} %, not {percent * 100:g} %",
                f"write the percentage with its sign: target: {percent * 100:g}%",
            )
        return f"{percent:g}%"
    if metric == "latency_p95":
        seconds = _duration(value)
        if seconds <= 0:
            raise problem("the latency target must be above 0", _TARGET_HINTS["latency_p95"])
        return seconds
    if isinstance(value, int | float) and 0 < value < float("inf"):
        return float(value)
    raise problem(f"expected a number above 0, got {describe(value)}", _TARGET_HINTS["rps"])


_TARGET_HINTS = {
    "cpu": "e.g. target: 70% (of the instance's CPU limit, or of one core without one)",
    "rps": "e.g. target: 100 (requests per second per instance)",
    "latency_p95": "e.g. target: 250ms",
}


class Autoscale(_Model):
    """Scale between ``instances: {min, max}`` following one metric (the Kubernetes HPA rule)."""

    metric: AutoscaleMetric = Field(
        default="cpu",
        description="cpu (per instance, of its CPU limit or one core), rps (per instance) or "
        "latency_p95",
    )
    target: Annotated[
        float | str,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "number", "exclusiveMinimum": 0},
                    {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*%$"},
                    _DURATION_JSON,
                ],
                "description": "cpu: a percentage (70%); rps: a number per instance; "
                "latency_p95: a duration (250ms)",
            }
        ),
    ] = Field(description="the value the metric should stay near")
    period: PositiveDuration = Field(default=15.0, description="time between evaluations")
    scale_down_window: Duration = Field(
        default=300.0,
        description="scale in only to the highest recommendation seen over this long "
        "(scaling out is immediate)",
    )

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, value: object, info: ValidationInfo) -> object:
        return _autoscale_target(value, info)


def _instances_tag(value: object) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return "~count"
    if isinstance(value, dict | InstanceRange):
        return "~range"
    return None


Instances = Annotated[
    Annotated[int, Tag("~count"), Field(ge=0, le=SCALE_LIMIT)]
    | Annotated[InstanceRange, Tag("~range")],
    Discriminator(
        _instances_tag,
        custom_error_type="corral_expected",
        custom_error_message="expected a number of instances or {min, max}",
        custom_error_context={"hint": "e.g. instances: 2 or instances: {min: 1, max: 4}"},
    ),
]

DependsOn = Annotated[
    dict[str, Condition],
    BeforeValidator(_depends_on, json_schema_input_type=dict[str, Condition] | list[str]),
]


class KvSettings(_Model):
    """The AP store a ``kind: kv`` service runs (``corral.kv``: Dynamo-style quorums)."""

    n: Annotated[int, Field(ge=1, le=SCALE_LIMIT)] = Field(
        default=3, description="replicas of each key (at most instances)"
    )
    r: Annotated[int, Field(ge=1)] = Field(default=2, description="replies a read waits for")
    w: Annotated[int, Field(ge=1)] = Field(
        default=2, description="durable acknowledgements a write waits for"
    )
    vnodes: Annotated[int, Field(ge=1, le=4096)] = Field(
        default=256, description="virtual nodes per node on the consistent-hash ring"
    )
    conflicts: Literal["siblings", "lww"] = Field(
        default="siblings",
        description="siblings: concurrent writes are all kept until a write with their "
        "context resolves them; lww: the latest timestamp wins (loses writes under clock skew)",
    )

    @field_validator("r", "w")
    @classmethod
    def _within_n(cls, value: int, info: ValidationInfo) -> int:
        n = info.data.get("n")
        if isinstance(n, int) and value > n:
            raise problem(
                f"{info.field_name} ({value}) is more than n ({n}): a quorum cannot exceed "
                "the replicas of a key",
                f"write {info.field_name}: {n} or less, or raise n",
            )
        return value

    def warning(self) -> str:
        """Why this valid quorum may still surprise (R + W <= N), or ""."""
        return Quorum(self.n, self.r, self.w).warning


class Service(_Model):
    """One service of the manifest."""

    mode: Literal["cattle", "pet"] = Field(
        default="cattle",
        description="cattle instances are replaced; pets keep id, port and DATA_DIR and are "
        "restarted in place",
    )
    kind: Literal["service", "task", "kv"] = Field(
        default="service",
        description="a task runs to completion and is restarted only when it fails; kv runs "
        "the platform's AP store (pets with DATA_DIR; set kv:, the command is filled in)",
    )
    version: Annotated[str | None, BeforeValidator(_version)] = Field(
        default=None, description="your label for this code; a change makes a new release"
    )
    command: Argv = Field(
        description="the program and its arguments: a list, or a line split like a shell "
        "would; ${VAR} expands from the instance's environment"
    )
    cwd: str | None = Field(
        default=None,
        description="working directory, relative to the manifest's directory (with source: "
        "relative to the snapshot of source)",
    )
    source: str | None = Field(
        default=None,
        description="a directory (relative to the manifest) snapshotted into an immutable, "
        "content-addressed artifact with each release; instances run from the artifact, so a "
        "rollback restores code with config",
    )
    env: dict[Annotated[str, AfterValidator(_check_env_name)], EnvValue] = Field(
        default_factory=dict,
        description="environment variables; a value may be {secret: NAME}; ${VAR} expands",
    )
    user: Annotated[str | None, BeforeValidator(_text_or_int)] = Field(
        default=None, description="run as this user (name or uid); DATA_DIR is owned by it"
    )
    ports: dict[PortName, PortValue] = Field(
        default_factory=dict,
        description="named ports: auto picks a free one; the first is also $PORT, each is "
        "$PORT_<NAME>",
    )
    resources: Resources = Field(default_factory=Resources)
    instances: Instances = Field(default=1, description="a count, or {min, max} to bound scale")
    depends_on: DependsOn = Field(
        default_factory=dict,
        description="services to wait for: a list (healthy) or {name: healthy|started|completed}",
    )
    health: Health = Field(default_factory=Health)
    restart: Restart = Field(default_factory=Restart)
    stop: Stop = Field(default_factory=Stop)
    update: Update = Field(default_factory=Update)
    disruption: Disruption = Field(default_factory=Disruption)
    history: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=10, description="releases kept per service"
    )
    autoscale: Autoscale | None = Field(
        default=None,
        description="scale between instances.min and instances.max following a metric",
    )
    telemetry: Telemetry = Field(default_factory=Telemetry)
    kv: KvSettings | None = Field(
        default=None,
        description="kind: kv only: replicas and quorums of the store",
        # Absent from other services' specs, so adding it made no new release of any of them.
        exclude_if=lambda value: value is None,
    )

    @model_validator(mode="before")
    @classmethod
    def _kv_defaults(cls, data: object) -> object:
        # kind: kv is an ordinary pet service once its command, ports and readiness are filled.
        if isinstance(data, dict) and data.get("kind") == kv_service.KIND:
            return kv_service.fill_defaults(data, sys.executable)
        return data

    @field_validator("kv")
    @classmethod
    def _kv_fits_the_service(cls, kv: KvSettings | None, info: ValidationInfo) -> KvSettings | None:
        if info.data.get("kind") != kv_service.KIND:
            if kv is not None:
                raise problem("kv settings apply to kind: kv only", "add kind: kv, or remove kv")
            return None
        kv = kv or KvSettings()
        if info.data.get("mode", "pet") != "pet":
            raise problem(
                "a kind: kv service runs pets (each node keeps its name and DATA_DIR)",
                "remove mode, or write mode: pet",
            )
        ports = info.data.get("ports")
        if isinstance(ports, dict) and list(ports)[:2] != ["http", "peer"]:
            raise problem(
                f"kind: kv needs the ports http and peer, in that order (got {', '.join(ports)})",
                "remove ports to have both allocated, or write ports: {http: auto, peer: auto}",
            )
        instances = info.data.get("instances")
        count = instances.min if isinstance(instances, InstanceRange) else instances
        if isinstance(count, int) and kv.n > count:
            raise problem(
                f"n ({kv.n}) is more than instances ({count}): each key needs n distinct nodes",
                f"write instances: {kv.n} or more, or n: {max(1, count)}",
            )
        return kv

    @field_validator("autoscale")
    @classmethod
    def _autoscale_has_a_range(
        cls, autoscale: Autoscale | None, info: ValidationInfo
    ) -> Autoscale | None:
        if autoscale is None:
            return None
        if info.data.get("kind") == "task":
            raise problem(
                "a task runs to completion and cannot be autoscaled",
                "remove autoscale, or make it kind: service",
            )
        instances = info.data.get("instances")
        if isinstance(instances, int):
            raise problem(
                f"autoscale needs a range to scale in, but instances is the count {instances}",
                f"write instances: {{min: {max(1, instances)}, max: {max(2, instances * 2)}}}",
            )
        if isinstance(instances, InstanceRange) and instances.min < 1:
            raise problem(
                "autoscale needs instances.min of at least 1 (no instance, no metric)",
                f"write instances: {{min: 1, max: {max(1, instances.max)}}}",
            )
        return autoscale

    @field_validator("ports")
    @classmethod
    def _ports_distinct(cls, ports: dict[str, str | int]) -> dict[str, str | int]:
        by_var: dict[str, str] = {}
        by_number: dict[int, str] = {}
        for name, value in ports.items():
            other = by_var.setdefault(port_env_var(name), name)
            if other != name:
                raise problem(
                    f"ports {other!r} and {name!r} would both be ${port_env_var(name)}",
                    "rename one of them",
                )
            if isinstance(value, int):
                taken = by_number.setdefault(value, name)
                if taken != name:
                    raise problem(
                        f"ports {taken!r} and {name!r} both ask for port {value}",
                        "give each name its own port, or use auto",
                    )
        return ports

    def instance_bounds(self) -> tuple[int, int]:
        """(min, max) for scaling: ``{min, max}`` as written; a bare count scales 0…SCALE_LIMIT."""
        if isinstance(self.instances, InstanceRange):
            return self.instances.min, self.instances.max
        return 0, max(SCALE_LIMIT, self.instances)

    def initial_instances(self) -> int:
        """How many instances to run when the service is first created: the count, or min."""
        if isinstance(self.instances, InstanceRange):
            return self.instances.min
        return self.instances

    def default_port(self) -> str | None:
        """The first declared port's name (what $PORT holds and http probes call by default)."""
        return next(iter(self.ports), None)


class Dashboard(_Model):
    """The web dashboard the API serves at `/`."""

    public: bool = Field(
        default=False,
        description=(
            "true: the dashboard's read-only views open without the read token "
            "(logs, backups and every change still need a token)"
        ),
    )


# --- alerts and webhooks (the alert core is corral.telemetry.alerts) ---------------------------

AlertKind = Literal[
    "slo_burn",
    "error_rate",
    "latency",
    "instance_failed",
    "host_down",
    "disk_headroom",
    "memory_headroom",
]
_ALERT_THRESHOLD = {  # kind → (default, how it is written)
    "slo_burn": (14.4, "a burn rate: 14.4 spends 2 % of a 30-day budget in an hour"),
    "error_rate": (0.05, "a fraction of calls: 5% or 0.05"),
    "latency": (1.0, "a duration: 300ms"),
    "instance_failed": (0.0, "no threshold: an instance in `failed` fires"),
    "host_down": (60.0, "a duration without a host sample: 1m"),
    "disk_headroom": (0.1, "the free fraction below which it fires: 10%"),
    "memory_headroom": (0.1, "the free fraction below which it fires: 10%"),
}


def _fraction(value: object, what: str) -> float:
    if isinstance(value, str) and value.strip().endswith("%"):
        text = value.strip()[:-1].strip()
        try:
            return float(text) / 100
        except ValueError:
            raise problem(f"{value!r} is not a percentage", f"write {what}") from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise problem(f"expected {what}, got {describe(value)}", "e.g. 5% or 0.05")


class AlertRule(_Model):
    """One alert rule; a rule named like a default (slo-burn-page, slo-burn-ticket,
    instance-failed) replaces it."""

    model_config = ConfigDict(populate_by_name=True)

    name: ServiceName = Field(description="unique among the rules; names the alert")
    kind: AlertKind = Field(description="what is measured")
    service: ServiceName | None = Field(
        default=None, description="error_rate, latency, instance_failed: only this service"
    )
    route: str | None = Field(default=None, description="slo_burn: only this gateway route")
    threshold: Annotated[float | str | None, Field(validate_default=True)] = Field(
        default=None,
        description="slo_burn: burn rate (14.4); error_rate: 5%; latency: 300ms; host_down: "
        "1m without a sample; disk/memory_headroom: free fraction (10%)",
    )
    window: PositiveDuration | None = Field(
        default=None, description="error_rate, latency: 5m; slo_burn: the long window (1h)"
    )
    short_window: PositiveDuration | None = Field(
        default=None, description="slo_burn: the short window (window / 12)"
    )
    for_: Duration = Field(
        default=0.0, alias="for", description="the condition must hold this long to fire"
    )
    keep_firing_for: Duration = Field(
        default=0.0, description="the condition must be clear this long to resolve"
    )
    quantile: Annotated[float | str | None, Field(validate_default=False)] = Field(
        default=None, description="latency: p50, p95 (default), p99 or 0.95"
    )
    min_calls: PositiveInt = Field(
        default=10, description="error_rate, latency: fewer calls in the window say nothing"
    )
    hysteresis: Annotated[float | str, Field(validate_default=True)] = Field(
        default=0.1, description="clears only this fraction beyond the threshold (10%)"
    )
    severity: Literal["page", "ticket", "info"] = Field(default="page")

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, value: object, info: ValidationInfo) -> float:
        kind = info.data.get("kind")
        default, how = _ALERT_THRESHOLD.get(str(kind), (0.0, "a number"))
        if value is None:
            return default
        if kind in ("latency", "host_down"):
            return _duration(value)
        if kind in ("error_rate", "disk_headroom", "memory_headroom"):
            fraction = _fraction(value, how)
            if not 0 < fraction < 1:
                raise problem(f"{value!r} is not between 0% and 100%", f"write {how}")
            return fraction
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
        raise problem(f"expected {how}, got {describe(value)}", f"write {how}")

    @field_validator("quantile", mode="before")
    @classmethod
    def _quantile(cls, value: object, info: ValidationInfo) -> float | None:
        if value is None:
            return None
        if info.data.get("kind") != "latency":
            raise problem("quantile applies to latency rules only", "remove it, or kind: latency")
        if isinstance(value, str) and re.fullmatch(r"p\d{1,2}(\.\d+)?", value.strip()):
            return float(value.strip()[1:]) / 100
        if isinstance(value, float) and 0 < value < 1:
            return value
        raise problem(f"invalid quantile {describe(value)}", "write p50, p95, p99 or 0.95")

    @field_validator("hysteresis", mode="before")
    @classmethod
    def _hysteresis(cls, value: object) -> float:
        fraction = _fraction(value, "a fraction of the threshold: 10%")
        if not 0 <= fraction < 1:
            raise problem(f"{value!r} is not between 0% and 100%", "e.g. 10%")
        return fraction

    @field_validator("route")
    @classmethod
    def _route_only_for_slo(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("kind") != "slo_burn":
            raise problem("route applies to slo_burn rules only", "use service: for this kind")
        return value


class Alerts(_Model):
    """Alert rules, evaluated by the control plane every `interval`."""

    interval: PositiveDuration = Field(default=10.0, description="how often rules are evaluated")
    defaults: bool = Field(
        default=True,
        description="include the built-in rules: SLO burn (page 1h+5m over 14.4, ticket "
        "6h+30m over 6) and instance-failed",
    )
    rules: list[AlertRule] = Field(default_factory=list)

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[AlertRule]) -> list[AlertRule]:
        seen: set[str] = set()
        for i, rule in enumerate(rules):
            if rule.name in seen:
                raise problem(
                    f"rules[{i}]: the name {rule.name!r} is used twice", "give each rule its name"
                )
            seen.add(rule.name)
        return rules


def _webhook_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", value):
        raise problem(f"{value!r} is not an http(s) URL", "e.g. https://hooks.example.com/corral")
    return value


class Webhook(_Model):
    """Where alerts go: a POST of JSON per firing and resolution, retried with backoff."""

    name: ServiceName = Field(description="names the webhook in events")
    url: Annotated[str, AfterValidator(_webhook_url)] = Field(description="http(s) URL")
    secret: SecretRef | None = Field(
        default=None,
        description="signs each body: X-Corral-Signature-256: sha256=HMAC-SHA256(secret, body)",
    )
    timeout: PositiveDuration = Field(default=5.0, description="per attempt")
    attempts: Annotated[int, Field(ge=1, le=20)] = Field(
        default=5, description="tries per alert, with exponential backoff between them"
    )


def _unique_webhooks(hooks: list[Webhook]) -> list[Webhook]:
    names = [h.name for h in hooks]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise problem(f"[{i}]: the name {name!r} is used twice", "give each webhook its name")
    return hooks


def _retention(value: str) -> str:
    try:
        retention.parse_tiers(value)
    except UserError as error:
        raise problem(error.message, error.hint) from None
    return value


class Metrics(_Model):
    retention: Annotated[str, AfterValidator(_retention)] = Field(
        default=retention.format_tiers(retention.DEFAULT_TIERS),
        description="RESOLUTION:KEEP per tier of the embedded time series, finest first",
    )


class Manifest(_Model):
    """A Corral manifest (v1): services to run, and optionally the gateway's configuration."""

    model_config = ConfigDict(
        title="Corral manifest",
        json_schema_extra={"patternProperties": {"^x-": {}}},
    )

    name: ServiceName | None = Field(default=None, description="a name for this application")
    services: dict[ServiceName, Service] = Field(
        description="the services to run, by name",
        json_schema_extra={"additionalProperties": False},
    )
    gateway: dict[str, Any] | None = Field(
        default=None, description="the gateway's declared configuration (routes, listen, …)"
    )
    dashboard: Dashboard | None = Field(default=None, description="the web dashboard's settings")
    alerts: Alerts = Field(
        default_factory=Alerts, description="alert rules (SLO burn and failed instances by default)"
    )
    webhooks: Annotated[list[Webhook], AfterValidator(_unique_webhooks)] = Field(
        default_factory=list, description="where firing and resolved alerts are POSTed"
    )
    metrics: Metrics = Field(
        default_factory=Metrics, description="how long the embedded time series keeps metrics"
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_extension_keys(cls, data: object) -> object:
        # Top-level `x-*` keys hold YAML anchors to reuse, as in docker compose.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(k, str) and k[:2] == "x-")}
        return data

    @model_validator(mode="after")
    def _slo_windows_are_kept(self) -> Manifest:
        # An SLO over a window longer than the metrics are kept could never be measured.
        routes = (self.gateway or {}).get("routes")
        tiers = retention.parse_tiers(self.metrics.retention)
        for i, route in enumerate(routes if isinstance(routes, list) else []):
            slo = route.get("slo") if isinstance(route, dict) else None
            window = slo.get("window") if isinstance(slo, dict) else None
            if window is None:
                continue
            try:
                seconds = parse_duration(window)
            except UnitError:
                continue  # the gateway's own validation reports a malformed window
            why = retention.window_problem(seconds, tiers)
            if why:
                raise problem(
                    f"gateway.routes[{i}].slo.window: {why}",
                    "shorten the window, or keep metrics longer with metrics.retention "
                    "(its last tier's KEEP)",
                )
        return self

    @model_validator(mode="after")
    def _alert_services_exist(self) -> Manifest:
        for i, rule in enumerate(self.alerts.rules):
            if rule.service is not None and rule.service not in self.services:
                hint = _did_you_mean(rule.service, sorted(self.services))
                raise problem(
                    f"alerts.rules[{i}].service: no service named {rule.service!r}",
                    hint or "name a service of this manifest, or leave service out for all",
                )
        return self

    def graph(self) -> DependencyGraph:
        return DependencyGraph({name: list(s.depends_on) for name, s in self.services.items()})


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema of the manifest, for editors (yaml-language-server and others)."""
    schema = Manifest.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://corral.dev/schemas/manifest-v1.json",
        **schema,
    }


def render_json_schema() -> str:
    """The committed ``docs/manifest.schema.json`` text, byte for byte."""
    return json.dumps(manifest_json_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_json_schema())
