"""Where the dashboard's files are: its own `static/` and the npm libraries under `vendor/`.

The chart and graph libraries are installed from the npm registry by scripts/bootstrap.sh
(`npm ci` in `vendor/`, pinned by its package.json and lock file); nothing is copied into the
repository by hand. `CORRAL_DASHBOARD_VENDOR` may name another directory holding the same
`node_modules` (for an installed wheel built without them).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
STATIC = PACKAGE / "static"
TEMPLATES = PACKAGE / "templates"

# Public name under /static/vendor/ → file inside node_modules.
VENDOR_FILES = {
    "uPlot.esm.js": "uplot/dist/uPlot.esm.js",
    "uPlot.min.css": "uplot/dist/uPlot.min.css",
    "cytoscape.esm.min.mjs": "cytoscape/dist/cytoscape.esm.min.mjs",
}

CONTENT_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


def vendor_root() -> Path:
    override = os.environ.get("CORRAL_DASHBOARD_VENDOR")
    base = Path(override) if override else PACKAGE / "vendor"
    return base / "node_modules"


def missing_vendor() -> list[str]:
    """The vendor files that are not installed (empty when charts can be drawn)."""
    root = vendor_root()
    return [name for name, rel in sorted(VENDOR_FILES.items()) if not (root / rel).is_file()]


def resolve(path: str) -> Path | None:
    """The file behind `/static/<path>`, or None; never a file outside the two roots."""
    if path.startswith("vendor/"):
        rel = VENDOR_FILES.get(path[len("vendor/") :])
        return vendor_root() / rel if rel and (vendor_root() / rel).is_file() else None
    if "/" in path or path.startswith(".") or "\\" in path:
        return None
    candidate = STATIC / path
    return candidate if candidate.is_file() else None


def template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")
