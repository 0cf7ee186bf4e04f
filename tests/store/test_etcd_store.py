"""The etcd Store: the foundation's contract suite, unchanged, against a real etcd (Debian's
etcd-server) started per test on free ports in tmp_path; then what only an external, clustered
store has: namespaces, failover across the listed endpoints, a clear error when etcd is gone,
and the whole control plane (`corral up`) running on it."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from corral.errors import PlatformUnavailable, UserError
from corral.store.base import Store, put
from corral.store.etcd import EtcdStore, EtcdUnavailable, parse_url
from corral.testing import free_ports
from tests.store.contract import StoreContract, StoreFactory, take

pytestmark = pytest.mark.skipif(
    shutil.which("etcd") is None, reason="the etcd binary is absent (Debian: etcd-server)"
)

# The kill -9 victim: put keys one txn at a time, print "<i> <revision>" after each ack.
WRITER = """
import asyncio, sys
from corral.store.base import put
from corral.store.etcd import EtcdStore

async def main(url, prefix, count):
    store = await EtcdStore.open(url)
    for i in range(count):
        revision = await put(store, f"{prefix}{i}", str(i).encode())
        sys.stdout.write(f"{i} {revision}\\n")
        sys.stdout.flush()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


NAMESPACES = itertools.count()


@dataclass
class Member:
    name: str
    client: int
    peer: int
    data: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client}"


class EtcdCluster:
    """1 or 3 etcd processes on loopback; fast heartbeats so elections take well under 1 s."""

    def __init__(self, base: Path, size: int = 1) -> None:
        ports = free_ports(2 * size)
        self.members = [
            Member(f"e{i}", ports[2 * i], ports[2 * i + 1], base / f"e{i}") for i in range(size)
        ]
        self.initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer}" for m in self.members)

    def url(self, namespace: str = "") -> str:
        return "etcd://" + ",".join(m.address for m in self.members) + namespace

    def start(self, member: Member) -> None:
        state = "existing" if member.data.exists() else "new"
        member.proc = subprocess.Popen(
            [
                "etcd",
                f"--name={member.name}",
                f"--data-dir={member.data}",
                f"--listen-client-urls=http://{member.address}",
                f"--advertise-client-urls=http://{member.address}",
                f"--listen-peer-urls=http://127.0.0.1:{member.peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{member.peer}",
                f"--initial-cluster={self.initial}",
                f"--initial-cluster-state={state}",
                "--heartbeat-interval=50",
                "--election-timeout=500",
                "--max-txn-ops=1024",  # etcd's default 128 is too small; README says so
                "--log-level=error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start_all(self) -> None:
        for member in self.members:
            self.start(member)
        deadline = time.monotonic() + 20
        while not all(self.serving(m) for m in self.members):
            for m in self.members:
                assert m.proc is not None and m.proc.poll() is None, f"etcd {m.name} exited"
            assert time.monotonic() < deadline, "etcd did not start within 20 s"
            time.sleep(0.02)

    def serving(self, member: Member) -> bool:
        request = urllib.request.Request(
            f"http://{member.address}/v3/kv/range", data=b'{"key":"AA=="}', method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def is_leader(self, member: Member) -> bool:
        request = urllib.request.Request(
            f"http://{member.address}/v3/maintenance/status", data=b"{}", method="POST"
        )
        with urllib.request.urlopen(request, timeout=2) as response:
            status = json.loads(response.read())
        return bool(status["leader"] == status["header"]["member_id"])

    def kill(self, member: Member) -> None:
        if member.proc is not None and member.proc.poll() is None:
            member.proc.kill()
            member.proc.wait()
        member.proc = None

    def stop(self) -> None:
        for member in self.members:
            self.kill(member)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path / "etcd")
    cluster.start_all()
    try:
        yield cluster
    finally:
        cluster.stop()


class EtcdFactory:
    def __init__(self, url: str) -> None:
        self.url = url

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Store]:
        store: Store = await EtcdStore.open(self.url)  # the Protocol conformance check
        try:
            yield store
        finally:
            await store.close()

    def writer_command(self, prefix: str, count: int) -> list[str]:
        return [sys.executable, "-c", WRITER, self.url, prefix, str(count)]


@pytest.fixture(scope="module")
def shared_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    cluster.start_all()
    try:
        yield cluster
    finally:
        cluster.stop()


class TestEtcdStore(StoreContract):
    # One etcd per module (per xdist worker), each test in a namespace of its own: a fresh,
    # empty store. Tests in a worker run one at a time and leave no lease behind, so the
    # cluster-wide revision moves only under the running test, as the contract expects.
    @pytest.fixture
    def store_factory(self, shared_etcd: EtcdCluster) -> StoreFactory:
        return EtcdFactory(shared_etcd.url(f"/contract-{next(NAMESPACES)}"))


# -- what only an external store has ------------------------------------------------------


def test_store_urls_list_endpoints_and_an_optional_namespace() -> None:
    assert parse_url("etcd://10.0.0.1:2379,h2:2380/corral/") == (
        ["http://10.0.0.1:2379", "http://h2:2380"],
        "/corral",
    )
    assert parse_url("etcd://127.0.0.1:2379") == (["http://127.0.0.1:2379"], "")
    for bad in ["http://h:2379", "etcd://h", "etcd://h:x", "etcd://h:2379?tls=1"]:
        with pytest.raises(UserError) as caught:
            parse_url(bad)
        assert "etcd://HOST:PORT" in caught.value.hint


async def test_platforms_in_different_namespaces_share_a_cluster_without_seeing_each_other(
    etcd: EtcdCluster,
) -> None:
    one = await EtcdStore.open(etcd.url("/one"))
    two = await EtcdStore.open(etcd.url("/two"))
    try:
        events = two.watch("/")
        await put(one, "/services/web", b"one's")
        rev = await put(two, "/services/web", b"two's")
        assert [(kv.key, kv.value) for kv in (await one.range("")).kvs] == [
            ("/services/web", b"one's")
        ]
        (event,) = await take(events, 1)
        assert (event.kv.key, event.kv.value, event.kv.mod_revision) == (
            "/services/web",
            b"two's",
            rev,
        )
    finally:
        await one.close()
        await two.close()


async def test_opening_a_namespace_leaves_a_sibling_prefix_leased_keys_alone(
    etcd: EtcdCluster,
) -> None:
    # Another application (not Corral) holds "/other-app/…" under a 2 s lease it keeps alive;
    # a platform opened at "/other" shares the prefix string but must not revoke that lease.
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    endpoint = f"http://{etcd.members[0].address}"
    async with aiohttp.ClientSession() as http:

        async def call(path: str, body: dict[str, object]) -> dict[str, object]:
            async with http.post(endpoint + path, json=body) as response:
                assert response.status == 200, await response.text()
                reply: dict[str, object] = await response.json()
                return reply

        lease = (await call("/v3/lease/grant", {"TTL": 2}))["ID"]
        await call("/v3/kv/put", {"key": b64("/other-app/x"), "value": b64("v"), "lease": lease})
        store = await EtcdStore.open(etcd.url("/other"))
        try:
            deadline = time.monotonic() + 3.0  # past the store's reaper deadline (2 s)
            while time.monotonic() < deadline:
                await call("/v3/lease/keepalive", {"ID": lease})
                await asyncio.sleep(0.3)
            kept = await call("/v3/kv/range", {"key": b64("/other-app/x")})
            assert kept.get("kvs"), "the other application's leased key was deleted"
        finally:
            await store.close()
            await call("/v3/lease/revoke", {"ID": lease})


async def test_unreachable_etcd_is_a_platform_unavailable_error_naming_the_address() -> None:
    (port,) = free_ports(1)
    started = time.monotonic()
    with pytest.raises(PlatformUnavailable) as caught:
        await EtcdStore.open(f"etcd://127.0.0.1:{port}", timeout=0.5)
    assert time.monotonic() - started < 5
    assert isinstance(caught.value, EtcdUnavailable)
    assert f"127.0.0.1:{port}" in caught.value.message
    assert "CORRAL_STORE" in caught.value.hint


async def test_losing_the_member_in_use_fails_over_and_watchers_miss_nothing(
    tmp_path: Path,
) -> None:
    cluster = EtcdCluster(tmp_path / "etcd3", size=3)
    cluster.start_all()
    # The member in use is a follower: losing etcd's own leader would add an etcd election
    # (its business, not the store's) and, on a loaded machine, time out a write mid-flight.
    followers = [m for m in cluster.members if not cluster.is_leader(m)]
    cluster.members.sort(key=lambda m: m is not followers[0])
    try:
        store = await EtcdStore.open(cluster.url())
        try:
            start = (await store.range("")).revision + 1
            events = store.watch("/fo/", start)
            for i in range(5):
                await put(store, f"/fo/{i}", b"before")
            assert len(await take(events, 5)) == 5
            cluster.kill(cluster.members[0])  # the endpoint the store and the watch are using
            for i in range(5, 10):
                await put(store, f"/fo/{i}", b"after")
            seen = await take(events, 5)
            assert [e.kv.key for e in seen] == [f"/fo/{i}" for i in range(5, 10)]
            assert [e.kv.mod_revision for e in seen] == list(range(start + 5, start + 10))
        finally:
            await store.close()
    finally:
        cluster.stop()


async def test_a_watch_resumes_without_a_gap_when_etcd_restarts(etcd: EtcdCluster) -> None:
    store = await EtcdStore.open(etcd.url(), timeout=10)
    try:
        start = await put(store, "/r/0", b"0")
        events = store.watch("/r/", start)
        await take(events, 1)
        etcd.kill(etcd.members[0])
        etcd.start_all()
        revisions = [await put(store, f"/r/{i}", b"%d" % i) for i in range(1, 4)]
        seen = await take(events, 3)
        assert [e.kv.mod_revision for e in seen] == revisions == [start + 1, start + 2, start + 3]
    finally:
        await store.close()


# -- the whole control plane on etcd ------------------------------------------------------


def test_corral_up_runs_an_app_with_the_control_plane_on_etcd(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    from corral.testing import kill_leftovers
    from tests.integration.apps import service_yaml, write_app

    home = tmp_path / "home"
    url = etcd.url("/corral-test")
    env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_AUTO_INSTRUMENT": "off"}
    env.pop("CORRAL_STORE", None)
    cli = [sys.executable, "-m", "corral.cli.main"]
    manifest = tmp_path / "app.yaml"
    manifest.write_text("services:\n" + service_yaml("web", write_app(tmp_path)))

    def corral(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, *args], env=env, capture_output=True, text=True, timeout=90, check=False
        )

    try:
        up = corral("up", str(manifest), "-d", "--timeout", "60", "--store", url)
        assert up.returncode == 0, up.stdout + up.stderr
        assert not (home / "store.db").exists()  # the state is in etcd, not in SQLite

        async def services_in_etcd() -> list[str]:
            store = await EtcdStore.open(url)
            try:
                return [kv.key for kv in (await store.range("/")).kvs if "web" in kv.key]
            finally:
                await store.close()

        assert asyncio.run(services_in_etcd())
    finally:
        down = corral("down", "--timeout", "20")
        kill_leftovers(home)
    assert down.returncode == 0, down.stderr


async def test_a_watch_on_an_endpoint_that_went_silent_moves_on_without_a_gap(
    etcd: EtcdCluster,
) -> None:
    """An endpoint cut off without a reset (packets dropped) sends nothing and never errors:
    the watch notices the silence, finds the endpoint unanswering, and resumes elsewhere."""
    from aiohttp import web

    async def silent(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await asyncio.Event().wait()  # accepted, then nothing: what a cut-off peer looks like
        return response

    app = web.Application()
    app.router.add_post("/v3/watch", silent)
    app.router.add_post("/v3/kv/range", silent)
    runner = web.AppRunner(app, shutdown_timeout=0.1)  # its handlers never end by themselves
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    cut_off = f"http://127.0.0.1:{runner.addresses[0][1]}"
    store = await EtcdStore.open(etcd.url())
    try:
        start = await put(store, "/quiet/a", b"1")
        await put(store, "/quiet/b", b"2")
        store.watch_idle = 0.3
        store.endpoints.insert(0, cut_off)  # the watch starts on the silent endpoint
        store._current = 0
        events = store.watch("/quiet/", start)
        seen = await asyncio.wait_for(take(events, 2), 20)
        assert [e.kv.key for e in seen] == ["/quiet/a", "/quiet/b"]
    finally:
        await store.close()
        await runner.cleanup()
