"""Releases and rollouts with real processes: rolling updates, automatic rollback, pets,
canaries, rollback, and a control plane killed in the middle of a rollout."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.testing import Platform
from tests.integration.apps import PY, write_app


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    with Platform.start(tmp_path / "home") as p:
        yield p


def web(
    app: Path,
    version: str,
    *,
    instances: int = 3,
    mode: str = "cattle",
    command: str | None = None,
    update: str = "",
) -> str:
    cmd = command or f"[{PY}, {app}]"
    return (
        "services:\n  web:\n"
        f"    mode: {mode}\n"
        f"    version: '{version}'\n"
        f"    command: {cmd}\n"
        f"    instances: {instances}\n"
        "    ports: {http: auto}\n"
        f"    update: {{min_healthy: 300ms, healthy_deadline: 20s{update}}}\n"
        "    restart: {backoff: {initial: 100ms, max: 400ms}, failed_after: 3}\n"
        "    stop: {grace: 2s, drain: 100ms}\n"
        "    health: {readiness: {http: /ready, period: 100ms}}\n"
    )


def releases_of(instances: list[dict[str, Any]]) -> list[int]:
    return sorted(i["release"] for i in instances)


def rollout_done(platform: Platform) -> bool:
    state: str = platform.client.request("GET", "/services/web/rollout")["state"]
    return state == "complete"


def test_a_rolling_update_replaces_every_instance_without_dropping_below_desired(
    platform: Platform, tmp_path: Path
) -> None:
    app = write_app(tmp_path)
    platform.apply_text(web(app, "1"))
    platform.wait_for(lambda: platform.ready("web") == 3)
    result = platform.apply_text(web(app, "2"))
    assert result["changes"] == {"web": "updated"}
    lowest = 3

    def done() -> bool:
        nonlocal lowest
        running = platform.running("web")
        lowest = min(lowest, len(running))
        rollout = platform.client.request("GET", "/services/web/rollout")
        return rollout["state"] == "complete" and releases_of(running) == [2, 2, 2]

    platform.wait_for(done, timeout=30, what="the rollout to complete")
    assert lowest >= 3  # max_unavailable 0: never fewer than desired in run
    history = platform.client.request("GET", "/services/web/releases")
    assert [(r["release"], r["outcome"]) for r in history] == [(1, "complete"), (2, "complete")]
    assert "version 1 → 2" in history[1]["changes"]


def test_a_release_that_crash_loops_is_rolled_back_automatically(
    platform: Platform, tmp_path: Path
) -> None:
    app = write_app(tmp_path)
    platform.apply_text(web(app, "1", instances=2))
    before = {
        i["id"]
        for i in platform.wait_for(
            lambda: len(platform.running("web")) == 2 and platform.running("web")
        )
    }
    platform.apply_text(web(app, "2", instances=2, command=f"[{PY}, -c, 'raise SystemExit(4)']"))

    def rolled_back() -> bool:
        history = platform.client.request("GET", "/services/web/releases")
        return len(history) == 3 and history[-1]["outcome"] == "complete"

    platform.wait_for(rolled_back, timeout=30, what="the automatic rollback")
    history = platform.client.request("GET", "/services/web/releases")
    assert (
        history[1]["outcome"].startswith("failed: ")
        and "rolled back to v1" in history[1]["outcome"]
    )
    assert history[2]["changes"] == "copy of v1" and history[2]["current"]
    # The old instances kept serving throughout and were never restarted.
    assert {i["id"] for i in platform.running("web")} == before
    reasons = " ".join(e["reason"] for e in platform.events(service="web"))
    assert "crash-loops" in reasons and "rolling back to v1" in reasons


def test_pets_are_updated_in_place_one_at_a_time_highest_ordinal_first(
    platform: Platform, tmp_path: Path
) -> None:
    app = write_app(tmp_path)
    platform.apply_text(web(app, "1", mode="pet"))
    platform.wait_for(lambda: platform.ready("web") == 3)
    ports = {i["id"]: i["port"] for i in platform.instances("web")}
    platform.apply_text(web(app, "2", mode="pet"))
    platform.wait_for(
        lambda: rollout_done(platform) and releases_of(platform.running("web")) == [2, 2, 2],
        timeout=30,
        what="all on v2",
    )
    assert {i["id"]: i["port"] for i in platform.instances("web")} == ports
    order = [
        e["subject"]
        for e in platform.events(service="web")
        if e["reason"].startswith("rollout") and e["subject"] != "web"
    ]
    assert order == ["web-2", "web-1", "web-0"], order
    for pet in ("web-0", "web-1", "web-2"):
        assert (platform.home.data_dir(pet) / "starts").read_text().split() == [pet, pet]


def test_a_canary_waits_for_promote_and_abort_returns_to_the_old_release(
    platform: Platform, tmp_path: Path
) -> None:
    app = write_app(tmp_path)
    platform.apply_text(web(app, "1", instances=2))
    platform.wait_for(lambda: platform.ready("web") == 2)
    platform.apply_text(web(app, "2", instances=2, update=", canary: 1"))
    platform.wait_for(
        lambda: releases_of(platform.running("web")) == [1, 1, 2], what="one canary beside"
    )
    rollout = platform.client.request("GET", "/services/web/rollout")
    assert "promote" in rollout["step"] or "canary" in rollout["step"]
    platform.client.request("POST", "/services/web/rollout/abort")
    platform.wait_for(
        lambda: releases_of(platform.running("web")) == [1, 1], what="the canary removed"
    )
    platform.apply_text(web(app, "3", instances=2, update=", canary: 1"))
    platform.wait_for(lambda: 4 in releases_of(platform.running("web")), what="a new canary")
    platform.client.request("POST", "/services/web/rollout/promote")
    platform.wait_for(
        lambda: releases_of(platform.running("web")) == [4, 4], timeout=30, what="promoted"
    )


def test_a_rollout_resumes_after_the_control_plane_is_killed_mid_way(tmp_path: Path) -> None:
    app = write_app(tmp_path)
    platform = Platform.launch(tmp_path / "home")
    try:
        update = ", max_surge: 1"
        platform.apply_text(web(app, "1", instances=4, update=update).replace("300ms", "1s"))
        platform.wait_for(lambda: platform.ready("web") == 4, timeout=20)
        platform.apply_text(web(app, "2", instances=4, update=update).replace("300ms", "1s"))
        platform.wait_for(lambda: 2 in releases_of(platform.running("web")), what="mid-rollout")
        platform.kill9()
        platform = platform.restart()
        # Nothing duplicated, nothing lost: exactly the 4 new instances remain.
        platform.wait_for(
            lambda: (
                releases_of(platform.instances("web")) == [2, 2, 2, 2]
                and platform.ready("web") == 4
            ),
            timeout=40,
            what="the rollout to finish after the restart",
        )
        assert rollout_done(platform)
    finally:
        platform.destroy()


def test_rollback_to_a_chosen_release_and_diff_before_apply(
    platform: Platform, tmp_path: Path
) -> None:
    app = write_app(tmp_path)
    platform.apply_text(web(app, "1", instances=1))
    platform.wait_for(lambda: platform.ready("web") == 1)
    platform.apply_text(web(app, "2", instances=1))
    platform.wait_for(lambda: releases_of(platform.running("web")) == [2], timeout=20)
    import yaml

    changed = yaml.safe_load(web(app, "3", instances=1))
    diff = platform.client.request("POST", "/diff", {"manifest": changed, "base_dir": "/"})
    assert diff["web"]["change"] == "updated" and "~ version: 2 → 3" in diff["web"]["changes"]
    result = platform.client.request("POST", "/services/web/rollback", {"to": 1})
    assert (result["release"], result["copied_from"]) == (3, 1)
    platform.wait_for(lambda: [i["release"] for i in platform.running("web")] == [3], timeout=20)
    # The desired state moved too: applying v2's file again is a visible change.
    assert platform.apply_text(web(app, "2", instances=1))["changes"] == {"web": "updated"}
    missing = platform.client
    with pytest.raises(Exception, match="no release v9"):
        missing.request("POST", "/services/web/rollback", {"to": 9})
    os.kill(platform.running("web")[0]["pid"], signal.SIGKILL)  # still self-heals after all
    platform.wait_for(lambda: platform.ready("web") == 1)


def test_a_rolling_update_through_the_gateway_fails_no_request(
    platform: Platform, tmp_path: Path
) -> None:
    import socket
    import threading
    import urllib.error
    import urllib.request

    app = write_app(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    gateway = (
        f"gateway:\n  listen: 127.0.0.1:{port}\n"
        "  routes:\n    - {name: web, match: {path_prefix: /}, service: web}\n"
    )
    platform.apply_text(web(app, "1") + gateway)
    platform.wait_for(lambda: platform.ready("web") == 3)

    def ok() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    platform.wait_for(ok, what="the gateway to serve")
    results: list[bool] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set() and len(results) < 20_000:  # bounded in count and time
            results.append(ok())

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        platform.apply_text(web(app, "2") + gateway)
        platform.wait_for(
            lambda: rollout_done(platform) and releases_of(platform.instances("web")) == [2, 2, 2],
            timeout=40,
            what="the rollout to finish",
        )
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert len(results) > 100
    assert results.count(False) == 0, f"{results.count(False)} of {len(results)} requests failed"


def test_a_release_runs_from_a_snapshot_of_its_source_and_rollback_restores_the_code(
    platform: Platform, tmp_path: Path
) -> None:
    import urllib.request

    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text(
        "import http.server, os\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        body = open('version.txt', 'rb').read()\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(body)\n"
        "    def log_message(self, *a): pass\n"
        "http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n"
    )
    (code / "version.txt").write_text("one")
    manifest = (
        "services:\n  web:\n"
        f"    source: {code}\n"
        f"    command: [{PY}, app.py]\n"
        "    ports: {http: auto}\n"
        "    update: {min_healthy: 200ms}\n"
        "    stop: {drain: 0s, grace: 2s}\n"
    )

    def served() -> str:
        running = platform.running("web")
        if len(running) != 1:
            return ""
        with urllib.request.urlopen(f"http://127.0.0.1:{running[0]['port']}/", timeout=5) as r:
            return str(r.read().decode())

    platform.apply_text(manifest)
    platform.wait_for(lambda: served() == "one")
    (code / "version.txt").write_text("two")  # the user edits the code in place
    assert served() == "one"  # the running release is a snapshot, not the live directory
    assert platform.apply_text(manifest)["changes"] == {"web": "updated"}
    platform.wait_for(lambda: rollout_done(platform) and served() == "two", timeout=20)
    assert platform.apply_text(manifest)["changes"] == {"web": "unchanged"}
    history = platform.client.request("GET", "/services/web/releases")
    assert "artifact" in history[-1]["changes"]
    platform.client.request("POST", "/services/web/rollback", {"to": 1})
    platform.wait_for(lambda: served() == "one", timeout=20)  # code travels with the release


def test_a_release_that_never_passes_readiness_is_rolled_back_at_its_healthy_deadline(
    platform: Platform, tmp_path: Path
) -> None:
    app = write_app(tmp_path)
    gate = tmp_path / "never-created"
    platform.apply_text(web(app, "1", instances=1))
    platform.wait_for(lambda: platform.ready("web") == 1)
    broken = web(app, "2", instances=1).replace("healthy_deadline: 20s", "healthy_deadline: 2s")
    broken = broken.replace("    stop:", f"    env: {{READY_FILE: {gate}}}\n    stop:")
    platform.apply_text(broken)

    def rolled_back() -> bool:
        history = platform.client.request("GET", "/services/web/releases")
        return len(history) == 3 and history[-1]["outcome"] == "complete"

    platform.wait_for(rolled_back, timeout=20, what="the rollback after healthy_deadline")
    history = platform.client.request("GET", "/services/web/releases")
    assert "healthy_deadline" in history[1]["outcome"]
    # The old instance served throughout; the never-ready one goes.
    platform.wait_for(lambda: [i["release"] for i in platform.instances("web")] == [1])
