"""``workgen run SCRIPT.py [--backend local|yagna]``: run a requestor script on a backend.

The script's ``Golem(...)`` picks its backend from ``WORKGEN_BACKEND``, which this sets. With
``--backend yagna`` and no ``YAGNA_APPKEY`` in the environment, the settings come from the
``devnet.env`` that ``workgen devnet up`` wrote (``--devnet-dir``, default: the devnet's).
"""

from __future__ import annotations

import argparse
import os
import runpy
import shlex
import sys
from pathlib import Path
from typing import Any

from ..devnet.network import default_directory


def add_parser(commands: Any) -> None:
    run = commands.add_parser("run", help="run a requestor script on a backend")
    run.add_argument("script", type=Path)
    run.add_argument("--backend", choices=("local", "yagna"), default=None,
                     help="default: $WORKGEN_BACKEND, else local")
    run.add_argument("--devnet-dir", type=Path, default=None,
                     help="where to read devnet.env for --backend yagna")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    run.set_defaults(handler=_run)


def load_env_file(path: Path) -> dict[str, str]:
    """``export NAME=value`` lines, as ``devnet.env`` holds them, with ``$NAME`` expanded as
    the shell would (its ``PATH`` line extends the ``PATH`` of the environment)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            values[name.strip()] = os.path.expandvars(" ".join(shlex.split(value)))
    return values


def _own_options(args: argparse.Namespace) -> list[str]:
    """Picks ``--backend``/``--devnet-dir`` given after the script; the rest is the script's
    (after a ``--``, everything is)."""
    rest: list[str] = []
    items = list(args.args)
    while items:
        item = items.pop(0)
        if item == "--":
            rest += items
            break
        name, eq, value = item.partition("=")
        if name in ("--backend", "--devnet-dir"):
            if not eq:
                if not items:
                    raise SystemExit(f"workgen run: {name} needs a value")
                value = items.pop(0)
            if name == "--backend":
                if value not in ("local", "yagna"):
                    raise SystemExit(f"workgen run: --backend must be local or yagna, not {value!r}")
                args.backend = value
            else:
                args.devnet_dir = Path(value)
        else:
            rest.append(item)
    return rest


def _run(args: argparse.Namespace) -> int:
    args.args = _own_options(args)
    if not args.script.is_file():
        print(f"workgen run: no such script: {args.script}", file=sys.stderr)
        return 2
    backend = args.backend or os.environ.get("WORKGEN_BACKEND", "local")
    os.environ["WORKGEN_BACKEND"] = backend
    if backend == "yagna" and not os.environ.get("YAGNA_APPKEY"):
        env_file = (args.devnet_dir or default_directory()) / "devnet.env"
        if not env_file.is_file():
            print(f"workgen run: --backend yagna needs YAGNA_APPKEY and YAGNA_API_URL, or a "
                  f"devnet ({env_file} not found: start one with 'workgen devnet up')",
                  file=sys.stderr)
            return 2
        os.environ.update(load_env_file(env_file))
    sys.argv = [str(args.script), *args.args]
    sys.path.insert(0, str(args.script.resolve().parent))
    try:
        runpy.run_path(str(args.script), run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
