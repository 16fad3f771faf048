"""``workgen exeunit run BATCH.json``: run one batch in a fresh activity, for debugging.

Prints each runtime event as it happens (``{"event": ...}``) and then each command's result
(``{"result": ...}``), one JSON object per line, in the wire format of yagna's activity API.
Exit codes: 0 every command succeeded; 1 one failed; 2 the batch (or an option) is malformed,
unreadable, or there is no sandbox to run it in; 130 after Ctrl-C and 143 after SIGTERM, once
the activity is cleaned up (its processes killed, its files removed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, BinaryIO

from .._aio import until_signalled
from ..protocol.exescript import MAX_BATCH_BYTES, BatchFormatError, Command, parse_batch
from ..provider.exeunit.unit import ExeUnit, ExeUnitConfig
from ..provider.runtime.channel import SandboxError
from ..provider.runtime.sandbox import Resources, find_bwrap
from ._options import seconds, size_gib


def add_parser(commands: Any) -> None:
    exeunit = commands.add_parser("exeunit", help="run ExeScript batches in a local execution unit")
    sub = exeunit.add_subparsers(dest="exeunit_command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run a batch (a JSON array of ExeScript commands)",
                         description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("batch", type=Path, help="JSON file with the batch, or - for stdin")
    run.add_argument("--timeout", type=seconds, default=None, metavar="SECONDS",
                     help="batch timeout in seconds")
    run.add_argument("--inet", action="store_true", help="let the sandbox reach the network")
    run.add_argument("--mem-gib", type=size_gib, default=1.0, metavar="GIB",
                     help="memory limit of the activity, all processes together (per "
                          "process without cgroups; default: 1)")
    run.add_argument("--storage-gib", type=size_gib, default=2.0, metavar="GIB",
                     help="storage of the activity: volumes and /tmp together (default: 2)")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    where = "standard input" if str(args.batch) == "-" else str(args.batch)
    try:
        commands = parse_batch(_read_batch(args.batch))
    except BatchFormatError as exc:
        print(f"workgen exeunit: {where}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"workgen exeunit: cannot read the batch from {where}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    try:
        find_bwrap()
    except SandboxError as exc:
        print(f"workgen exeunit: {exc}", file=sys.stderr)
        return 2
    config = ExeUnitConfig(resources=Resources(mem_gib=args.mem_gib, storage_gib=args.storage_gib),
                           inet=args.inet)
    return asyncio.run(until_signalled(_run_batch(commands, config, args.timeout)))


def _read_batch(path: Path) -> bytes:
    """The batch's bytes, for :func:`parse_batch` to decode: one byte more than a batch may
    have, at most, so that a huge file (or endless input) is refused without being read whole."""
    if str(path) == "-":
        return _read_at_most(sys.stdin.buffer, MAX_BATCH_BYTES + 1)
    with path.open("rb") as f:
        return _read_at_most(f, MAX_BATCH_BYTES + 1)


def _read_at_most(f: BinaryIO, limit: int) -> bytes:
    data = bytearray()
    while len(data) < limit:
        chunk = f.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def _run_batch(commands: list[Command], config: ExeUnitConfig,
                     timeout: float | None) -> int:
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
