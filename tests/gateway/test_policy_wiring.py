"""Traffic policies in the data plane, against real upstream processes over real sockets:
breaker and fallback, rate limits, shedding by criticality, split, cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from corral.testing import until
from tests.gateway.conftest import Running, Upstreams

pytestmark = pytest.mark.timeout(30)

Factory = Callable[..., Awaitable[Running]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def get(
    session: aiohttp.ClientSession, url: str, **kwargs: Any
) -> tuple[int, dict[str, str], str]:
    async with session.get(url, **kwargs) as response:
        return response.status, dict(response.headers), await response.text()


async def test_failing_upstream_opens_the_breaker_serves_the_fallback_and_recovers_half_open(
    gateway_factory: Factory, upstreams: Upstreams, session: aiohttp.ClientSession
) -> None:
    gw = await gateway_factory(
        {
            "routes": [
                {
                    "name": "flaky",
                    "match": {"path": "/health"},
                    "upstreams": [upstreams.address("a")],
                    "retries": {"attempts": 0},
                    "outlier": {"consecutive_5xx": 1000},
                    "breaker": {
                        "window": "5s",
                        "min_calls": 4,
                        "error_rate": 50,
                        "open_time": "300ms",
                        "half_open_probes": 2,
                    },
                    "fallback": {
                        "status": 200,
                        "body": "degraded",
                        "headers": {"X-Mode": "fallback"},
                    },
                }
            ]
        }
    )
    url = f"{gw.url}/health"
    for _ in range(4):
        assert (await get(session, url))[0] == 200
    await session.post(f"http://{upstreams.address('a')}/sick")
    try:
        seen = []
        for _ in range(12):
            status, headers, body = await get(session, url)
            seen.append(body)
            if body == "degraded":
                assert status == 200 and headers["X-Mode"] == "fallback"
                break
        assert seen[-1] == "degraded", seen  # the breaker opened: the fallback answers
        assert "health" in seen  # real 503s went through until then
        # While open the upstream is not asked: still the fallback, though it is still sick.
        assert (await get(session, url))[2] == "degraded"
    finally:
        await session.post(f"http://{upstreams.address('a')}/well")

    async def healthy() -> bool:
        return (await get(session, url))[2] == "health"

    deadline = time.monotonic() + 5
    while not await healthy():  # open time passes; half-open probes succeed; closed again
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    for _ in range(3):
        assert (await get(session, url))[2] == "health"
    metrics = gw.gw.metrics
    await until(lambda: metrics.breaker_states.get("flaky|static:flaky") == "closed")
    transitions = metrics.breaker_transitions
    for state in ("open", "half_open", "closed"):
        assert transitions.get(f"flaky|static:flaky|{state}", 0) >= 1, transitions
    assert "corral_gateway_breaker_transitions_total" in metrics.render()


async def test_burst_over_a_rate_limit_gets_429_with_ratelimit_headers(
    gateway_factory: Factory, upstreams: Upstreams, session: aiohttp.ClientSession
) -> None:
    gw = await gateway_factory(
        {
            "policies": {"rate_limits": {"per-client": {"rate": 5, "burst": 5}}},
            "routes": [
                {
                    "name": "api",
                    "upstreams": [upstreams.address("a")],
                    "rate_limits": ["per-client"],
                },
                {
                    "name": "free",
                    "match": {"path_prefix": "/free"},
                    "upstreams": [upstreams.address("a")],
                },
            ],
        }
    )
    results = [await get(session, f"{gw.url}/echo") for _ in range(10)]
    allowed = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 429]
    assert len(allowed) == 5 and len(refused) == 5, [r[0] for r in results]
    assert [int(h["RateLimit-Remaining"]) for _, h, _ in allowed] == [4, 3, 2, 1, 0]
    for _, headers, _ in results:
        assert headers["RateLimit-Limit"] == "5"
    for _, headers, body in refused:
        assert int(headers["Retry-After"]) >= 1
        assert headers["RateLimit-Remaining"] == "0"
        assert int(headers["RateLimit-Reset"]) >= 1
        assert "rate limit" in body
    # A route without policies is untouched.
    status, headers, _ = await get(session, f"{gw.url}/free")
    assert status == 200 and "RateLimit-Limit" not in headers
    assert gw.gw.metrics.policy_counts[("api", "rate_limited")] == 5


async def test_overload_sheds_best_effort_before_critical(
    gateway_factory: Factory, upstreams: Upstreams
) -> None:
    slow = {"path_prefix": "/slow"}
    gw = await gateway_factory(
        {
            "policies": {
                "concurrency": {
                    "svc": {
                        "max_in_flight": 2,
                        "queue": 6,
                        "queue_timeout": "5s",
                        "scope": "service",
                    }
                }
            },
            "routes": [
                {
                    "name": "checkout",
                    "service": "svc",
                    "match": {**slow, "headers": {"x-tier": "critical"}},
                    "criticality": "critical",
                    "concurrency": ["svc"],
                },
                {
                    "name": "recommend",
                    "service": "svc",
                    "match": slow,
                    "criticality": "best_effort",
                    "concurrency": ["svc"],
                },
            ],
        },
        mode="platform",
    )
    gw.gw.set_endpoints("svc", [(upstreams.address("a"), 1)])
    policies = gw.gw.policies
    assert policies is not None
    limiter = policies.concurrency["svc@service:svc"][1]

    async def one(session: aiohttp.ClientSession, critical: bool) -> tuple[bool, int, str]:
        headers = {"x-tier": "critical"} if critical else {}
        async with session.get(f"{gw.url}/slow?s=0.3", headers=headers) as response:
            await response.read()
            return critical, response.status, response.headers.get("Retry-After", "")

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        best_effort = [asyncio.create_task(one(session, False)) for _ in range(6)]
        await until(lambda: limiter.in_flight == 2 and limiter.queued == 4)
        critical = [asyncio.create_task(one(session, True)) for _ in range(6)]
        results = await asyncio.gather(*best_effort, *critical)
    crit = [status for is_critical, status, _ in results if is_critical]
    be = [status for is_critical, status, _ in results if not is_critical]
    assert crit == [200] * 6, crit  # critical displaced best-effort waiters
    assert sorted(be) == [200, 200, 503, 503, 503, 503], be
    assert all(retry == "1" for _, status, retry in results if status == 503)


async def test_split_follows_weights_keeps_users_sticky_and_honours_canary_header(
    gateway_factory: Factory, upstreams: Upstreams
) -> None:
    gw = await gateway_factory(
        {
            "routes": [
                {
                    "name": "shop",
                    "service": "a",
                    "split": {
                        "to": [{"service": "b", "weight": 30}, {"service": "a", "weight": 70}],
                        "sticky_on": "header:x-user",
                        "targets": [{"header": "X-Canary", "value": "1", "to": "b"}],
                    },
                }
            ]
        },
        mode="platform",
    )
    gw.gw.set_endpoints("a", [(upstreams.address("a"), 1)])
    gw.gw.set_endpoints("b", [(upstreams.address("b"), 1)])
    async with aiohttp.ClientSession() as session:

        async def name(user: str, **headers: str) -> str:
            async with session.get(f"{gw.url}/echo", headers={"x-user": user, **headers}) as r:
                return str((await r.json())["name"])

        first = {f"u{i}": await name(f"u{i}") for i in range(300)}
        for user in list(first)[:60]:
            assert await name(user) == first[user]  # sticky: the same side every time
        share = sum(1 for n in first.values() if n == "b") / len(first)
        assert 0.22 <= share <= 0.38, share
        on_a = [u for u, n in first.items() if n == "a"][:5]
        for user in on_a:
            assert await name(user, **{"X-Canary": "1"}) == "b"  # targeting beats the weights


async def test_cache_serves_fresh_hits_refetches_after_expiry_and_serves_stale_on_error(
    gateway_factory: Factory, cache_upstream: str, session: aiohttp.ClientSession
) -> None:
    gw = await gateway_factory(
        {
            "routes": [
                {
                    "name": "items",
                    "upstreams": [cache_upstream],
                    "retries": {"attempts": 0},
                    "outlier": {"consecutive_5xx": 1000},
                    "cache": {"ttl": "10s"},
                }
            ]
        }
    )
    url = f"{gw.url}/item"
    status, headers, body = await get(session, url)
    assert (status, body) == (200, "fetch 1") and "X-Cache" not in headers
    status, headers, body = await get(session, url)
    assert (status, body, headers["X-Cache"]) == (200, "fetch 1", "HIT")  # no upstream call
    assert "Age" in headers
    async with session.head(url) as response:
        assert response.status == 200 and response.headers["X-Cache"] == "HIT"
    assert (await get(session, f"{url}?other=1"))[2] == "fetch 2"  # the query is in the key
    await asyncio.sleep(1.05)  # max-age=1 from the response beats the route's ttl
    status, headers, body = await get(session, url)
    assert (status, body) == (200, "fetch 3") and "X-Cache" not in headers
    await session.post(f"http://{cache_upstream}/fail")
    await asyncio.sleep(1.05)
    status, headers, body = await get(session, url)
    assert (status, body, headers["X-Cache"]) == (200, "fetch 3", "STALE")  # stale-if-error
    assert (await get(session, f"{url}?new=1"))[0] == 500  # nothing stale to serve there
    counts = gw.gw.metrics.policy_counts
    assert counts[("items", "cache_hit")] == 2 and counts[("items", "cache_stale")] == 1


async def test_stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background(
    gateway_factory: Factory, cache_upstream: str, session: aiohttp.ClientSession
) -> None:
    gw = await gateway_factory(
        {"routes": [{"name": "swr", "upstreams": [cache_upstream], "cache": {"ttl": "0s"}}]}
    )
    url = f"{gw.url}/swr?delay=0.2"
    fr = {"Accept-Language": "fr"}
    assert (await get(session, url, headers=fr))[2] == "swr 1 fr"  # a miss: fetched
    # Stale at once (max-age=0): a burst is answered from the cache without waiting, and
    # only one background refresh goes upstream.
    started = time.monotonic()
    burst = await asyncio.gather(*(get(session, url, headers=fr) for _ in range(5)))
    assert time.monotonic() - started < 0.2
    assert [(b, h["X-Cache"]) for _, h, b in burst] == [("swr 1 fr", "UPDATING")] * 5
    counts = gw.gw.metrics.policy_counts
    await until(lambda: counts.get(("swr", "cache_refreshed")) == 1)
    _, headers, body = await get(session, url, headers=fr)
    assert (body, headers["X-Cache"]) == ("swr 2 fr", "UPDATING")  # the refreshed entry
    # Vary: another language is another entry, fetched for itself.
    _, headers, body = await get(session, url, headers={"Accept-Language": "en"})
    assert body.endswith(" en") and "X-Cache" not in headers
    policies = gw.gw.policies
    assert policies is not None and policies.cache is not None
    assert policies.purge(route="swr") == 2  # both variants
    assert (await get(session, url, headers=fr))[2].startswith("swr ")
    assert "X-Cache" not in (await get(session, f"{url}&x=1", headers=fr))[1]
