"""Pending ReadIndex requests on a leader (Raft thesis §6.4; paper §8).

Theory of operation: a read is linearizable if it observes every write committed before it
arrived. The leader records its commit index with the request (the *read index*), then
confirms it is still leader by a round of heartbeats carrying the request's context. Once a
quorum acknowledges that round (or a later one — heartbeats are ordered per request queue),
the read index is released; the requester serves the read when its applied index reaches it.

Invariants: requests are released in arrival order; an ack for context C also confirms every
request queued before C (those heartbeats were sent earlier); a leader that loses leadership
drops every pending request (the requester times out and retries).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ReadRequest:
    index: int
    context: bytes
    frm: int
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    def __init__(self) -> None:
        self.pending: dict[bytes, ReadRequest] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: int, context: bytes, frm: int) -> None:
        if context in self.pending:
            return
        self.pending[context] = ReadRequest(index, context, frm)
        self.queue.append(context)

    def recv_ack(self, frm: int, context: bytes) -> set[int] | None:
        request = self.pending.get(context)
        if request is None:
            return None
        request.acks.add(frm)
        return request.acks

    def advance(self, context: bytes) -> list[ReadRequest]:
        """Release every request up to and including ``context``."""
        if context not in self.pending:
            return []
        upto = self.queue.index(context) + 1
        released = [self.pending.pop(c) for c in self.queue[:upto]]
        del self.queue[:upto]
        return released

    def last_pending_context(self) -> bytes:
        return self.queue[-1] if self.queue else b""
