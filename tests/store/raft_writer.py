"""The kill -9 victim for the Raft store: start a whole 3-node cluster in this process, put keys
through the leader one txn at a time, print each ack.

Usage: python raft_writer.py BASE_DIR PORT1,PORT2,PORT3 PREFIX COUNT — prints "<i> <revision>"
per write, flushed, only after the txn returned (committed: fsynced on a majority).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from corral.consensus.config import FAST
from corral.store.base import put
from corral.store.raft import open_local_cluster


async def main(base: Path, ports: list[int], prefix: str, count: int) -> None:
    async with open_local_cluster(base, ports, FAST) as (leader, _stores):
        for i in range(count):
            revision = await put(leader, f"{prefix}{i}", str(i).encode())
            sys.stdout.write(f"{i} {revision}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    ports = [int(p) for p in sys.argv[2].split(",")]
    asyncio.run(main(Path(sys.argv[1]), ports, sys.argv[3], int(sys.argv[4])))
