"""Training entry point.

    accelerate launch -m fewstep.distill --config configs/cd_toy.yaml [key=value ...] [--resume latest]
    python -m fewstep.distill --config ...          (single process, CPU or one GPU)
"""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", required=True, help="YAML recipe (see configs/)")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder of run.output_dir")
    parser.add_argument("overrides", nargs="*",
                        help="key=value overrides, e.g. run.max_steps=100 optimizers.student.lr=1e-5")
    return parser


def run(args: argparse.Namespace) -> int:
    from .build import build_setup
    from .training.trainer import DivergenceError, Trainer, make_accelerator

    try:
        config = load_config(args.config, args.overrides)
        accelerator = make_accelerator(config.run)
        setup = build_setup(config, accelerator.device, accelerator.process_index, accelerator.num_processes,
                            initialise=args.resume is None)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    trainer = Trainer(setup.objective, setup.data, config.run, config.optimizers, config.to_dict(), accelerator)
    try:
        trainer.fit(resume=args.resume)
    except DivergenceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="fewstep.distill", description=__doc__,
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
