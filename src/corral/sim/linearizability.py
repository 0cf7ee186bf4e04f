"""A linearizability checker for key-value register histories (Wing–Gong search, Lowe's cache).

Theory of operation. A history is what clients saw: each operation was *invoked* at some
time and then either completed ``ok`` (with a result), ``fail`` (definitely had no effect), or
``info`` (unknown: it may take effect at any moment after its invocation, or never — a timeout,
a crashed server). The history is linearizable if every operation can be given one instant
between its invocation and completion so that, in that order, the results match a single
register per key (Herlihy & Wing 1990).

- Registers are independent, so the history is split per key and each key is checked alone
  (P-compositionality: Horn & Kroening, "Faster linearizability checking via P-compositionality").
- Per key, the Wing–Gong algorithm walks a list of call/return events: it tries to linearize a
  pending call now (if the model accepts it), backtracking when it meets the return of an
  operation it has not linearized. Lowe's improvement caches (set of linearized ops, state)
  pairs already explored, which turns the exponential search into a fast one on real
  histories (Lowe, "Testing for linearizability", 2017).
- ``fail`` operations are dropped; ``info`` reads are dropped (a read has no effect); ``info``
  writes return at +∞ and need not be linearized at all.
- Events at the same instant are treated as concurrent (calls sort before returns), so a
  clock tie never produces a false violation.

Model: ``put(key, value)``; ``get(key) -> value | None``; ``cas(key, expected, new) -> bool``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["put", "get", "cas"]
Status = Literal["pending", "ok", "fail", "info"]


@dataclass
class Op:
    id: int
    client: int
    kind: Kind
    key: str
    value: str | None = None  # put: the value; cas: the new value
    expected: str | None = None  # cas: the value it expects
    invoke: float = 0.0
    complete: float = math.inf
    status: Status = "pending"
    result: str | bool | None = None  # get: the value read; cas: whether it swapped

    def describe(self) -> str:
        if self.kind == "put":
            call = f"put({self.key}, {self.value!r})"
        elif self.kind == "get":
            call = f"get({self.key})"
        else:
            call = f"cas({self.key}, {self.expected!r} -> {self.value!r})"
        end = "∞" if math.isinf(self.complete) else f"{self.complete:.4f}"
        outcome = f" = {self.result!r}" if self.status == "ok" and self.kind != "put" else ""
        return f"client {self.client} {call}{outcome} [{self.status}] @{self.invoke:.4f}..{end}"


@dataclass
class History:
    """Recorded in the Jepsen style: ``invoke`` then exactly one of ``ok``/``fail``/``info``."""

    ops: list[Op] = field(default_factory=list)

    def invoke(
        self,
        client: int,
        kind: Kind,
        key: str,
        at: float,
        value: str | None = None,
        expected: str | None = None,
    ) -> Op:
        op = Op(len(self.ops), client, kind, key, value, expected, invoke=at)
        self.ops.append(op)
        return op

    def ok(self, op: Op, at: float, result: str | bool | None = None) -> None:
        op.status, op.complete, op.result = "ok", at, result

    def fail(self, op: Op, at: float) -> None:
        op.status, op.complete = "fail", at

    def info(self, op: Op) -> None:
        op.status, op.complete = "info", math.inf

    def close(self) -> None:
        """Operations still pending when the run ended have unknown outcomes."""
        for op in self.ops:
            if op.status == "pending":
                self.info(op)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    key: str = ""
    message: str = ""
    ops_checked: int = 0

    def __bool__(self) -> bool:
        return self.ok


def _step(state: str | None, op: Op) -> tuple[bool, str | None]:
    if op.kind == "put":
        return True, op.value
    if op.kind == "get":
        return state == op.result, state
    if op.status == "info":  # unknown cas: linearizing it means it swapped
        return state == op.expected, op.value
    if op.result:
        return state == op.expected, op.value
    return state != op.expected, state


class _Node:
    __slots__ = ("is_call", "match", "next", "op", "prev", "time")

    def __init__(self, op: Op, is_call: bool, time: float) -> None:
        self.op = op
        self.is_call = is_call
        self.time = time
        self.prev: _Node | None = None
        self.next: _Node | None = None
        self.match: _Node | None = None  # a call's return node


def check_key(key: str, ops: list[Op], max_steps: int = 2_000_000) -> CheckResult:
    """Wing–Gong–Lowe search over one key's operations (already filtered)."""
    nodes: list[_Node] = []
    for op in ops:
        call, ret = _Node(op, True, op.invoke), _Node(op, False, op.complete)
        call.match = ret
        nodes.extend([call, ret])
    # calls before returns at equal times: ties count as concurrent
    nodes.sort(key=lambda n: (n.time, 0 if n.is_call else 1, n.op.id))
    head = _Node(ops[0], True, -math.inf) if ops else None
    if head is None:
        return CheckResult(True, key)
    prev = head
    for n in nodes:
        prev.next, n.prev = n, prev
        prev = n
    bit = {op.id: 1 << i for i, op in enumerate(ops)}
    remaining_ok = sum(1 for op in ops if op.status == "ok")
    state: str | None = None
    linearized = 0
    cache: set[tuple[int, str | None]] = set()
    stack: list[tuple[_Node, str | None]] = []
    entry = head.next
    steps = 0
    deepest = 0
    blocked, blocked_depth = ops[0], -1
    while remaining_ok:
        steps += 1
        if steps > max_steps:
            return CheckResult(False, key, f"gave up after {max_steps} steps", len(ops))
        assert entry is not None
        if entry.is_call:
            ok, new_state = _step(state, entry.op)
            marked = linearized | bit[entry.op.id]
            if ok and (marked, new_state) not in cache:
                cache.add((marked, new_state))
                stack.append((entry, state))
                state, linearized = new_state, marked
                if entry.op.status == "ok":
                    remaining_ok -= 1
                deepest = max(deepest, len(stack))
                _lift(entry)
                entry = head.next
            else:
                entry = entry.next
        elif math.isinf(entry.time):
            break  # only operations of unknown outcome remain: they may never happen
        else:
            if len(stack) >= blocked_depth:
                # the operation that could not be placed when the search got furthest
                blocked, blocked_depth = entry.op, len(stack)
            if not stack:
                return CheckResult(False, key, _explain(key, ops, blocked, deepest), len(ops))
            call, state = stack.pop()
            linearized &= ~bit[call.op.id]
            if call.op.status == "ok":
                remaining_ok += 1
            _unlift(call)
            entry = call.next
    return CheckResult(True, key, "", len(ops))


def _lift(call: _Node) -> None:
    for n in (call, call.match):
        assert n is not None and n.prev is not None
        n.prev.next = n.next
        if n.next is not None:
            n.next.prev = n.prev


def _unlift(call: _Node) -> None:
    for n in (call.match, call):
        assert n is not None and n.prev is not None
        n.prev.next = n
        if n.next is not None:
            n.next.prev = n


def _explain(key: str, ops: list[Op], stuck: Op, deepest: int) -> str:
    lines = [f"key {key!r}: no order of its {len(ops)} operations explains their results;"]
    lines.append(
        f"  cannot place: {stuck.describe()} (after ordering {deepest} operations); "
        "operations around it:"
    )
    near = sorted(ops, key=lambda o: abs(o.invoke - stuck.invoke))[:12]
    lines.extend(f"    {o.describe()}" for o in sorted(near, key=lambda o: o.invoke))
    return "\n".join(lines)


def check(history: History | list[Op]) -> CheckResult:
    """Check a whole history, key by key; the first non-linearizable key is reported."""
    ops = history.ops if isinstance(history, History) else history
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        if op.status == "pending":
            raise ValueError(f"operation still pending: {op.describe()}; call History.close()")
        if op.status == "fail" or (op.status == "info" and op.kind == "get"):
            continue
        by_key.setdefault(op.key, []).append(op)
    total = 0
    for key in sorted(by_key):
        result = check_key(key, by_key[key])
        total += result.ops_checked
        if not result.ok:
            return result
    return CheckResult(True, "", f"{total} operations over {len(by_key)} keys", total)
