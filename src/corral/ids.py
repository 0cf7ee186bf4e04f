"""The only place in Corral that makes random identifiers.

Cattle instance ids are ``<service>-<suffix>`` with a 5-character suffix of lowercase letters
and digits that never repeats within a platform's history (the caller checks the Store).
Pure cores that need randomness take a seeded ``random.Random`` from their caller instead.
"""

from __future__ import annotations

import random
import secrets

_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def suffix(length: int = 5) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def cattle_id(service: str) -> str:
    return f"{service}-{suffix()}"


def token() -> str:
    return secrets.token_urlsafe(32)


def seeded(seed: int) -> random.Random:
    """A private, seeded generator for an adapter to hand to a pure core."""
    return random.Random(seed)


def system_random() -> random.Random:
    return random.Random(secrets.randbits(64))
