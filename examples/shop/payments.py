"""payments — cattle: charges an amount and returns a payment id."""

from __future__ import annotations

import itertools
import os
import signal
import sys
from typing import Any

from shoplib import serve

counter = itertools.count(1)


def handle(method: str, path: str, body: Any) -> tuple[int, Any]:
    if method == "GET" and path == "/ready":
        return 200, {"ready": True}
    if method == "POST" and path == "/charge":
        amount = float(body.get("amount", 0))
        if amount <= 0:
            return 400, {"error": "amount must be positive"}
        instance = os.environ.get("CORRAL_INSTANCE", "payments")
        return 200, {"payment": f"{instance}-{next(counter)}", "amount": amount}
    return 404, {"error": f"no route {method} {path}"}


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve("payments", handle)
