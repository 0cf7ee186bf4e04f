"""The dependency graph between services: cycles, start order, stop order.

Theory of operation: ``edges`` maps each service to the services it depends on (``depends_on``
names). A name that appears only as a dependency is still a node, so the graph never drops a
service. Every result is deterministic whatever ``PYTHONHASHSEED`` is: nodes are visited in
sorted order and every returned list is sorted.

- ``find_cycles`` returns one cycle per strongly connected component that has one (Tarjan's
  algorithm, iterative so deep chains do not hit the recursion limit). Each cycle starts and
  ends at the component's smallest name and is the shortest way back to it, taking the
  smallest next name on ties (breadth-first search): ``["api", "worker", "api"]``.
- ``start_order`` returns levels: a service's level is one more than the highest level of its
  dependencies (longest path from a service with none), so each service starts as early as its
  dependencies allow; services in one level have no dependency between them and may start in
  parallel. Invariant: for every edge ``a → b``, ``b``'s level is below ``a``'s.
- ``stop_order`` is the start order reversed: dependents stop before what they depend on, the
  order docker compose and DESIGN.md ("reverse dependency order") use.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from corral.errors import UserError

__all__ = ["DependencyCycle", "DependencyGraph", "render_cycle"]


def render_cycle(cycle: list[str]) -> str:
    """``api → worker → api``."""
    return " → ".join(cycle)


class DependencyCycle(UserError):
    """Services that depend on each other in a loop cannot be ordered."""

    code = "dependency_cycle"

    def __init__(self, cycle: list[str]) -> None:
        super().__init__(
            f"dependency cycle: {render_cycle(cycle)}",
            "remove one of the depends_on entries in the cycle",
        )
        self.cycle = list(cycle)


class DependencyGraph:
    """Services and what each depends on; see the module docstring for the ordering rules."""

    def __init__(self, edges: Mapping[str, Iterable[str]]) -> None:
        deps: dict[str, list[str]] = {}
        for name in sorted(edges):
            deps[name] = sorted(dict.fromkeys(edges[name]))
        for targets in list(deps.values()):
            for target in targets:
                deps.setdefault(target, [])
        self._deps = {name: deps[name] for name in sorted(deps)}
        dependents: dict[str, list[str]] = {name: [] for name in self._deps}
        for name, targets in self._deps.items():
            for target in targets:
                dependents[target].append(name)
        self._dependents = dependents

    @property
    def nodes(self) -> list[str]:
        return list(self._deps)

    def dependencies(self, name: str) -> list[str]:
        """What ``name`` depends on directly, sorted."""
        return list(self._deps.get(name, []))

    def dependents(self, name: str, *, transitive: bool = False) -> list[str]:
        """What depends on ``name`` directly (or, with ``transitive``, at any distance), sorted."""
        if not transitive:
            return list(self._dependents.get(name, []))
        seen: dict[str, None] = {}
        queue = deque(self._dependents.get(name, []))
        while queue:
            current = queue.popleft()
            if current in seen or current == name:
                continue
            seen[current] = None
            queue.extend(self._dependents[current])
        return sorted(seen)

    def find_cycles(self) -> list[list[str]]:
        """One cycle per strongly connected component that loops, sorted by first name."""
        cycles = [self._cycle_from(min(component)) for component in self._components()]
        return sorted(cycles)

    def find_cycle(self) -> list[str] | None:
        """The first cycle of ``find_cycles``, or None when the graph has none."""
        cycles = self.find_cycles()
        return cycles[0] if cycles else None

    def start_order(self) -> list[list[str]]:
        """Levels of services that may start together; raises ``DependencyCycle``."""
        cycle = self.find_cycle()
        if cycle is not None:
            raise DependencyCycle(cycle)
        remaining = {name: len(targets) for name, targets in self._deps.items()}
        level_of: dict[str, int] = {}
        ready = deque(name for name, count in remaining.items() if count == 0)
        while ready:
            name = ready.popleft()
            targets = self._deps[name]
            level_of[name] = 1 + max((level_of[t] for t in targets), default=-1)
            for dependent in self._dependents[name]:
                remaining[dependent] -= 1
                if remaining[dependent] == 0:
                    ready.append(dependent)
        levels: list[list[str]] = [[] for _ in range(1 + max(level_of.values(), default=-1))]
        for name in sorted(level_of):
            levels[level_of[name]].append(name)
        return levels

    def stop_order(self) -> list[list[str]]:
        """Levels in reverse start order: dependents stop first; raises ``DependencyCycle``."""
        return list(reversed(self.start_order()))

    def _components(self) -> list[list[str]]:
        """Strongly connected components that contain a cycle (Tarjan, iterative)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        on_stack: dict[str, None] = {}
        stack: list[str] = []
        found: list[list[str]] = []

        def visit(node: str) -> None:
            index[node] = low[node] = len(index)
            stack.append(node)
            on_stack[node] = None

        for root in self._deps:
            if root in index:
                continue
            visit(root)
            work = [(root, iter(self._deps[root]))]
            while work:
                node, targets = work[-1]
                descended = False
                for target in targets:
                    if target not in index:
                        visit(target)
                        work.append((target, iter(self._deps[target])))
                        descended = True
                        break
                    if target in on_stack:
                        low[node] = min(low[node], index[target])
                if descended:
                    continue
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        del on_stack[member]
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in self._deps[node]:
                        found.append(sorted(component))
        return found

    def _cycle_from(self, start: str) -> list[str]:
        """The shortest path from ``start`` back to itself (smallest names on ties)."""
        previous: dict[str, str] = {}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for target in self._deps[node]:
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if target not in previous:
                    previous[target] = node
                    queue.append(target)
        raise AssertionError(f"{start} is in a cycle but no path leads back to it")
