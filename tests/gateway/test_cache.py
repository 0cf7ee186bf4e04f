"""Response cache: what is stored, keys with Vary, freshness with the stale extensions,
byte bounds and purges."""

from __future__ import annotations

from collections.abc import Callable

from corral.gateway.cache import ResponseCache, parse_cache_control, request_bypasses_cache

HeaderLookup = Callable[[str], str | None]


def _none(name: str) -> str | None:
    return None


def _store(
    cache: ResponseCache,
    control: str | None,
    *,
    path: str = "/p",
    method: str = "GET",
    status: int = 200,
    headers: list[tuple[bytes, bytes]] | None = None,
    header: HeaderLookup = _none,
    body: bytes = b"hello",
    now: float = 0.0,
    ttl: float = 0.0,
    route: str = "r",
) -> bool:
    sent = [(b"content-type", b"text/plain"), *(headers or [])]
    if control is not None:
        sent.append((b"cache-control", control.encode()))
    entry = cache.store(
        method=method,
        host="Shop.local",
        path=path,
        query="",
        header=header,
        status=status,
        headers=sent,
        body=body,
        now=now,
        default_ttl=ttl,
        route=route,
    )
    return entry is not None


def test_cache_control_directives_are_parsed_and_unknown_ones_ignored() -> None:
    cc = parse_cache_control('max-age=60, stale-while-revalidate=30, stale-if-error="600", x')
    assert (cc.max_age, cc.stale_while_revalidate, cc.stale_if_error) == (60, 30, 600)
    assert parse_cache_control("max-age=soon").max_age == 0
    assert parse_cache_control("no-store").no_store


def test_only_cacheable_responses_are_stored() -> None:
    cache = ResponseCache()
    assert _store(cache, "max-age=60")
    assert not _store(cache, "no-store", path="/a")
    assert not _store(cache, "private, max-age=60", path="/b")
    assert not _store(cache, "max-age=60", path="/c", method="POST")
    assert not _store(cache, "max-age=60", path="/d", status=500)
    assert not _store(cache, None, path="/e")  # no lifetime, no route ttl
    assert _store(cache, None, path="/f", ttl=5.0)
    assert not _store(cache, "max-age=60", path="/g", headers=[(b"set-cookie", b"a=1")])
    assert not _store(cache, "max-age=60", path="/h", headers=[(b"vary", b"*")])


def test_a_fresh_entry_is_served_then_stale_while_revalidating_then_gone() -> None:
    cache = ResponseCache()
    _store(cache, "max-age=10, stale-while-revalidate=5, stale-if-error=100")
    hit = cache.lookup("GET", "shop.local", "/p", "", _none, 3.0)
    assert hit.state == "fresh" and hit.entry is not None and hit.entry.age(3.0) == 3
    assert cache.lookup("HEAD", "shop.local", "/p", "", _none, 3.0).state == "fresh"
    stale = cache.lookup("GET", "shop.local", "/p", "", _none, 12.0)
    assert stale.state == "stale" and stale.revalidate
    again = cache.lookup("GET", "shop.local", "/p", "", _none, 12.5)
    assert again.state == "stale" and not again.revalidate  # one refresh at a time
    assert cache.lookup("GET", "shop.local", "/p", "", _none, 20.0).state == "miss"
    # An upstream error within stale-if-error still gets the last good response.
    assert cache.lookup_on_error("GET", "shop.local", "/p", "", _none, 50.0) is not None
    assert cache.lookup_on_error("GET", "shop.local", "/p", "", _none, 200.0) is None


def test_a_refresh_that_never_stores_is_started_again_after_the_refresh_timeout() -> None:
    cache = ResponseCache(refresh_timeout=2.0)
    _store(cache, "max-age=10, stale-while-revalidate=60")
    revalidating = [
        cache.lookup("GET", "shop.local", "/p", "", _none, t).revalidate
        for t in (11.0, 11.5, 12.9, 13.1, 14.0)
    ]
    assert revalidating == [True, False, False, True, False]
    _store(cache, "max-age=10, stale-while-revalidate=60", now=14.5)  # the refresh landed
    assert cache.lookup("GET", "shop.local", "/p", "", _none, 15.0).state == "fresh"


def test_vary_keeps_one_entry_per_header_value() -> None:
    cache = ResponseCache()
    vary = [(b"vary", b"Accept-Language")]
    _store(cache, "max-age=60", headers=vary, header={"accept-language": "fr"}.get, body=b"fr")
    _store(cache, "max-age=60", headers=vary, header={"accept-language": "en"}.get, body=b"en")
    fr = cache.lookup("GET", "shop.local", "/p", "", {"accept-language": "fr"}.get, 1.0)
    assert fr.entry is not None and fr.entry.body == b"fr"
    de = cache.lookup("GET", "shop.local", "/p", "", {"accept-language": "de"}.get, 1.0)
    assert de.state == "miss"


def test_the_cache_stays_within_its_bytes_evicting_the_least_recently_used() -> None:
    cache = ResponseCache(max_bytes=2000, max_entry_bytes=1500)
    for i in range(10):
        _store(cache, "max-age=60", path=f"/{i}", body=b"x" * 500)
        cache.lookup("GET", "shop.local", "/0", "", _none, 0.0)  # keep /0 recent
        assert cache.size <= 2000
    assert cache.lookup("GET", "shop.local", "/0", "", _none, 1.0).state == "fresh"
    assert cache.lookup("GET", "shop.local", "/1", "", _none, 1.0).state == "miss"
    assert not _store(cache, "max-age=60", path="/big", body=b"x" * 1600)


def test_purges_by_route_and_prefix() -> None:
    cache = ResponseCache()
    _store(cache, "max-age=60", path="/api/a", route="api")
    _store(cache, "max-age=60", path="/api/b", route="api")
    _store(cache, "max-age=60", path="/static/c", route="static")
    assert cache.purge(prefix="/api/a") == 1
    assert cache.purge(route="api") == 1
    assert len(cache) == 1


def test_requests_that_must_not_read_the_cache() -> None:
    assert request_bypasses_cache("POST", _none)
    assert request_bypasses_cache("GET", {"cache-control": "no-cache"}.get)
    assert request_bypasses_cache("GET", {"authorization": "Bearer x"}.get)
    assert not request_bypasses_cache("GET", _none)
