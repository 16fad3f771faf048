"""The ``workgen`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import devnet, exeunit, provider, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workgen", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    exeunit.add_parser(commands)
    devnet.add_parser(commands)
    provider.add_parser(commands)
    run.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
