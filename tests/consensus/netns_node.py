"""One Raft store node as a process, for the network-namespace tests: the replicated Store
behind a tiny HTTP API that a history-recording client drives.

Usage: python netns_node.py ID PEERS DATA_DIR PRESET
  PEERS: ``1=10.77.0.1,2=10.77.0.2,…`` (Raft on port 7000, the HTTP API on 8000 of each)

POST /op ``{kind: put|get|cas, key, value?, expected?}`` → 200 ``{result}``; 503 with the
error when the store refused or could not tell (no quorum, no leader, timeout).
The node also keeps ``DATA_DIR/role.json`` (``{leader, term}``) current, so the test, outside
the namespaces, knows who leads without a network path.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from aiohttp import web

from corral.consensus.config import PRESETS
from corral.errors import CorralError
from corral.store.base import Compare, Put
from corral.store.raft import RaftStore

RAFT_PORT, HTTP_PORT = 7000, 8000


async def main(node_id: int, peers_spec: str, data: Path, preset: str) -> None:
    hosts = dict(item.split("=") for item in peers_spec.split(","))
    peers = {int(i): f"{host}:{RAFT_PORT}" for i, host in hosts.items()}
    store = await RaftStore.open(node_id, peers, data, PRESETS[preset], request_timeout=2.0)

    async def op(request: web.Request) -> web.Response:
        body = await request.json()
        key = body["key"]
        try:
            if body["kind"] == "get":
                kv = await store.get(key)
                result: object = kv.value.decode() if kv is not None else None
            elif body["kind"] == "put":
                await store.txn([], [Put(key, body["value"].encode())])
                result = None
            else:
                expected = body["expected"].encode()
                txn = await store.txn(
                    [Compare(key, "value", "==", expected)], [Put(key, body["value"].encode())]
                )
                result = txn.succeeded
        except CorralError as exc:
            return web.json_response(exc.to_dict(), status=503)
        return web.json_response({"result": result})

    app = web.Application()
    app.router.add_post("/op", op)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, hosts[str(node_id)], HTTP_PORT).start()
    print("READY", flush=True)
    last: tuple[bool, int] | None = None
    while True:  # publish the role for the test (outside the namespaces) to read
        now = (store.is_leader, store.node.status().term)
        if now != last:
            staged = data / "role.json.new"
            staged.write_text(json.dumps({"leader": now[0], "term": now[1]}))
            os.replace(staged, data / "role.json")
            last = now
        await asyncio.sleep(0.02)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]))
