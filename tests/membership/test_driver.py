"""The SWIM core driven over real UDP sockets on loopback (issue 9)."""

from __future__ import annotations

from corral.kv.testing import free_port
from corral.membership import TEST, State
from corral.membership.driver import SwimDriver
from corral.testing import until


async def test_members_joining_through_one_seed_see_each_other_and_a_silent_one_dies() -> None:
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    drivers = [
        SwimDriver(f"m{i}", a, TEST, tags={"http": f"h{i}"}) for i, a in enumerate(addresses)
    ]
    try:
        for d in drivers:
            await d.start()
        for d in drivers[1:]:
            d.join([addresses[0]])

        def alive_everywhere(names: list[str], among: list[SwimDriver]) -> bool:
            return all(
                sorted(m.name for m in d.members() if m.state == State.ALIVE) == names
                for d in among
            )

        await until(lambda: alive_everywhere(["m0", "m1", "m2"], drivers), timeout=5.0)
        assert drivers[0].swim.member("m2") is not None
        assert drivers[0].swim.member("m2").tag("http") == "h2"  # type: ignore[union-attr]
        await drivers[2].stop(leave=False)  # silent, like a crash
        gone = drivers[:2]
        await until(lambda: alive_everywhere(["m0", "m1"], gone), timeout=8.0)
        for d in gone:
            seen = d.swim.member("m2")
            assert seen is not None and seen.state in (State.SUSPECT, State.DEAD)
    finally:
        for d in drivers:
            await d.stop(leave=False)
