"""A ``kind: kv`` service: what the platform fills in so that a manifest entry runs the AP store.

Theory of operation: a user writes only ``{kind: kv, instances: 3, kv: {n, r, w, vnodes,
conflicts}}``; ``fill_defaults`` turns that into an ordinary service before the schema validates
it, so the planner, agent and rollouts treat the store's nodes like any other instances:

- **pets** (``<service>-<ordinal>``): each node keeps its name, ports and ``DATA_DIR`` across
  restarts, so a node revived in place finds its own data and the ring does not move;
- two ports, in this order: ``http`` (first, so ``$PORT``, dependants' ``<NAME>_URL`` and
  ``$CORRAL_ENDPOINTS`` point at the API) and ``peer`` (replication over TCP, gossip over UDP);
- readiness is the node's ``GET /health``;
- the command is ``python -m corral.cli.kv serve`` with ``--join ${PEERS_PEER}``: the agent sets
  ``PEERS_<PORT>`` for a pet to that port of its service's other pets, and the node keeps
  pushing its view to them until one answers, so start order does not matter.

Only missing fields are filled: a stored release spec (already filled) validates to itself, and
a user may still give their own ``command`` (e.g. a wrapper) or fixed ports. The command is built
from the raw ``kv`` mapping before validation; when that mapping is invalid, validation of
``kv`` fails with its path, so the command built from it is never used.

Pure: no I/O; the interpreter path is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULTS", "KIND", "fill_defaults", "node_command"]

KIND = "kv"
DEFAULTS: Mapping[str, Any] = {"n": 3, "r": 2, "w": 2, "vnodes": 256, "conflicts": "siblings"}
_HEALTH = {"readiness": {"http": "/health", "port": "http", "period": 0.5}}


def node_command(python: str, settings: Mapping[str, Any]) -> list[str]:
    """The argv of one node; ``${…}`` words are expanded by the agent at launch."""
    merged = {**DEFAULTS, **settings}
    return [
        python, "-m", "corral.cli.kv", "serve",
        "--name", "${CORRAL_INSTANCE}",
        "--listen", "127.0.0.1:${PORT_HTTP}",
        "--peer", "127.0.0.1:${PORT_PEER}",
        "--join", "${PEERS_PEER}",
        "--data", "${DATA_DIR}",
        "--n", str(merged["n"]), "--r", str(merged["r"]), "--w", str(merged["w"]),
        "--vnodes", str(merged["vnodes"]), "--conflicts", str(merged["conflicts"]),
    ]  # fmt: skip


def fill_defaults(data: Mapping[str, Any], python: str) -> dict[str, Any]:
    """``data`` (one service as written) with what a ``kind: kv`` service implies filled in."""
    out = dict(data)
    raw = out.get("kv")
    settings = raw if isinstance(raw, Mapping) else {}
    out.setdefault("kv", {})  # present, so the schema checks n against instances
    out.setdefault("mode", "pet")
    out.setdefault("ports", {"http": "auto", "peer": "auto"})
    out.setdefault("health", _HEALTH)
    out.setdefault("command", node_command(python, settings))
    return out
