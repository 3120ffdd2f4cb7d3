"""The ``histo`` command's root parser; each command family registers its own
subcommands (``run_commands``, ``model_commands``, ``predict_command``,
``registry_commands``, ``data_commands``), and ``checks`` holds the exit codes and the
checks made before any work. Prefect and torch are imported inside the commands that
need them, so ``histo --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from histo_cli import data_commands, model_commands, predict_command, registry_commands, run_commands
from histo_cli.checks import ENVIRONMENT, OK, REJECTED, USAGE, exit_code

__all__ = ["ENVIRONMENT", "OK", "REJECTED", "USAGE", "build_parser", "exit_code", "main"]

# A constant, not the module docstring: ``python -OO`` (PYTHONOPTIMIZE=2, set in some
# container images) strips docstrings, and ``histo --help`` must still answer.
DESCRIPTION = ("Keep a tumour-patch classifier fresh: validate labelled patches, train, compare with the "
               "model in service and promote only a better one. Start with `histo demo` (no cloud account).")


def build_parser() -> argparse.ArgumentParser:
    from histo_core import __version__

    parser = argparse.ArgumentParser(prog="histo", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"histo-retrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run_commands.register_demo_and_retrain(sub)
    model_commands.register(sub)
    predict_command.register(sub)
    run_commands.register_serve(sub)
    registry_commands.register(sub)
    data_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        known = exit_code(exc)
        if known is None:
            raise
        # Our errors say what is wrong and what to do; a traceback would bury that.
        print(f"histo: error ({known[1]}): {exc}", file=sys.stderr)
        return known[0]


if __name__ == "__main__":
    sys.exit(main())
