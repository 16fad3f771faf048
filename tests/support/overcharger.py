"""A dishonest provider for tests: ``python overcharger.py FACTOR provider run [options]`` is
``workgen provider run [options]`` billing FACTOR times the agreed price, so requestors can be
tested against bills they must refuse. Not a product option: operators get no such knob."""

from __future__ import annotations

import sys
from functools import partial

from workgen.cli.main import main
from workgen.cli.provider import run_agent

if __name__ == "__main__":
    factor, *argv = sys.argv[1:]
    sys.exit(main(argv, handler=partial(run_agent, overcharge=float(factor))))
