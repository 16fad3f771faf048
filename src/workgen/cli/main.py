"""The ``workgen`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .._aio import Signalled, signals_as_interrupt
from . import devnet, exeunit, image, provider, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workgen", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    exeunit.add_parser(commands)
    devnet.add_parser(commands)
    provider.add_parser(commands)
    image.add_parser(commands)
    run.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None,
         handler: Callable[[argparse.Namespace], int] | None = None) -> int:
    """Runs a command; its exit code is 2 for bad arguments or input, 130 after Ctrl-C and 143
    after SIGTERM (which stops every command as Ctrl-C does, cleaning up the same way).
    ``handler`` runs the parsed command instead of its own (for programs built on the CLI)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with signals_as_interrupt():
            code: int = (handler or args.handler)(args)
    except Signalled as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
