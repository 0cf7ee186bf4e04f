"""The kill -9 victim: open an SQLite store, put keys one txn at a time, print each ack.

Usage: python sqlite_writer.py STORE_PATH PREFIX COUNT — prints "<i> <revision>" per write,
flushed, only after the txn returned (that is, after the commit was fsynced).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from corral.store.base import put
from corral.store.sqlite import SQLiteStore


async def main(path: Path, prefix: str, count: int) -> None:
    store = await SQLiteStore.open(path)
    try:
        for i in range(count):
            revision = await put(store, f"{prefix}{i}", str(i).encode())
            sys.stdout.write(f"{i} {revision}\n")
            sys.stdout.flush()
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
