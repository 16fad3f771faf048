"""``workgen exeunit run BATCH.json``: run one batch in a fresh activity, for debugging.

Prints each runtime event as it happens (``{"event": ...}``) and then each command's result
(``{"result": ...}``), one JSON object per line, in the wire format of yagna's activity API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from ..protocol.exescript import BatchFormatError, parse_batch
from ..provider.exeunit.unit import ExeUnit, ExeUnitConfig
from ..provider.runtime.channel import SandboxError
from ..provider.runtime.sandbox import Resources, find_bwrap


def add_parser(commands: Any) -> None:
    exeunit = commands.add_parser("exeunit", help="run ExeScript batches in a local execution unit")
    sub = exeunit.add_subparsers(dest="exeunit_command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run a batch (a JSON array of ExeScript commands)")
    run.add_argument("batch", type=Path, help="JSON file with the batch, or - for stdin")
    run.add_argument("--timeout", type=float, default=None, help="batch timeout in seconds")
    run.add_argument("--inet", action="store_true", help="let the sandbox reach the network")
    run.add_argument("--mem-gib", type=float, default=1.0, help="memory limit per process")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if str(args.batch) == "-" else args.batch.read_text()
        commands = parse_batch(text)
        find_bwrap()
    except (OSError, BatchFormatError, SandboxError) as exc:
        print(f"workgen exeunit: {exc}", file=sys.stderr)
        return 2
    config = ExeUnitConfig(resources=Resources(mem_gib=args.mem_gib), inet=args.inet)
    return asyncio.run(_run_batch(commands, config, args.timeout))


async def _run_batch(commands: Any, config: ExeUnitConfig, timeout: float | None) -> int:
    async with ExeUnit(config=config) as unit:
        batch_id = unit.exec(commands, timeout=timeout)
        async with unit.stream(batch_id) as events:
            async for event in events:
                _print({"event": event.to_json()})
        results = await unit.results(batch_id)
    for result in results:
        _print({"result": result.to_json()})
    return 0 if results and all(r.ok for r in results) else 1


def _print(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
