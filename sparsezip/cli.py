"""The ``sparsezip`` console script.

Each subcommand lives in ``sparsezip/commands/<name>.py`` and exposes ``HELP: str``,
``add_arguments(parser)`` and ``run(args) -> int``. Command modules must stay import-light
(no transformers at import time) because building the parser imports all of them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module; one line per command, in the order `sparsezip --help` lists them.
COMMANDS: dict[str, str] = {
    "methods": "sparsezip.commands.methods",
    "smoke": "sparsezip.commands.smoke",
    "eval": "sparsezip.commands.eval",
    "score": "sparsezip.commands.score",
    "compare": "sparsezip.commands.compare",
    "merge": "sparsezip.commands.merge",
    "calibrate": "sparsezip.commands.calibrate",
    "report": "sparsezip.commands.report",
    "make-fixtures": "sparsezip.commands.make_fixtures",
    "train-tiny": "sparsezip.commands.train_tiny",
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="sparsezip", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the chosen subcommand; returns the exit status.

    A ``ValueError`` (bad input: a missing file, an unknown config key, ...) is printed as one clear line
    and exits with status 2, instead of a traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ValueError as err:
        print(f"sparsezip {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
