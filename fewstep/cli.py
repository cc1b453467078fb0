"""`fewstep` command line: one entry, subcommands imported lazily so --help is instant."""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def _distill(sub: argparse._SubParsersAction) -> None:
    from . import distill

    p = sub.add_parser("distill",
                       help="train a few-step student from a YAML recipe (same as python -m fewstep.distill)")
    distill.add_arguments(p)
    p.set_defaults(func=distill.run)


def _demo(sub: argparse._SubParsersAction) -> None:
    from . import demo

    p = sub.add_parser("demo",
                       help="distil the bundled teacher on this machine in minutes and compare with the teacher")
    demo.add_arguments(p)
    p.set_defaults(func=demo.run)


def _evaluation(sub: argparse._SubParsersAction) -> None:
    from .evaluation import cli as evaluation_cli

    def with_run_dirs(runner: Callable) -> Callable:
        def run(args: argparse.Namespace) -> int:
            from .runs import generators_for_run

            return runner(args, load_generators=generators_for_run)
        return run

    evaluation_cli.add_fid_parser(sub).set_defaults(func=with_run_dirs(evaluation_cli.run_fid))
    evaluation_cli.add_bench_parser(sub).set_defaults(func=with_run_dirs(evaluation_cli.run_bench))


def _cache(sub: argparse._SubParsersAction) -> None:
    from .data import cache

    parser = cache.add_cache_parser(sub)
    if isinstance(parser, argparse.ArgumentParser):
        parser.set_defaults(func=cache.run_cache)


def _export(sub: argparse._SubParsersAction) -> None:
    from .export import cli as export_cli

    export_cli.add_export_parser(sub)
    export_cli.add_sample_parser(sub)


SUBCOMMANDS = [_distill, _demo, _evaluation, _cache, _export]


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
