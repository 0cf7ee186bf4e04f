"""Foundation figures (issue 2), measured on real processes on this machine.

    .venv/bin/python bench/foundation.py [--trials 10]

- exit → recorded: SIGKILL of an app → the agent has recorded its exit (event time)
- exit → replacement spawned: SIGKILL → the replacement's process started (first crash)
- `corral up examples/shop -d` → every service ready (wall time of the command)
- server kill -9 → restart → re-adopted: app restarts caused (must be 0)
The pure planner's figure is `bench/planner.py`. No peer runs these exact operations, so each
figure is printed against the issue's target (ratio < 1 is within target).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from corral.testing import Platform, kill_leftovers, wait_for

ROOT = Path(__file__).resolve().parents[1]
APP = "import http.server, os\nhttp.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), http.server.BaseHTTPRequestHandler).serve_forever()\n"  # noqa: E501  # one line of app


def _service(name: str, app: Path) -> str:
    return (
        f"  {name}:\n    command: [{sys.executable}, {app}]\n    ports: {{http: auto}}\n"
        "    health: {readiness: {tcp: http, period: 100ms}}\n"
    )


def crash_figures(trials: int, work: Path) -> tuple[list[float], list[float]]:
    app = work / "app.py"
    app.write_text(APP)
    recorded: list[float] = []
    respawned: list[float] = []
    with Platform.start(work / "home") as platform:
        manifest = "services:\n"
        for trial in range(trials):
            name = f"s{trial}"
            manifest += _service(name, app)
            platform.apply_text(manifest)
            [victim] = platform.wait_for(lambda n=name: platform.running(n))  # type: ignore[misc]
            killed_at = time.time()
            os.kill(victim["pid"], signal.SIGKILL)

            def events(n: str = name) -> list[dict[str, Any]] | None:
                evs = platform.events(service=n)
                done = [e for e in evs if "killed by SIGKILL" in e["reason"]]
                spawned = [e for e in evs if e["reason"].startswith("started pid")]
                return evs if done and len(spawned) >= 2 else None

            evs = platform.wait_for(events)
            exit_at = min(e["at"] for e in evs if "killed by SIGKILL" in e["reason"])
            spawn_at = max(e["at"] for e in evs if e["reason"].startswith("started pid"))
            recorded.append(exit_at - killed_at)
            respawned.append(spawn_at - killed_at)
    return recorded, respawned


def up_figure(work: Path) -> float:
    home = work / "shop-home"
    shop = work / "shop"
    shutil.copytree(ROOT / "examples" / "shop", shop, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = shop / "corral.yaml"
    manifest.write_text(manifest.read_text().replace("127.0.0.1:8080", "127.0.0.1:18080"))
    env = {**os.environ, "CORRAL_HOME": str(home)}
    corral = [sys.executable, "-m", "corral.cli.main"]
    started = time.monotonic()
    result = subprocess.run([*corral, "up", str(shop), "-d"], env=env, capture_output=True)
    elapsed = time.monotonic() - started
    subprocess.run([*corral, "down"], env=env, capture_output=True)
    kill_leftovers(home)
    if result.returncode != 0:
        raise SystemExit(f"corral up failed: {result.stderr.decode()}")
    return elapsed


def readopt_figure(work: Path) -> tuple[int, int]:
    app = work / "app.py"
    app.write_text(APP)
    platform = Platform.launch(work / "adopt-home")
    try:
        platform.apply_text("services:\n" + _service("a", app) + _service("b", app))
        platform.wait_for(lambda: platform.ready("a") == 1 and platform.ready("b") == 1)
        before = {i["id"]: (i["pid"], i["restarts"]) for i in platform.instances()}
        platform.kill9()
        platform = platform.restart()
        wait_for(lambda: platform.ready("a") == 1 and platform.ready("b") == 1, 15)
        after = {i["id"]: (i["pid"], i["restarts"]) for i in platform.instances()}
        restarted = sum(1 for k, v in after.items() if before.get(k) != v)
        return len(after), restarted
    finally:
        platform.destroy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        recorded, respawned = crash_figures(args.trials, work)
        up = up_figure(work)
        adopted, restarted = readopt_figure(work)
    rows = [
        ("exit → recorded (p50)", statistics.median(recorded), 0.2),
        ("exit → recorded (max)", max(recorded), 0.2),
        ("exit → replacement spawned (p50)", statistics.median(respawned), 1.0),
        ("exit → replacement spawned (max)", max(respawned), 1.0),
        ("corral up examples/shop -d", up, 10.0),
    ]
    print(f"{'figure':<36}{'measured':>12}{'target':>10}{'ratio':>8}")
    for label, value, target in rows:
        print(f"{label:<36}{value * 1000:>10.0f}ms{target * 1000:>8.0f}ms{value / target:>8.2f}")
    print(f"server kill -9 → re-adopted: {adopted} instances, {restarted} app restarts (target 0)")


if __name__ == "__main__":
    main()
