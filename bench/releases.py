"""Release figures (issue 5), on real processes.

    .venv/bin/python bench/releases.py

- a rolling update of 4 healthy instances with min_healthy 10s, end to end (target ≤ 60 s);
- a failed rollout (the new release never passes readiness) → the previous release serving
  again, with healthy_deadline 20s (target ≤ healthy_deadline + 10 s), with no manual step.
No peer runs the same operation, so each is printed against its target.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from corral.testing import Platform

APP = """
import http.server, os, signal, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
ready = os.environ.get("BROKEN") != "1"
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if ready or self.path != "/ready" else 503)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def manifest(app: Path, version: str, broken: bool = False) -> str:
    return (
        "services:\n  web:\n"
        f"    version: '{version}'\n"
        f"    command: [{sys.executable}, {app}]\n"
        f"    env: {{BROKEN: '{1 if broken else 0}'}}\n"
        "    instances: 4\n"
        "    ports: {http: auto}\n"
        "    update: {min_healthy: 10s, healthy_deadline: 20s}\n"
        "    stop: {drain: 500ms, grace: 5s}\n"
        "    health: {readiness: {http: /ready, period: 200ms}}\n"
    )


def rollout(platform: Platform) -> dict[str, Any]:
    result: dict[str, Any] = platform.client.request("GET", "/services/web/rollout")
    return result


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        app = work / "app.py"
        app.write_text(APP)
        with Platform.start(work / "home") as platform:
            platform.apply_text(manifest(app, "1"))
            platform.wait_for(lambda: platform.ready("web") == 4, timeout=60)
            started = time.monotonic()
            platform.apply_text(manifest(app, "2"))
            platform.wait_for(lambda: rollout(platform)["state"] == "complete", timeout=120)
            rolling = time.monotonic() - started

            started = time.monotonic()
            platform.apply_text(manifest(app, "3", broken=True))

            def back() -> bool:
                history = platform.client.request("GET", "/services/web/releases")
                return bool(history[-1]["changes"] == "copy of v2" and platform.ready("web") == 4)

            platform.wait_for(back, timeout=120)
            recovered = time.monotonic() - started
    print(f"{'figure':<52}{'measured':>10}{'target':>9}{'ratio':>7}")
    print(
        f"{'rolling update, 4 instances, min_healthy 10s':<52}{rolling:>9.1f}s{60:>8}s"
        f"{rolling / 60:>7.2f}"
    )
    print(
        f"{'failed rollout → previous release serving':<52}{recovered:>9.1f}s{30:>8}s"
        f"{recovered / 30:>7.2f}"
    )


if __name__ == "__main__":
    main()
