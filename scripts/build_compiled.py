"""Compile the gateway's hot-path modules with mypyc into <venv>/corral-compiled (see
src/corral/compiled.py for how they are picked up, and why a stale build never is).

    .venv/bin/python scripts/build_compiled.py [--force]

Idempotent: does nothing when the recorded manifest matches the sources. Exits 0 even when the
build fails (no C compiler, say): the platform then runs the same modules interpreted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from corral.compiled import COMPILED, EXTENSIONS, MANIFEST, OVERLAY, current_manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args()
    try:
        import mypy.version
        from mypyc.build import mypycify
        from setuptools import Distribution, Extension  # type: ignore[import-untyped]  # no stubs
    except ImportError as missing:
        print(f"build_compiled: {missing}; the gateway runs interpreted", file=sys.stderr)
        return 0
    wanted = current_manifest(mypy.version.__version__)
    try:
        recorded = json.loads((OVERLAY / MANIFEST).read_text())
    except (OSError, ValueError):
        recorded = None
    if recorded == wanted and not args.force:
        print("build_compiled: up to date", file=sys.stderr)
        return 0
    source_root = Path(__file__).resolve().parent.parent / "src"
    paths = [
        str(Path(*package.split("."), f"{module}.py"))
        for package, modules in sorted(COMPILED.items())
        for module in modules
    ]
    print(f"build_compiled: compiling {len(paths)} modules with mypyc", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="corral-mypyc-") as tmp:
        work = Path(tmp)
        cwd = Path.cwd()
        os.chdir(source_root)  # mypyc names modules by their path from here
        try:
            extensions = mypycify(paths, opt_level="3", separate=True, target_dir=str(work / "c"))
            for package, names in sorted(EXTENSIONS.items()):
                for name in names:
                    source = str(Path(*package.split("."), f"{name}.c"))
                    extensions.append(
                        Extension(f"{package}.{name}", [source], extra_compile_args=["-O2"])
                    )
            dist = Distribution({"name": "corral-compiled", "ext_modules": extensions})
            command = dist.get_command_obj("build_ext")
            command.build_lib = str(work / "lib")
            command.build_temp = str(work / "temp")
            dist.run_command("build_ext")
        except BaseException as error:  # a failed build must not fail the bootstrap
            print(
                f"build_compiled: failed ({error}); the gateway runs interpreted", file=sys.stderr
            )
            return 0
        finally:
            os.chdir(cwd)
        staged = Path(str(OVERLAY) + ".new")
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(work / "lib", staged)
        (staged / MANIFEST).write_text(json.dumps(wanted, indent=1, sort_keys=True))
    # Swapped by renames, so a process importing meanwhile sees the old build or the new one.
    retired = Path(str(OVERLAY) + ".old")
    shutil.rmtree(retired, ignore_errors=True)
    if OVERLAY.exists():
        OVERLAY.rename(retired)
    staged.rename(OVERLAY)
    shutil.rmtree(retired, ignore_errors=True)
    print(f"build_compiled: built into {OVERLAY}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
