"""Restart backoff: when a crashed instance is restarted, and when it counts as crash-looping.

Theory of operation (Kubernetes' CrashLoopBackOff, with the DESIGN.md defaults): the first
crash is restarted immediately; the n-th consecutive crash waits ``initial · 2^(n-2)``, capped
at ``max``, times a jitter factor in ``[1 - jitter, 1 + jitter)``. The crash count resets to 1
when the instance had been in ``run`` for at least ``reset_after`` before it exited. After
``failed_after`` consecutive crashes the instance shows ``failed`` — and is still retried at
the cap, forever.

Invariants:
- the delay is a pure function of (policy, crash count, instance id): the level-triggered
  planner re-computes it on every pass and must get the same due time each time, so the jitter
  comes from a stable hash (CRC-32) of ``"<key>#<count>"``, never from ``hash()`` or a random
  generator;
- ``0 <= delay <= max · 1.1`` whatever the policy's jitter;
- for a fixed key, the un-jittered base never decreases as the count grows.
"""

from __future__ import annotations

import zlib

from corral.model import BackoffPolicy

MAX_OVERSHOOT = 1.1  # the jittered delay never exceeds max · 1.1


def base_delay(policy: BackoffPolicy, consecutive_crashes: int) -> float:
    """The un-jittered delay after the ``consecutive_crashes``-th crash in a row."""
    if consecutive_crashes <= 1 or policy.max <= 0:
        return 0.0
    delay = max(0.0, policy.initial)
    # Doubling by a loop that stops at the cap: no overflow for absurd crash counts.
    for _ in range(consecutive_crashes - 2):
        if delay >= policy.max or delay <= 0:
            break
        delay *= 2
    return min(delay, policy.max)


def jitter_factor(policy: BackoffPolicy, consecutive_crashes: int, key: str) -> float:
    """A factor in ``[1 - jitter, 1 + jitter)``, stable for one (key, crash count)."""
    digest = zlib.crc32(f"{key}#{consecutive_crashes}".encode())
    unit = digest / 2**32  # [0, 1)
    return 1.0 + policy.jitter * (2.0 * unit - 1.0)


def restart_delay(policy: BackoffPolicy, consecutive_crashes: int, key: str) -> float:
    """Seconds to wait before restarting after an exit; ``consecutive_crashes`` counts the crash
    that just happened (1 → 0 s, 2 → ≈ initial, 3 → ≈ 2·initial, … ≈ max)."""
    base = base_delay(policy, consecutive_crashes)
    if base <= 0:
        return 0.0
    delay = base * jitter_factor(policy, consecutive_crashes, key)
    return min(max(0.0, delay), policy.max * MAX_OVERSHOOT)


def restart_due(policy: BackoffPolicy, exit_at: float, consecutive_crashes: int, key: str) -> float:
    """The time at which an instance that exited at ``exit_at`` may be restarted."""
    return exit_at + restart_delay(policy, consecutive_crashes, key)


def crashes_after_exit(
    policy: BackoffPolicy, previous_crashes: int, run_since: float | None, exit_at: float
) -> int:
    """The consecutive-crash count after an unasked exit at ``exit_at``.

    ``run_since`` is when the instance last entered ``run`` (None if it never did in this
    incarnation); a stretch of at least ``reset_after`` there forgives the earlier crashes."""
    if run_since is not None and exit_at - run_since >= policy.reset_after:
        return 1
    return max(0, previous_crashes) + 1


def is_crash_looping(policy: BackoffPolicy, consecutive_crashes: int) -> bool:
    """True once ``failed_after`` crashes happened in a row: the instance shows ``failed``."""
    return consecutive_crashes >= max(1, policy.failed_after)
