"""`fewstep` command line: one entry, subcommands imported lazily so --help is instant."""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def _distill(sub: argparse._SubParsersAction) -> None:
    from . import distill

    p = sub.add_parser("distill", help="train a few-step student from a YAML recipe (same as python -m fewstep.distill)")
    distill.add_arguments(p)
    p.set_defaults(func=distill.run)


def _demo(sub: argparse._SubParsersAction) -> None:
    from . import demo

    p = sub.add_parser("demo", help="distil the bundled teacher on this machine in minutes and compare with the teacher")
    demo.add_arguments(p)
    p.set_defaults(func=demo.run)


def _optional(module: str, adder: str, runner: str) -> Callable[[argparse._SubParsersAction], None]:
    def add(sub: argparse._SubParsersAction) -> None:
        import importlib

        try:
            mod = importlib.import_module(module, __package__)
        except ImportError:
            return
        parser = getattr(mod, adder)(sub)
        if isinstance(parser, argparse.ArgumentParser) and parser.get_default("func") is None:
            parser.set_defaults(func=getattr(mod, runner))
    return add


SUBCOMMANDS = [
    _distill,
    _demo,
    _optional(".evaluation.cli", "add_fid_parser", "run_fid"),
    _optional(".evaluation.cli", "add_bench_parser", "run_bench"),
    _optional(".data.cache", "add_cache_parser", "run_cache"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewstep", description="Distil diffusers teachers into 1-4 step generators.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
