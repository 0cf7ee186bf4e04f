"""orders — cattle: takes an order by reserving stock (inventory) and charging (payments)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from shoplib import call, serve

PRICES = {"apple": 0.5, "pear": 0.8, "plum": 1.2}
orders: list[dict[str, Any]] = []
lock = threading.Lock()


def handle(method: str, path: str, body: Any) -> tuple[int, Any]:
    if method == "GET" and path == "/ready":
        call("inventory", "GET", "/ready", timeout=1.0)
        return 200, {"ready": True}
    if method == "GET" and path == "/orders":
        with lock:
            return 200, list(orders)
    if method == "POST" and path == "/orders":
        item, qty = str(body.get("item", "")), int(body.get("qty", 1))
        if item not in PRICES or qty <= 0:
            return 400, {"error": f"unknown item {item!r} or bad quantity"}
        reserved = call("inventory", "POST", "/reserve", {"item": item, "qty": qty})
        payment = call("payments", "POST", "/charge", {"amount": PRICES[item] * qty})
        order = {
            "item": item,
            "qty": qty,
            "payment": payment["payment"],
            "left": reserved["left"],
            "by": os.environ.get("CORRAL_INSTANCE"),
        }
        with lock:
            orders.append(order)
        return 201, order
    return 404, {"error": f"no route {method} {path}"}


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve("orders", handle)
