"""What changed between two service specs, as dotted paths (``env.LOG_LEVEL: info → debug``).

Pure. Used by ``corral diff`` (manifest against the running desired state) and by
``corral releases`` (each release against the one before it). Secret references are shown as
references; secret values are never in a spec, so never in a diff.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Change:
    path: str
    old: Any
    new: Any

    def render(self) -> str:
        if self.old is _MISSING:
            return f"+ {self.path}: {_show(self.new)}"
        if self.new is _MISSING:
            return f"- {self.path}: {_show(self.old)}"
        return f"~ {self.path}: {_show(self.old)} → {_show(self.new)}"


class _Missing:
    def __repr__(self) -> str:
        return "∅"


_MISSING: Any = _Missing()


def _show(value: Any) -> str:
    if isinstance(value, list):
        return (
            " ".join(str(v) for v in value)
            if all(isinstance(v, str) for v in value)
            else str(value)
        )
    return repr(value) if isinstance(value, str) and (not value or " " in value) else str(value)


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value and set(value) != {"secret"}:
        for key in sorted(value):
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def spec_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[Change]:
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    _flatten(old or {}, "", before)
    _flatten(new or {}, "", after)
    changes = []
    for path in sorted(set(before) | set(after)):
        a, b = before.get(path, _MISSING), after.get(path, _MISSING)
        if a != b:
            changes.append(Change(path, a, b))
    return changes


def summary(changes: list[Change], limit: int = 3) -> str:
    """A short human summary: ``version 1.0 → 1.1, env.MODE``."""
    if not changes:
        return "no change"
    parts = []
    for change in changes[:limit]:
        if change.old is _MISSING or change.new is _MISSING or isinstance(change.new, dict | list):
            parts.append(change.path)
        else:
            parts.append(f"{change.path} {_show(change.old)} → {_show(change.new)}")
    more = len(changes) - limit
    return ", ".join(parts) + (f" (+{more} more)" if more > 0 else "")
