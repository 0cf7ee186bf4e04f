"""A write forwarded between AP-store nodes is forwarded at most once (issue 9 review)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import PlatformUnavailable
from corral.kv.coordinator import Quorum
from corral.kv.node import KvNode, NodeConfig
from corral.kv.ring import Ring
from corral.kv.testing import free_port
from corral.kv.wire import Coordinate, Written
from corral.testing import free_ports


async def test_a_forwarded_write_is_coordinated_by_its_receiver_not_bounced_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """n4 gets a write its forwarder thought n4 should coordinate, but n4 sees n1 (the key's
    home) up: it stands in for n1 and keeps a hint, rather than forwarding to n1 again."""
    node = KvNode(
        NodeConfig(
            "n4", tmp_path, http=f"127.0.0.1:{free_ports(1)[0]}", peer=f"127.0.0.1:{free_port()}",
            quorum=Quorum(1, 1, 1), membership="test",
        )
    )  # fmt: skip
    await node.start()
    try:
        node.ring = Ring(["n1", "n2", "n3", "n4"], 16)
        key = next(
            k for k in (f"carts/k{i}" for i in range(100)) if node.ring.home(k, 1) != ("n4",)
        )
        home = node.ring.home(key, 1)[0]
        [closed] = free_ports(1)  # nobody listens: a forward there would fail
        monkeypatch.setattr(node, "healthy", lambda _node: True)
        monkeypatch.setattr(node, "address", lambda _node: f"127.0.0.1:{closed}")

        reply = await node.handle("n9", Coordinate(key, b"3 apples", [], 1))  # type: ignore[misc]  # a Coordinate's answer is awaitable
        assert isinstance(reply, Written) and reply.ok, reply
        assert node.counters.forwarded == 0
        assert node.storage.hints.hints[(home, key)].values == [b"3 apples"]

        # A client's write to the same node still goes to the key's coordinator.
        with pytest.raises(PlatformUnavailable, match=f"kv node {home}"):
            await node.put(key, b"4 apples", (), 1)
        assert node.counters.forwarded == 1
    finally:
        await node.stop()
