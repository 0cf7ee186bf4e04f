"""The only place in Corral that reads time.

Pure cores never call this module: adapters read ``now`` here and pass it in. ``wall()`` is
seconds since the epoch (for records users read), ``monotonic()`` is for deadlines and
durations.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def wall(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM = SystemClock()


def wall() -> float:
    return time.time()


def monotonic() -> float:
    return time.monotonic()
