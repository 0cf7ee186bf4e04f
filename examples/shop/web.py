"""web — cattle: the shop's page and JSON API, in front of orders and inventory."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from shoplib import call, serve

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Corral shop</title>
<style>body{font:16px system-ui;margin:2rem auto;max-width:40rem}button{margin-left:.5rem}
li{margin:.3rem 0}#log{color:#555}</style></head>
<body><h1>Corral shop</h1><p>Served by <code>INSTANCE</code>.</p>
<h2>Stock</h2><ul id="stock"></ul><p id="log" role="status"></p>
<script type="module">
async function refresh() {
  const stock = await (await fetch('/api/stock')).json();
  const list = document.getElementById('stock'); list.replaceChildren();
  for (const [item, qty] of Object.entries(stock)) {
    const li = document.createElement('li'); li.textContent = `${item}: ${qty}`;
    const b = document.createElement('button'); b.textContent = `buy one ${item}`;
    b.onclick = async () => {
      const r = await fetch('/api/orders', {method: 'POST', body: JSON.stringify({item, qty: 1})});
      const o = await r.json();
      const log = document.getElementById('log');
      log.textContent = r.ok ? `ordered ${item} (payment ${o.payment})` : o.error;
      refresh();
    };
    li.append(b); list.append(li);
  }
}
refresh();
</script></body></html>"""


def page() -> str:
    return PAGE.replace("INSTANCE", os.environ.get("CORRAL_INSTANCE", "web"))


def handle(method: str, path: str, body: Any) -> tuple[int, Any]:
    if method == "GET" and path == "/ready":
        return 200, {"ready": True}
    if method == "GET" and path == "/api/stock":
        return 200, call("inventory", "GET", "/stock")
    if method == "GET" and path == "/api/orders":
        return 200, call("orders", "GET", "/orders")
    if method == "POST" and path == "/api/orders":
        return 201, call("orders", "POST", "/orders", body or {})
    return 404, {"error": f"no route {method} {path}"}


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve("web", handle, page)
