"""The one exception tree of Corral.

Every error a user can cause or meet carries a machine-readable ``code``, a ``message`` that
says what is wrong and where (a manifest path, a service, an instance id), and a ``hint`` that
says how to fix it. The API renders them as ``{code, message, hint}`` with ``status``; the CLI
prints them and exits with ``exit_code``.

    CorralError                      status  exit
    ├── UserError                      400     2   the caller can fix it
    │   ├── ManifestError              422     2   a manifest failed validation (all problems)
    │   ├── NotFound                   404     2
    │   ├── Conflict                   409     2   state changed under you / already exists
    │   ├── Unauthorized               401     2   no or unknown token
    │   └── Forbidden                  403     2   token lacks the role
    ├── PlatformUnavailable            503     3   no control plane answers at $CORRAL_HOME
    │   ├── AlreadyRunning             409     3   another control plane holds $CORRAL_HOME
    │   └── consensus.node.NoQuorum, LeaderChanged, NotLeader   a Raft write cannot complete
    ├── StoreError                     500     3   the Store cannot serve
    │   ├── Compacted                  410     2   watch history before a revision is gone
    │   └── StoreCorrupt               500     3   a store file is damaged or incompatible
    ├── StartError                     500     2   an instance's command cannot start
    │   └── runtime.driver.StartFailed                 carries the instance's ExitInfo
    ├── control.lifecycle.ImpossibleTransition 500 1   a caller fed an event the table forbids
    └── gateway.breaker.BreakerMisuse          500 1   likewise for the circuit breaker's table

Modules define a subclass next to the code that raises it when it carries extra data
(``manifest.graph.DependencyCycle`` is a ``UserError`` with the cycle).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class CorralError(Exception):
    """Base of every Corral error: ``code``, ``message``, ``hint``."""

    code = "error"
    status = 500
    exit_code = 1

    def __init__(self, message: str, hint: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "hint": self.hint}

    def __str__(self) -> str:
        return self.message


class UserError(CorralError):
    code = "bad_request"
    status = 400
    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One validation problem: where (a dotted manifest path), what, and how to fix it."""

    path: str
    message: str
    hint: str = ""

    def render(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text} (hint: {self.hint})" if self.hint else text


@dataclass
class _Problems:
    items: list[Problem] = field(default_factory=list)


class ManifestError(UserError):
    """A manifest (or gateway config) failed validation; carries every problem found."""

    code = "invalid_manifest"
    status = 422

    def __init__(self, problems: list[Problem], source: str = "manifest") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p.render()}" for p in self.problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(
            f"{source} has {count} {noun}:\n{lines}",
            "fix each listed path; `corral validate FILE` re-checks without changing anything",
        )

    def to_dict(self) -> dict[str, str]:
        data = super().to_dict()
        return data

    def problem_dicts(self) -> list[dict[str, str]]:
        return [{"path": p.path, "message": p.message, "hint": p.hint} for p in self.problems]


class NotFound(UserError):
    code = "not_found"
    status = 404


class Conflict(UserError):
    code = "conflict"
    status = 409


class Unauthorized(UserError):
    code = "unauthorized"
    status = 401


class Forbidden(UserError):
    code = "forbidden"
    status = 403


class PlatformUnavailable(CorralError):
    code = "unavailable"
    status = 503
    exit_code = 3


class AlreadyRunning(PlatformUnavailable):
    code = "already_running"
    status = 409


class StoreError(CorralError):
    code = "store_error"
    status = 500
    exit_code = 3


class Compacted(StoreError):
    """History before ``revision`` is gone; the watcher must re-list and watch from there."""

    code = "compacted"
    status = 410
    exit_code = 2

    def __init__(self, revision: int, requested: int = 0) -> None:
        super().__init__(
            f"watch history before revision {revision} has been compacted"
            + (f" (asked for {requested})" if requested else ""),
            "re-list the prefix and watch from the revision the listing returned",
        )
        self.revision = revision


class StoreCorrupt(StoreError):
    code = "store_corrupt"


class StartError(CorralError):
    code = "start_failed"
    status = 500
    exit_code = 2
