"""The history-recording client of the network-namespace tests (Jepsen style): several
concurrent clients put, get and compare-and-set a few keys through random nodes, and every
operation is written as invoke + ok/fail/info with this process's monotonic clock.

Usage: python netns_client.py HOSTS SECONDS CLIENTS OUT.json
Writes are ``info`` (outcome unknown) whenever the answer is not a clear success: a timeout or
a refusal may still have been committed. Reads that fail are ``fail`` (they change nothing).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path

import aiohttp

KEYS = ["x", "y", "z"]
HTTP_PORT = 8000


async def one_client(
    client: int, hosts: list[str], until: float, rows: list[dict[str, object]]
) -> None:
    rng = random.Random(client)
    count = 0
    last_read: dict[str, str] = {}  # a cas expects what this client last read
    timeout = aiohttp.ClientTimeout(total=1.5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < until:
            count += 1
            key = rng.choice(KEYS)
            kind = rng.choice(["put", "get", "get", "cas"])
            if kind == "cas" and key not in last_read:
                kind = "get"
            row: dict[str, object] = {"client": client, "kind": kind, "key": key}
            if kind != "get":
                row["value"] = f"{client}-{count}"
            if kind == "cas":
                row["expected"] = last_read[key]
            host = rng.choice(hosts)
            row["invoke"] = time.monotonic()
            try:
                async with session.post(f"http://{host}:{HTTP_PORT}/op", json=row) as response:
                    answer = await response.json()
                    row["complete"] = time.monotonic()
                    if response.status == 200:
                        row["status"], row["result"] = "ok", answer["result"]
                        if kind == "get" and answer["result"] is not None:
                            last_read[key] = answer["result"]
                    else:
                        row["status"] = "info" if kind != "get" else "fail"
            except (aiohttp.ClientError, TimeoutError, ValueError):
                row["complete"] = time.monotonic()
                row["status"] = "info" if kind != "get" else "fail"
            rows.append(row)
            await asyncio.sleep(rng.uniform(0.005, 0.03))


async def run(hosts: list[str], seconds: float, clients: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    until = time.monotonic() + seconds
    await asyncio.gather(*(one_client(c, hosts, until, rows) for c in range(clients)))
    return rows


if __name__ == "__main__":
    history = asyncio.run(run(sys.argv[1].split(","), float(sys.argv[2]), int(sys.argv[3])))
    Path(sys.argv[4]).write_text(json.dumps(history))
