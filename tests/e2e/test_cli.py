"""The `corral` command line against a real control plane, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from corral.testing import kill_leftovers, wait_for
from tests.integration.apps import service_yaml, write_app

CORRAL = [sys.executable, "-m", "corral.cli.main"]


def corral(
    home: Path, *args: str, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CORRAL_HOME": str(home)}
    return subprocess.run(
        [*CORRAL, *args], env=env, capture_output=True, text=True, timeout=timeout, input=input
    )


@pytest.fixture
def home(tmp_path: Path) -> object:
    home = tmp_path / "home"
    yield home
    corral(home, "down", "--timeout", "20")
    kill_leftovers(home)


def test_validate_exits_0_for_a_good_manifest_and_2_with_every_problem(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("services:\n  web: {command: sleep 100}\n")
    ok = corral(tmp_path, "validate", str(good))
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "services:\n"
        "  api: {command: x, depends_on: [worker], instanses: 2}\n"
        "  worker: {command: y, depends_on: [api]}\n"
    )
    result = corral(tmp_path, "validate", str(bad))
    assert result.returncode == 2
    assert "services.api.instanses" in result.stderr and "instances" in result.stderr
    assert "api → worker → api" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_kv_quorum_without_read_your_writes_is_valid_but_warned_about(tmp_path: Path) -> None:
    manifest = tmp_path / "kv.yaml"
    manifest.write_text("services:\n  carts: {kind: kv, instances: 3, kv: {n: 3, r: 1, w: 1}}\n")
    result = corral(tmp_path, "validate", str(manifest))
    assert result.returncode == 0, result.stderr
    assert "warning: services.carts.kv" in result.stderr
    assert "not read-your-writes" in result.stderr


def test_commands_without_a_running_platform_exit_3(tmp_path: Path) -> None:
    result = corral(tmp_path / "nothing", "status")
    assert result.returncode == 3
    assert "no control plane is running" in result.stderr


def test_up_detached_then_operate_the_fleet_then_down(home: Path, tmp_path: Path) -> None:
    app = write_app(tmp_path)
    manifest = tmp_path / "shop.yaml"
    manifest.write_text(
        "services:\n"
        + service_yaml("db", app, mode="pet")
        + service_yaml("web", app, instances="{min: 1, max: 3}", extra="    depends_on: [db]\n")
        + "    env: {TOKEN: {secret: api-token}}\n"
    )
    secret_value = "tok-very-secret-123"
    # The platform is not running yet: `up -d` starts it, applies and waits until ready.
    up = corral(home, "up", str(manifest), "-d", "--timeout", "4")
    assert up.returncode == 1  # web cannot start: its secret is not set yet
    assert "web" in up.stderr
    setit = corral(home, "secret", "set", "api-token", input=secret_value)
    assert setit.returncode == 0 and secret_value not in setit.stdout
    up = corral(home, "up", str(manifest), "-d", "--timeout", "30")
    assert up.returncode == 0, up.stdout + up.stderr

    status = json.loads(corral(home, "status", "--json").stdout)
    assert {s["name"]: (s["state"], s["ready"], s["desired"]) for s in status} == {
        "db": ("run", 1, 1),
        "web": ("run", 1, 1),
    }
    ps = json.loads(corral(home, "ps", "--json").stdout)
    assert {"id", "service", "phase", "pid", "port", "node", "release", "restarts"} <= set(ps[0])
    assert corral(home, "scale", "web=3").returncode == 0
    wait_for(
        lambda: (
            sum(i["phase"] == "run" for i in json.loads(corral(home, "ps", "--json").stdout)) == 4
        ),
        timeout=20,
    )
    bad_scale = corral(home, "scale", "web=9")
    assert bad_scale.returncode == 2 and "services.web.instances" in bad_scale.stderr

    logs = corral(home, "logs", "web")
    assert logs.returncode == 0 and "| listening" in logs.stdout
    restart = corral(home, "restart", "db-0")
    assert restart.returncode == 0 and "db-0" in restart.stdout
    events = corral(home, "events", "-n", "200")
    assert "restart requested" in events.stdout
    for output in (events.stdout, corral(home, "ps").stdout, corral(home, "status").stdout):
        assert secret_value not in output

    down = corral(home, "down")
    assert down.returncode == 0, down.stderr
    assert corral(home, "status").returncode == 3


def test_up_in_the_foreground_stops_everything_on_ctrl_c(home: Path, tmp_path: Path) -> None:
    app = write_app(tmp_path)
    manifest = tmp_path / "app.yaml"
    manifest.write_text("services:\n" + service_yaml("web", app))
    env = {**os.environ, "CORRAL_HOME": str(home)}
    proc = subprocess.Popen(
        [*CORRAL, "up", str(manifest)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def web_ready() -> list[dict[str, object]] | None:
            result = corral(home, "ps", "--json")
            if result.returncode != 0:
                return None
            running = [i for i in json.loads(result.stdout) if i["phase"] == "run"]
            return running or None

        [web] = wait_for(web_ready, timeout=30)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in out
    assert corral(home, "status").returncode == 3
    pid = web["pid"]
    assert isinstance(pid, int)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_backup_and_restore_bring_back_the_platform_state(home: Path, tmp_path: Path) -> None:
    app = write_app(tmp_path)
    manifest = tmp_path / "app.yaml"
    manifest.write_text("services:\n" + service_yaml("web", app))
    assert corral(home, "up", str(manifest), "-d").returncode == 0
    assert corral(home, "secret", "set", "k", "--value", "v").returncode == 0
    snapshot = tmp_path / "backup.db"
    assert corral(home, "backup", str(snapshot)).returncode == 0
    refused = corral(home, "restore", str(snapshot))
    assert refused.returncode == 2 and "running" in refused.stderr
    assert corral(home, "down").returncode == 0

    other = tmp_path / "other-home"
    restored = corral(other, "restore", str(snapshot))
    assert restored.returncode == 0, restored.stderr
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    bad = corral(other, "restore", str(garbage))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    # The restored home knows the service and the secret; its server brings the app back.
    try:
        up = corral(other, "up", str(manifest), "-d")
        assert up.returncode == 0, up.stderr
        assert "unchanged" in up.stdout
        assert corral(other, "secret", "list").stdout.split() == ["k"]
    finally:
        corral(other, "down")
        kill_leftovers(other)
