"""Loading a manifest: YAML in; out, a valid ``Manifest`` or ONE ``ManifestError`` listing all.

Validation runs completely before anything changes (DESIGN.md, principle 4) and in three
passes whose problems are all reported together:

1. YAML: syntax errors with line:column, and duplicate mapping keys (PyYAML would silently keep
   the last one) found on the node tree, each with its dotted path.
2. Schema: pydantic validates the whole manifest; each error becomes a ``Problem`` at a dotted
   path (``services.api.instances.min``) with a readable message and a hint — unknown keys get
   "did you mean" against the fields allowed at that place.
3. References, on the raw data so they run even when other fields are broken: ``depends_on``
   naming an unknown service or the service itself, ``completed`` on a dependency that is not a
   task, probes naming undeclared ports, and dependency cycles printed as the cycle.

Paths join mapping keys with dots and list indices in brackets: ``services.api.command[1]``.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from corral.errors import ManifestError, NotFound, Problem
from corral.manifest.graph import DependencyGraph, render_cycle
from corral.manifest.schema import Manifest, Service, describe

__all__ = [
    "MANIFEST_FILENAMES",
    "LoadedManifest",
    "load_manifest",
    "parse_manifest",
    "validate_manifest_data",
    "validate_service_data",
]

MANIFEST_FILENAMES = ("corral.yaml", "manifest.yaml")


@dataclass(frozen=True)
class LoadedManifest:
    """A validated manifest and where it came from (``path`` is None for text or API data)."""

    manifest: Manifest
    path: Path | None
    base_dir: Path
    source: str = "manifest"


def load_manifest(path: str | Path) -> LoadedManifest:
    """Read and validate a manifest file, or ``corral.yaml`` / ``manifest.yaml`` in a directory.

    Raises ``NotFound`` when there is no such file and ``ManifestError`` listing every problem."""
    given = Path(path)
    file = _find_manifest_file(given)
    try:
        raw = file.read_bytes()
    except OSError as error:
        raise NotFound(
            f"cannot read the manifest {file}: {error.strerror or error}",
            "check the path and its permissions",
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        problem = Problem(
            "",
            f"the file is not UTF-8 text (byte {error.start})",
            "save the manifest as UTF-8 YAML",
        )
        raise ManifestError([problem], source=str(file)) from None
    base_dir = file.parent.absolute()
    loaded = parse_manifest(text, source=str(file), base_dir=base_dir)
    return LoadedManifest(loaded.manifest, file.absolute(), base_dir, str(file))


def _find_manifest_file(given: Path) -> Path:
    if given.is_dir():
        for name in MANIFEST_FILENAMES:
            candidate = given / name
            if candidate.is_file():
                return candidate
        raise NotFound(
            f"no manifest in {given}: looked for {' and '.join(MANIFEST_FILENAMES)}",
            "pass the manifest file itself, or name it corral.yaml",
        )
    if not given.exists():
        raise NotFound(f"no manifest at {given}: the file does not exist", "check the path")
    return given


def parse_manifest(text: str, *, source: str, base_dir: Path) -> LoadedManifest:
    """Validate manifest YAML ``text``; ``source`` names it in messages."""
    data, problems = _parse_yaml(text)
    if data is _UNPARSED:
        raise ManifestError(problems, source=source)
    return _validate(data, source=source, base_dir=base_dir, problems=problems)


def validate_manifest_data(data: object, *, source: str, base_dir: Path) -> LoadedManifest:
    """Validate already-parsed manifest data (the API receives JSON)."""
    return _validate(data, source=source, base_dir=base_dir, problems=[])


def validate_service_data(data: object, *, name: str = "service") -> Service:
    """Validate one service's data (a stored spec); paths start at ``services.<name>``."""
    prefix: tuple[str | int, ...] = ("services", name)
    problems: list[Problem] = []
    service: Service | None = None
    try:
        service = Service.model_validate(data)
    except ValidationError as error:
        problems.extend(_schema_problems(error.errors(include_url=False), Service, prefix))
    if isinstance(data, Mapping):
        problems.extend(_probe_port_problems(name, data))
    if problems or service is None:
        raise ManifestError(_unique(problems), source=f"service {name}")
    return service


# --- pass 1: YAML -------------------------------------------------------------------------

_UNPARSED = object()


def _parse_yaml(text: str) -> tuple[object, list[Problem]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        problems = list(_duplicate_keys(node, (), set()))
        return loader.construct_document(node), problems
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        what = ": ".join(part for part in (error.context, error.problem) if part)
        return _UNPARSED, [
            Problem(
                "",
                f"invalid YAML{where}: {what or 'cannot parse'}",
                "check the indentation and quoting there",
            )
        ]
    except yaml.YAMLError as error:
        return _UNPARSED, [Problem("", f"invalid YAML: {error}", "check the file is YAML")]
    finally:
        loader.dispose()


def _duplicate_keys(
    node: yaml.Node, path: tuple[str | int, ...], seen: set[int]
) -> Iterator[Problem]:
    if id(node) in seen:  # an alias: its problems were reported where the anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, str] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None:
                mark = key_node.start_mark
                where = f"{mark.line + 1}:{mark.column + 1}"
                if key in first_line:
                    yield Problem(
                        render_path((*path, key)),
                        f"duplicate key {key!r} (at line {first_line[key]} and again at {where})",
                        "each key may appear once; YAML would silently keep only the last",
                    )
                else:
                    first_line[key] = where
            yield from _duplicate_keys(value_node, (*path, key if key is not None else "?"), seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*path, index), seen)


# --- pass 2: schema -----------------------------------------------------------------------


def _validate(
    data: object, *, source: str, base_dir: Path, problems: list[Problem]
) -> LoadedManifest:
    if data is None:
        problems.append(
            Problem("", "the manifest is empty", "start with services: and one entry per service")
        )
        raise ManifestError(problems, source=source)
    if not isinstance(data, Mapping):
        problems.append(
            Problem(
                "",
                f"the manifest must be a mapping with a services: key, got {describe(data)}",
                "start with services: and one entry per service",
            )
        )
        raise ManifestError(problems, source=source)
    manifest: Manifest | None = None
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as error:
        problems.extend(_schema_problems(error.errors(include_url=False), Manifest, ()))
    problems.extend(_reference_problems(data.get("services")))
    if problems or manifest is None:
        raise ManifestError(_unique(problems), source=source)
    return LoadedManifest(manifest, None, base_dir, source)


def render_path(loc: tuple[str | int, ...] | list[str | int]) -> str:
    """``("services", "api", "command", 1)`` → ``services.api.command[1]``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _schema_problems(
    errors: list[ErrorDetails], root: type[BaseModel], prefix: tuple[str | int, ...]
) -> list[Problem]:
    problems: list[Problem] = []
    for error in errors:
        # Tags of our discriminated unions start with "~"; they are not part of the user's path.
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("~")))
        is_key = bool(loc) and loc[-1] == "[key]"
        if is_key:  # a mapping key, never a list index, even when YAML read it as a number
            loc = (*loc[:-2], str(loc[-2]))
        message, hint = _explain(error, loc, root, is_key)
        problems.append(Problem(render_path((*prefix, *loc)), message, hint))
    return problems


_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _explain(
    error: ErrorDetails, loc: tuple[str | int, ...], root: type[BaseModel], is_key: bool
) -> tuple[str, str]:
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    value = error.get("input")
    if kind == "corral":
        return str(ctx.get("message", error["msg"])), str(ctx.get("hint", ""))
    if kind == "corral_expected":
        return f"{error['msg']}, got {describe(value)}", _type_hint(value, str(ctx.get("hint")))
    if is_key:
        return f"keys here must be strings, got {describe(value)}", "quote the key"
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        allowed = _allowed_keys(root, loc[:-1])
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {close[0]!r}?"
        elif allowed:
            hint = "allowed keys here: " + ", ".join(allowed)
        else:
            hint = "remove it"
        return f"unknown key {key!r}", hint
    if kind == "missing":
        description = _field_description(root, loc)
        return "is required but missing", description
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {describe(value)}", _type_hint(value, "")
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        options = re.findall(r"'([^']*)'", expected)
        hint = ""
        if isinstance(value, str):
            close = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else ""
        return f"expected {expected}, got {describe(value)}", hint
    bounds = {
        "greater_than": ("greater than", "gt"),
        "greater_than_equal": ("at least", "ge"),
        "less_than": ("less than", "lt"),
        "less_than_equal": ("at most", "le"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx.get(key)}, got {_plain(value)}", ""
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, "), ""
    return str(error["msg"]), ""


def _type_hint(value: object, default: str) -> str:
    if isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d+)?", value.strip()):
        return "write the number without quotes"
    if value is None:
        return "give it a value, or remove the key to use the default"
    return default


def _plain(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# The models that may sit at each place of a manifest, keyed by path pattern ("*" is any
# mapping key or list index). Built once by walking the models' annotations.
_Pattern = tuple[str, ...]


def _model_table(root: type[BaseModel]) -> dict[_Pattern, list[type[BaseModel]]]:
    table: dict[_Pattern, list[type[BaseModel]]] = {}

    def walk(annotation: object, at: _Pattern) -> None:
        origin = get_origin(annotation)
        if origin is typing.Annotated:
            walk(get_args(annotation)[0], at)
        elif origin is Union or origin is types.UnionType:
            for arg in get_args(annotation):
                walk(arg, at)
        elif origin is dict:
            walk(get_args(annotation)[1], (*at, "*"))
        elif origin is list:
            walk(get_args(annotation)[0], (*at, "*"))
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            models = table.setdefault(at, [])
            if annotation in models:
                return
            models.append(annotation)
            for name, field in annotation.model_fields.items():
                walk(field.annotation, (*at, field.alias or name))  # keys as users write them

    walk(root, ())
    return table


_TABLES: dict[type[BaseModel], dict[_Pattern, list[type[BaseModel]]]] = {}


def _models_at(root: type[BaseModel], loc: tuple[str | int, ...]) -> list[type[BaseModel]]:
    table = _TABLES.get(root)
    if table is None:
        table = _TABLES[root] = _model_table(root)
    found: list[type[BaseModel]] = []
    for pattern, models in table.items():
        if len(pattern) == len(loc) and all(
            p in ("*", str(part)) for p, part in zip(pattern, loc, strict=True)
        ):
            found.extend(models)
    return found


def _allowed_keys(root: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    names: list[str] = []
    for model in _models_at(root, loc):
        for name, field in model.model_fields.items():
            key = field.alias or name  # `for`, not the Python-safe `for_`
            if key not in names:
                names.append(key)
    return names


def _field_description(root: type[BaseModel], loc: tuple[str | int, ...]) -> str:
    if not loc:
        return ""
    for model in _models_at(root, loc[:-1]):
        for name, field in model.model_fields.items():
            if str(loc[-1]) in (name, field.alias) and field.description:
                return field.description
    return ""


# --- pass 3: references -------------------------------------------------------------------


def _raw_depends_on(value: object) -> dict[str, str] | None:
    """``depends_on`` as written, as a map; None when it is malformed (pass 2 reports it)."""
    if value is None:
        return {}
    if isinstance(value, list):
        if all(isinstance(item, str) for item in value):
            return dict.fromkeys(value, "healthy")
        return None
    if isinstance(value, Mapping):
        # A bad condition is pass 2's to report; the name is still checked here.
        return {k: v if isinstance(v, str) else "" for k, v in value.items() if isinstance(k, str)}
    return None


def _reference_problems(services: object) -> list[Problem]:
    if not isinstance(services, Mapping):
        return []
    names = [name for name in services if isinstance(name, str)]
    problems: list[Problem] = []
    edges: dict[str, list[str]] = {}
    for name in names:
        raw = services[name]
        if not isinstance(raw, Mapping):
            continue
        problems.extend(_probe_port_problems(name, raw))
        deps = _raw_depends_on(raw.get("depends_on"))
        if deps is None:
            continue
        edges[name] = []
        for dep, condition in deps.items():
            at = f"services.{name}.depends_on.{dep}"
            if dep == name:
                problems.append(
                    Problem(at, "a service cannot depend on itself", "remove this dependency")
                )
            elif dep not in services:
                close = difflib.get_close_matches(dep, names, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else "services: " + ", ".join(names)
                problems.append(Problem(at, f"depends on {dep!r}, which is not a service", hint))
            else:
                edges[name].append(dep)
                target = services[dep]
                kind = target.get("kind", "service") if isinstance(target, Mapping) else None
                if condition == "completed" and kind in ("service", "kv"):
                    problems.append(
                        Problem(
                            at,
                            f"completed applies only to tasks, and {dep!r} is a "
                            + ("service" if kind == "service" else "kv store"),
                            f"use healthy or started, or set kind: task on {dep}",
                        )
                    )
    for cycle in DependencyGraph(edges).find_cycles():
        problems.append(
            Problem(
                f"services.{cycle[0]}.depends_on",
                f"dependency cycle: {render_cycle(cycle)}",
                "remove one of the depends_on entries in the cycle",
            )
        )
    return problems


def _probe_port_problems(name: str, raw: Mapping[Any, Any]) -> list[Problem]:
    ports = raw.get("ports", {})
    health = raw.get("health")
    if not isinstance(ports, Mapping) or not isinstance(health, Mapping):
        return []
    declared = [p for p in ports if isinstance(p, str)]
    problems: list[Problem] = []
    for probe_name in ("startup", "liveness", "readiness"):
        probe = health.get(probe_name)
        if not isinstance(probe, Mapping):
            continue
        at = f"services.{name}.health.{probe_name}"
        for key in ("port", "tcp"):
            ref = probe.get(key)
            if isinstance(ref, str) and ref not in declared:
                close = difflib.get_close_matches(ref, declared, n=1, cutoff=0.6)
                hint = (
                    f"did you mean {close[0]!r}?"
                    if close
                    else f"declare it: ports: {{{ref}: auto}}"
                )
                problems.append(
                    Problem(
                        f"{at}.{key}",
                        f"names port {ref!r}, which services.{name}.ports does not declare",
                        hint,
                    )
                )
        if "http" in probe and probe.get("port") is None and not declared:
            problems.append(
                Problem(
                    f"{at}.http",
                    "an http probe needs a port, and this service declares none",
                    "declare one: ports: {http: auto}",
                )
            )
    return problems


def _unique(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))
