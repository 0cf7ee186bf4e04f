"""``${VAR}`` expansion in a service's ``command`` and ``env``, done at launch time.

Theory of operation: the manifest keeps ``${VAR}`` text as written (a release snapshots what the
user wrote); the agent calls ``expand`` on each command word and env value with the instance's
environment (the platform's ``PORT``, ``PORT_<NAME>``, ``DATA_DIR``, ``CORRAL_*`` and the service's
own env) just before it starts the process. The function is pure: same text and mapping, same
result.

Rules, chosen to match a shell and docker compose so nothing surprises:

- ``${VAR}`` is replaced by ``env[VAR]``; an unknown variable becomes the empty string, as in a
  shell. ``${VAR:-default}`` gives ``default`` when ``VAR`` is unknown or empty.
- ``$$`` is a literal ``$`` (so ``sh -c 'echo $$HOME'`` reaches the shell as ``echo $HOME``).
- A ``$`` not followed by ``{`` or ``$`` stays as it is: ``$1`` or ``$HOME`` in an
  ``sh -c`` script is left for that shell, since only the braced form is ours.
- An unclosed ``${`` is left literally; the manifest validator has already rejected it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["expand", "referenced_variables", "unclosed_reference"]

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TOKEN = re.compile(rf"\$\$|\$\{{({_NAME})(?::-([^}}]*))?\}}")


def expand(value: str, env: Mapping[str, str]) -> str:
    """``value`` with every ``${VAR}`` replaced from ``env`` and ``$$`` made a single ``$``."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        current = env.get(name, "")
        default = match.group(2)
        if default is not None and current == "":
            return default
        return current

    return _TOKEN.sub(replace, value)


def referenced_variables(value: str) -> list[str]:
    """The variable names ``value`` refers to, in order of first use, without repeats."""
    names: list[str] = []
    for match in _TOKEN.finditer(value):
        name = match.group(1)
        if name is not None and name not in names:
            names.append(name)
    return names


def unclosed_reference(value: str) -> int | None:
    """The index of a ``${`` that does not form a valid reference, or None when all are valid.

    The schema uses this to reject ``${PORT`` or ``${1X}`` instead of launching them verbatim."""
    position = 0
    while True:
        start = value.find("$", position)
        if start < 0 or start == len(value) - 1:
            return None
        match = _TOKEN.match(value, start)
        if match is not None:
            position = match.end()
            continue
        if value[start + 1] == "{":
            return start
        position = start + 1
