"""The platform end to end with real processes: self-healing, dependency order, re-adoption,
limits and a real third-party pet (redis-server)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.testing import Platform, wait_for
from tests.integration.apps import PY, service_yaml, write_app


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    with Platform.start(tmp_path / "home") as p:
        yield p


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_crashed_cattle_is_replaced_by_a_new_instance_with_a_new_id_and_port(
    platform: Platform, tmp_path: Path
) -> None:
    app = write_app(tmp_path)
    platform.apply_text("services:\n" + service_yaml("web", app, instances=2))
    first = platform.wait_for(lambda: len(platform.running("web")) == 2 and platform.running("web"))
    victim = first[0]
    os.kill(victim["pid"], signal.SIGKILL)

    def replaced() -> list[dict[str, object]] | None:
        now = platform.running("web")
        ids = {i["id"] for i in now}
        return now if len(now) == 2 and victim["id"] not in ids else None

    now = platform.wait_for(replaced, what="a replacement in run")
    new = next(i for i in now if i["id"] != first[1]["id"])
    assert new["port"] != victim["port"]
    assert new["restarts"] == 1
    reasons = [e["reason"] for e in platform.events(service="web")]
    assert any("killed by SIGKILL" in r for r in reasons), reasons


def test_pet_is_restarted_in_place_with_same_id_port_and_data_dir(
    platform: Platform, tmp_path: Path
) -> None:
    app = write_app(tmp_path)
    platform.apply_text("services:\n" + service_yaml("db", app, mode="pet", instances=2))
    before = platform.wait_for(lambda: len(platform.running("db")) == 2 and platform.running("db"))
    assert sorted(i["id"] for i in before) == ["db-0", "db-1"]
    victim = next(i for i in before if i["id"] == "db-1")
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted() -> dict[str, object] | None:
        for i in platform.running("db"):
            if i["id"] == "db-1" and i["pid"] != victim["pid"]:
                return i
        return None

    after = platform.wait_for(restarted, what="db-1 restarted")
    assert after["port"] == victim["port"]
    assert after["restarts"] == 1
    assert str(after["last_exit"]).endswith("killed by SIGKILL")
    starts = (platform.home.data_dir("db-1") / "starts").read_text().split()
    assert starts == ["db-1", "db-1"]  # the same DATA_DIR saw both incarnations


def test_a_crash_loop_shows_failed_with_the_exit_reason_and_keeps_being_retried(
    platform: Platform, tmp_path: Path
) -> None:
    platform.apply_text(
        "services:\n  flaky:\n"
        f"    command: [{PY}, -c, 'import sys; sys.exit(3)']\n"
        "    restart: {backoff: {initial: 50ms, max: 200ms}, failed_after: 3}\n"
    )

    def failed() -> dict[str, object] | None:
        for i in platform.instances("flaky"):
            if i["phase"] == "failed":
                return i
        return None

    inst = platform.wait_for(failed, what="the instance to show failed")
    assert inst["last_exit"] == "exited 3"
    assert platform.services()["flaky"]["state"] == "failed"
    restarts = inst["restarts"]
    platform.wait_for(
        lambda: sum(i["restarts"] for i in platform.instances("flaky")) > restarts,
        what="another retry after failed",
    )


def test_a_command_that_cannot_start_is_reported_with_its_reason(
    platform: Platform, tmp_path: Path
) -> None:
    platform.apply_text("services:\n  ghost:\n    command: no-such-command-xyz --flag\n")

    def reported() -> str | None:
        for i in platform.instances("ghost"):
            if i["last_exit"]:
                return str(i["last_exit"])
        return None

    reason = platform.wait_for(reported)
    assert "no-such-command-xyz" in reason and "not found" in reason


def test_dependent_starts_only_once_its_dependency_is_healthy(
    platform: Platform, tmp_path: Path
) -> None:
    app = write_app(tmp_path)
    gate = tmp_path / "db-ready"
    db = service_yaml("db", app, extra=f"    env: {{READY_FILE: {gate}}}\n")
    api = service_yaml("api", app, extra="    depends_on: {db: healthy}\n")
    platform.apply_text("services:\n" + db + api)
    platform.wait_for(lambda: any(i["pid"] for i in platform.instances("db")), what="db process")
    # db runs but is not ready: api must not be started.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert platform.instances("api") == []
        time.sleep(0.05)
    assert "waiting for db (healthy)" in platform.services()["api"]["reason"]
    gate.write_text("ok")
    platform.wait_for(lambda: platform.ready("api") == 1, what="api in run")
    db_run = min(
        e["at"] for e in platform.events(service="db") if e["to"] == "run" and e["subject"] != "db"
    )
    api_created = min(e["at"] for e in platform.events(service="api") if e["subject"] != "api")
    assert api_created >= db_run


def test_killed_server_readopts_running_instances_and_learns_exits_while_down(
    tmp_path: Path,
) -> None:
    app = write_app(tmp_path)
    platform = Platform.launch(tmp_path / "home")
    try:
        platform.apply_text(
            "services:\n"
            + service_yaml("web", app, instances=2)
            + service_yaml("db", app, mode="pet")
        )
        platform.wait_for(lambda: platform.ready("web") == 2 and platform.ready("db") == 1)
        before = {i["id"]: i for i in platform.instances()}
        platform.kill9()
        # While the control plane is down one instance exits; the others keep running.
        gone = before["db-0"]
        os.kill(gone["pid"], signal.SIGKILL)
        for i in before.values():
            if i["id"] != "db-0":
                assert _alive(i["pid"]), f"{i['id']} died with the control plane"
        platform = platform.restart()
        web_after = platform.wait_for(
            lambda: platform.ready("web") == 2 and platform.running("web")
        )
        assert {i["id"]: i["pid"] for i in web_after} == {
            i["id"]: i["pid"] for i in before.values() if i["service"] == "web"
        }
        assert all(i["restarts"] == 0 for i in web_after)
        db = platform.wait_for(
            lambda: [i for i in platform.running("db") if i["pid"] != gone["pid"]] or None
        )
        assert db[0]["id"] == "db-0" and db[0]["last_exit"] == "killed by SIGKILL"
        assert len(platform.instances()) == 3  # no duplicate, no lost instance
        # Supervision of the adopted instances carried on: their probes run (none broke).
        logs = "".join(p.read_text() for p in platform.home.path.glob("server.*") if p.is_file())
        assert "probing" not in logs
    finally:
        platform.destroy()


def test_second_server_on_the_same_home_refuses_to_start(platform: Platform) -> None:
    env = {**os.environ, "CORRAL_HOME": str(platform.home.path)}
    proc = subprocess.run(
        [PY, "-m", "corral.cli.main", "server"], env=env, capture_output=True, text=True, timeout=20
    )
    assert proc.returncode == 3
    assert "another control plane" in proc.stderr


def test_memory_limit_is_enforced_and_reported(platform: Platform) -> None:
    hog = "b = []\\nwhile True: b.append(bytearray(8 << 20))"  # YAML "…" turns \\n into \n
    platform.apply_text(
        "services:\n  hog:\n"
        f'    command: [{PY}, -c, "{hog}"]\n'
        "    resources: {memory: 64Mi}\n"
        "    restart: {backoff: {initial: 5s, max: 5s}}\n"
    )

    def exited() -> str | None:
        for i in platform.instances("hog"):
            if i["last_exit"]:
                return str(i["last_exit"])
        return None

    reason = platform.wait_for(exited, timeout=20)
    assert "OOM" in reason or "memory" in reason.lower(), reason


def test_scale_and_restart_converge(platform: Platform, tmp_path: Path) -> None:
    app = write_app(tmp_path)
    platform.apply_text("services:\n" + service_yaml("web", app, instances="{min: 1, max: 3}"))
    platform.wait_for(lambda: platform.ready("web") == 1)
    platform.client.request("POST", "/services/web/scale", {"instances": 3})
    platform.wait_for(lambda: platform.ready("web") == 3, what="3 in run")
    platform.client.request("POST", "/services/web/scale", {"instances": 1})
    platform.wait_for(lambda: len(platform.instances("web")) == 1, what="scaled down to 1")
    [only] = platform.running("web")
    platform.client.request("POST", f"/instances/{only['id']}/restart")
    platform.wait_for(
        lambda: any(i["pid"] != only["pid"] for i in platform.running("web")), what="restarted"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_redis_as_a_managed_pet_keeps_a_key_across_kill9(platform: Platform) -> None:
    redis = shutil.which("redis-server")
    platform.apply_text(
        "services:\n  cache:\n    mode: pet\n"
        f"    command: {redis} --port ${{PORT}} --dir ${{DATA_DIR}} --appendonly yes "
        "--appendfsync always --save ''\n"
        "    ports: {redis: auto}\n"
        "    health: {readiness: {tcp: redis, period: 100ms}}\n"
        "    restart: {backoff: {initial: 100ms}}\n"
    )
    [inst] = platform.wait_for(lambda: platform.running("cache"))

    def redis_cmd(*args: str) -> bytes:
        with socket.create_connection(("127.0.0.1", inst["port"]), timeout=5) as s:
            parts = [f"${len(a)}\r\n{a}\r\n" for a in args]
            s.sendall(f"*{len(args)}\r\n{''.join(parts)}".encode())
            return s.recv(1024)

    assert redis_cmd("SET", "order:1", "apples") == b"+OK\r\n"
    os.kill(inst["pid"], signal.SIGKILL)
    platform.wait_for(
        lambda: [i for i in platform.running("cache") if i["pid"] != inst["pid"]],
        what="redis restarted in place",
    )
    value = wait_for(lambda: redis_cmd("GET", "order:1"), timeout=10)
    assert value == b"$6\r\napples\r\n"


def test_event_stream_delivers_transitions_as_they_happen(
    platform: Platform, tmp_path: Path
) -> None:
    import json
    import threading

    seen: list[dict[str, Any]] = []
    stream = platform.client.stream("/events/stream")

    def read() -> None:
        for line in stream:
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))

    threading.Thread(target=read, daemon=True).start()
    app = write_app(tmp_path)
    platform.apply_text("services:\n" + service_yaml("web", app))
    platform.wait_for(
        lambda: any(e["subject"].startswith("web-") and e["to"] == "run" for e in seen),
        what="the instance's run transition on the stream",
    )
