"""Hot-parameter limiting: cap how often any one value of a key (a product id, a user id) may
be requested, in fixed memory, whatever the number of distinct values.

Theory of operation (Sentinel's hot-parameter flow rule; the count-min sketch of Cormode &
Muthukrishnan 2005 with conservative update, Estan & Varghese 2002). Instead of a bucket per
value, a ``HotParamLimiter`` keeps two count-min sketches of ``DEPTH`` (4) × ``width`` counters —
the current window of ``window`` seconds and the previous one — and estimates a value's count
over the last window as ``prev·(1 − f) + curr`` (the sliding-window counter of
``ratelimit.SlidingWindow``, per value). A request is admitted while that estimate plus one
stays within the value's limit (``limit``, or its entry in ``overrides``), and only admitted
requests are counted.

Why this limits without remembering values: a count-min estimate is never below the true
count (each of a value's cells holds at least its own count), so a value never gets more than
its limit — the same bound, and the same documented sliding-window approximation, as
``SlidingWindow``. Collisions can only *raise* an estimate: a cold value whose every cell is
shared with hot ones may be refused early. With conservative update (only the cells at the
minimum are raised) and ``width`` ≫ the number of hot values that error is small: a value is
mis-refused only when all ``DEPTH`` of its cells collide with values holding ≥ its limit. Memory
is 2 × DEPTH × width counters however many values pass, and windows rotate by replacing the
sketch — old values fade out with no per-value cleanup.

``hot()`` lists the top ``top_k`` values refused recently with their estimates, for metrics
and the admin API; that list is bounded too (the smallest entry is replaced). Hashing is CRC-32
with double hashing, so every worker places a value in the same cells.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from corral.gateway.ratelimit import Decision

__all__ = ["DEPTH", "HotParamLimiter"]

DEPTH = 4  # rows of each sketch: a cold value is mis-refused only if all 4 cells collide


class HotParamLimiter:
    """One hot-parameter rule: at most ``limit`` requests per value per ``window`` seconds."""

    __slots__ = (
        "_curr",
        "_hot",
        "_prev",
        "_start",
        "limit",
        "overrides",
        "top_k",
        "width",
        "window",
    )

    def __init__(
        self,
        limit: float,
        window: float = 1.0,
        *,
        overrides: Mapping[str, float] | None = None,
        width: int = 2048,
        top_k: int = 16,
    ) -> None:
        self.limit = limit
        self.window = window
        self.overrides = dict(overrides or {})
        self.width = width
        self.top_k = top_k
        self._curr = [0.0] * (width * DEPTH)
        self._prev = [0.0] * (width * DEPTH)
        self._start: float | None = None
        self._hot: dict[str, float] = {}

    def _roll(self, now: float) -> None:
        start = self._start
        if start is None:
            self._start = now
            return
        windows = int((now - start) // self.window)
        if windows <= 0:
            return
        size = self.width * DEPTH
        self._prev = self._curr if windows == 1 else [0.0] * size
        self._curr = [0.0] * size
        self._start = start + windows * self.window
        self._hot = {}

    def _cells(self, value: str) -> tuple[int, int, int, int]:
        data = value.encode()
        h1 = zlib.crc32(data)
        h2 = zlib.crc32(data, 0x9E3779B9) | 1  # double hashing (Kirsch & Mitzenmacher)
        w = self.width
        return (h1 % w, w + (h1 + h2) % w, 2 * w + (h1 + 2 * h2) % w, 3 * w + (h1 + 3 * h2) % w)

    def check(self, value: str, now: float) -> Decision:
        """Admit or refuse one request carrying ``value``; refused → 429 like a rate limit."""
        start = self._start
        if start is None or now >= start + self.window:
            self._roll(now)
            start = self._start
            assert start is not None
        a, b, c_, d = self._cells(value)
        curr = self._curr
        prev = self._prev
        c = min(curr[a], curr[b], curr[c_], curr[d])
        p = min(prev[a], prev[b], prev[c_], prev[d])
        fade = 1.0 - (now - start) / self.window
        used = p * fade + c
        limit = self.overrides.get(value, self.limit) if self.overrides else self.limit
        reset = start + self.window - now
        if used + 1.0 <= limit:
            target = c + 1.0
            for i in (a, b, c_, d):  # conservative update: raise only cells below the count
                if curr[i] < target:
                    curr[i] = target
            return Decision(True, int(limit), int(limit - used - 1.0), reset)
        self._note_hot(value, used)
        over = used + 1.0 - limit
        wait = over * self.window / p if p and over <= p * fade else reset
        return Decision(False, int(limit), max(0, int(limit - used)), reset, wait)

    def estimate(self, value: str, now: float) -> float:
        """The value's estimated count over the last window (never below the true count)."""
        if self._start is None:
            return 0.0
        if now >= self._start + self.window:
            self._roll(now)
        start = self._start
        cells = self._cells(value)
        fade = 1.0 - (now - start) / self.window
        return min(self._prev[i] for i in cells) * fade + min(self._curr[i] for i in cells)

    def _note_hot(self, value: str, used: float) -> None:
        hot = self._hot
        if value in hot or len(hot) < self.top_k:
            hot[value] = used
            return
        smallest = min(hot, key=lambda v: (hot[v], v))
        if hot[smallest] < used:
            del hot[smallest]
            hot[value] = used

    def hot(self) -> list[tuple[str, float]]:
        """The values refused in this window, hottest first."""
        return sorted(self._hot.items(), key=lambda item: (-item[1], item[0]))
