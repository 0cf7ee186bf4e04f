"""inventory — a pet: keeps the stock in SQLite under DATA_DIR, which survives restarts."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
from typing import Any

from shoplib import serve

DB = os.path.join(os.environ.get("DATA_DIR", "."), "inventory.db")
INITIAL = {"apple": 50, "pear": 30, "plum": 20}
lock = threading.Lock()


def connect() -> sqlite3.Connection:
    conn = sqlite3.connect(DB, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS stock (item TEXT PRIMARY KEY, qty INTEGER NOT NULL)")
    if conn.execute("SELECT COUNT(*) FROM stock").fetchone()[0] == 0:
        conn.executemany("INSERT INTO stock VALUES (?, ?)", sorted(INITIAL.items()))
    return conn


db = connect()


def handle(method: str, path: str, body: Any) -> tuple[int, Any]:
    if method == "GET" and path == "/ready":
        db.execute("SELECT 1").fetchone()
        return 200, {"ready": True}
    if method == "GET" and path == "/stock":
        return 200, dict(db.execute("SELECT item, qty FROM stock ORDER BY item").fetchall())
    if method == "POST" and path == "/reserve":
        item, qty = str(body.get("item", "")), int(body.get("qty", 1))
        with lock:
            row = db.execute("SELECT qty FROM stock WHERE item = ?", (item,)).fetchone()
            if row is None:
                return 404, {"error": f"no such item: {item}"}
            if row[0] < qty:
                return 409, {"error": f"only {row[0]} {item} left"}
            db.execute("UPDATE stock SET qty = qty - ? WHERE item = ?", (qty, item))
        return 200, {"item": item, "reserved": qty, "left": row[0] - qty}
    return 404, {"error": f"no route {method} {path}"}


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve("inventory", handle)
