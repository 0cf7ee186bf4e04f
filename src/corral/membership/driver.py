"""Runs a ``Swim`` core over UDP: the asyncio adapter of the membership layer.

Theory of operation (the driver contract in ``swim``): every packet is one msgpack-encoded SWIM
message; on each packet the core gets ``receive(msg, now)``; a timer calls ``tick(now)`` at the
core's ``deadline()``; after either, everything in ``take_outbox()`` is sent and every event in
``take_events()`` goes to ``on_event``. Time comes from ``corral.clock.monotonic`` and the core's
randomness from a private generator. A datagram that does not decode is dropped (UDP from a
stranger is not an error of ours); a send that fails is a lost packet, which SWIM tolerates.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping, Sequence

import msgspec

from corral import clock, ids
from corral.consensus.transport import split_address
from corral.membership.config import Config
from corral.membership.swim import Member, MemberEvent, Message, Swim

log = logging.getLogger(__name__)

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Message).decode


class SwimDriver(asyncio.DatagramProtocol):
    """One member on ``address`` (``host:port``, UDP)."""

    def __init__(
        self,
        name: str,
        address: str,
        config: Config,
        role: str = "",
        tags: Mapping[str, str] | None = None,
        on_event: Callable[[MemberEvent], None] | None = None,
    ) -> None:
        self.address = address
        self.swim = Swim(
            name, address, config, ids.system_random(), clock.monotonic(), role=role, tags=tags
        )
        self.on_event = on_event
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    async def start(self) -> None:
        host, port = split_address(self.address)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self._flush()

    def join(self, addresses: Sequence[str]) -> None:
        self.swim.join(list(addresses), clock.monotonic())
        self._flush()

    def members(self) -> list[Member]:
        return self.swim.members()

    async def stop(self, leave: bool = True) -> None:
        if leave and self._transport is not None:
            self.swim.leave(clock.monotonic())
            self._flush()
            await asyncio.sleep(0)  # let the departure datagrams go out
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # ------------------------------------------------------------------ asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a datagram endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            msg = _decode(data)
        except msgspec.DecodeError:
            return
        self.swim.receive(msg, clock.monotonic())
        self._flush()

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable from a dead member: SWIM finds out by itself

    # ------------------------------------------------------------------ driving

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self.swim.tick(clock.monotonic())
        self._flush()

    def _flush(self) -> None:
        transport = self._transport
        for out in self.swim.take_outbox():
            if transport is None:
                break
            try:
                transport.sendto(_encode(out.message), split_address(out.to))
            except (OSError, ValueError):
                pass
        if self.on_event is not None:
            for ev in self.swim.take_events():
                try:
                    self.on_event(ev)
                except Exception:  # a listener's bug must not stop the failure detector
                    log.exception("membership event listener failed on %s", ev)
        else:
            self.swim.take_events()
        if transport is None:
            return
        at = self.swim.deadline()
        if at < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            delay = max(0.0, at - clock.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._tick)
            self._timer_at = at
