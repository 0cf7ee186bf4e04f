"""Replay one simulator run: ``python -m corral.sim ENGINE --seed N [--option value ...]``.

Every engine prints the line that reproduces its run, then what happened; the exit status is
0 when the run passed its safety and liveness checks and 1 when it did not.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Callable, Sequence

from corral.sim import kv as kv_engine
from corral.sim import raft, reconcile


class _Result(typing.Protocol):
    ok: bool

    def report(self) -> str: ...


def _engine(
    options: type[typing.Any], run: Callable[[int, typing.Any], _Result]
) -> Callable[[argparse.Namespace], int]:
    """The command for one engine: options from the parsed flags, run, report, exit status."""

    def command(args: argparse.Namespace) -> int:
        fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(options)}
        result = run(args.seed, options(**fields))
        sys.stdout.write(result.report() + "\n")
        return 0 if result.ok else 1

    return command


def _flag(text: str) -> bool:
    """``bool("False")`` is True: read replay-line booleans the way people write them."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_options(parser: argparse.ArgumentParser, options: type[object]) -> None:
    defaults = options()
    hints = typing.get_type_hints(options)
    for f in dataclasses.fields(options):  # type: ignore[arg-type]  # a dataclass type
        default = getattr(defaults, f.name)
        hint = hints[f.name]
        choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=_flag if isinstance(default, bool) else type(default),
            default=default,
            choices=choices,
            help=f"default {default}",
        )


ENGINES: dict[str, tuple[type[object], Callable[[argparse.Namespace], int], str]] = {
    "reconcile": (
        reconcile.Options,
        _engine(reconcile.Options, reconcile.run),
        "planner + work queue + simulated agent",
    ),
    "raft": (
        raft.Options,
        _engine(raft.Options, raft.run),
        "Raft cluster on a faulty network and disks",
    ),
    "swim": (
        kv_engine.SwimOptions,
        _engine(kv_engine.SwimOptions, kv_engine.run_swim),
        "SWIM membership on a faulty network",
    ),
    "kv": (
        kv_engine.KvOptions,
        _engine(kv_engine.KvOptions, kv_engine.run_kv),
        "AP store (sloppy quorum, DVV, hints, anti-entropy) on SWIM",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corral.sim", description=__doc__)
    engines = parser.add_subparsers(dest="engine", required=True)
    for name, (options, _, text) in sorted(ENGINES.items()):
        sub = engines.add_parser(name, help=text)
        sub.add_argument("--seed", type=int, required=True)
        _add_options(sub, options)
    args = parser.parse_args(argv)
    return ENGINES[args.engine][1](args)


if __name__ == "__main__":
    sys.exit(main())
