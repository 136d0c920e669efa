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

    Bad input (a ``ValueError``: a missing file, an unknown config key, a refused checkpoint ...) and a failed
    file operation (an ``OSError``: a full disk, a permission, a path that is a folder) are printed as one line
    naming the thing, with exit status 2, instead of a traceback; what a run finished before stays on disk. An
    interrupt (Ctrl-C) exits with 130. Anything else is a bug and keeps its traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ValueError as err:
        return _fail(args.command, str(err))
    except OSError as err:
        return _fail(args.command, describe_os_error(err))
    except KeyboardInterrupt:
        print(f"sparsezip {args.command}: interrupted; finished work is kept (an eval resumes when re-run)",
              file=sys.stderr)
        return 130


def describe_os_error(err: OSError) -> str:
    """``"<file>: <reason> (errno NAME)"``, e.g. ``runs/x/predictions.jsonl: No space left on device (ENOSPC)``."""
    import errno

    reason = err.strerror or str(err)
    name = errno.errorcode.get(err.errno) if isinstance(err.errno, int) else None
    text = f"{reason} ({name})" if name else reason
    if err.filename is None:
        return text
    target = str(err.filename) if err.filename2 is None else f"{err.filename} -> {err.filename2}"
    return f"{target}: {text}"


def _fail(command: str, message: str) -> int:
    # One line: a message spanning lines (a multi-line library error) is joined.
    print(f"sparsezip {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
