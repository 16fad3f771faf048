"""``workgen image build|add|list|tag|rm|inspect|serve``: Golem VM images in the local store.

``build`` makes a GVMI image of a directory, or of Debian packages (``--debian SUITE
--package NAME ...``, with ``mmdebstrap``), prints its hash and stores it; ``serve`` serves the
store with the image registry's HTTP API on loopback. The store is ``--store``, else
``$WORKGEN_IMAGES``, else ``~/.local/share/workgen/images``. Exit codes: 0 success; 1 the
operation failed (a build step, an unknown image); 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from ..images import (
    BuildError, DebianRecipe, GvmiError, ImageFiles, ImageMetadata, StoreError, build_image,
    read_gvmi,
)
from ..images.build import load_recipe
from ..images.registry import RegistryServer
from ._options import whole


def add_parser(commands: Any) -> None:
    image = commands.add_parser("image", help="build, store and serve Golem VM images (GVMI)",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = image.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--store", type=Path, default=None, metavar="DIR",
                       help="the image store (default: $WORKGEN_IMAGES or "
                            "~/.local/share/workgen/images)")

    build = sub.add_parser("build", parents=[where], help="build an image and store it")
    build.add_argument("directory", type=Path, nargs="?",
                       help="the image's root directory (or give --debian)")
    build.add_argument("--debian", metavar="SUITE", help="build from Debian's packages of SUITE "
                       "(bookworm, trixie, ...) with mmdebstrap")
    build.add_argument("--recipe", type=Path, default=None, metavar="FILE",
                       help="build from a recipe file (TOML: suite, packages, tags, env, "
                            "workdir, volumes, entrypoint, mirror); options add to it")
    build.add_argument("--package", "-p", action="append", default=[], metavar="NAME",
                       help="a Debian package to install (repeatable; also comma-separated)")
    build.add_argument("--mirror", default=None, metavar="URL", help="the Debian mirror")
    build.add_argument("--tag", "-t", action="append", default=[], metavar="NAME:VERSION",
                       help="tag the image (repeatable)")
    build.add_argument("--env", "-e", action="append", default=[], metavar="NAME=VALUE",
                       help="an environment variable of every command (repeatable)")
    build.add_argument("--workdir", default="", metavar="PATH",
                       help="the working directory of commands (default: /)")
    build.add_argument("--volume", "-v", action="append", default=[], metavar="PATH",
                       help="a writable directory per activity, besides /golem/* (repeatable)")
    build.add_argument("--entrypoint", default=None, metavar="PROGRAM",
                       help="the image's entrypoint")
    build.add_argument("--output", "-o", type=Path, default=None, metavar="FILE",
                       help="also write the image to FILE")
    build.set_defaults(handler=_build)

    add = sub.add_parser("add", parents=[where], help="add a GVMI file to the store")
    add.add_argument("file", type=Path)
    add.add_argument("--tag", "-t", action="append", default=[], metavar="NAME:VERSION")
    add.set_defaults(handler=_add)

    listing = sub.add_parser("list", parents=[where], help="list the stored images")
    listing.add_argument("--json", action="store_true", help="one JSON object per image")
    listing.set_defaults(handler=_list)

    tag = sub.add_parser("tag", parents=[where], help="tag a stored image")
    tag.add_argument("image", help="a hash or a tag")
    tag.add_argument("tag", metavar="NAME:VERSION")
    tag.set_defaults(handler=_tag)

    rm = sub.add_parser("rm", parents=[where],
                        help="remove a tag, or an image (by hash) with its tags")
    rm.add_argument("image", nargs="+", help="a hash or a tag")
    rm.set_defaults(handler=_rm)

    inspect = sub.add_parser("inspect", parents=[where], help="show an image's metadata")
    inspect.add_argument("image", help="a hash, a tag or a GVMI file")
    inspect.set_defaults(handler=_inspect)

    serve = sub.add_parser("serve", parents=[where],
                           help="serve the store with the image registry's HTTP API")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on "
                       "(default: 127.0.0.1)")
    serve.add_argument("--port", type=whole(minimum=0, maximum=65535), default=0,
                       help="port (default: a free one, printed)")
    serve.add_argument("--verbose", action="store_true", help="log every request")
    serve.set_defaults(handler=_serve)


def _fail(message: str, code: int = 1) -> int:
    print(f"workgen image: {message}", file=sys.stderr)
    return code


def _build(args: argparse.Namespace) -> int:
    packages = tuple(p for item in args.package for p in item.split(",") if p)
    sources = [x for x in (args.directory, args.debian, args.recipe) if x is not None]
    if len(sources) != 1:
        return _fail("give one of a directory, --debian SUITE and --recipe FILE", 2)
    if packages and args.debian is None and args.recipe is None:
        return _fail("--package needs --debian or --recipe", 2)
    tags = list(args.tag)
    try:
        env, volumes = tuple(args.env), tuple(args.volume)
        workdir, entrypoint = args.workdir, args.entrypoint
        source: Path | DebianRecipe
        if args.recipe is not None:
            loaded = load_recipe(args.recipe)
            base = loaded.metadata
            env, volumes = base.env + env, base.volumes + volumes
            workdir = workdir or base.working_dir
            entrypoint = entrypoint or (base.entrypoint[0] if base.entrypoint else None)
            tags = [*loaded.tags, *tags]
            source = dataclasses.replace(loaded.recipe,
                                         packages=loaded.recipe.packages + packages)
        elif args.debian is not None:
            source = DebianRecipe(args.debian, packages, mirror=args.mirror)
        else:
            source = args.directory
        metadata = ImageMetadata(env=env, working_dir=workdir, volumes=volumes,
                                 entrypoint=(entrypoint,) if entrypoint else ())
    except (GvmiError, BuildError, StoreError) as exc:
        return _fail(str(exc), 2)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        built = build_image(source, metadata, tags=tags, store=ImageFiles(args.store),
                            output=args.output, log=log)
    except StoreError as exc:
        return _fail(str(exc), 2)
    except BuildError as exc:
        return _fail(str(exc))
    log(f"built {built.path} ({built.size} bytes)" + (f", tagged {', '.join(tags)}"
                                                      if tags else ""))
    print(built.hash)
    return 0


def _add(args: argparse.Namespace) -> int:
    try:
        image_hash, _ = ImageFiles(args.store).add(args.file, args.tag)
    except (StoreError, GvmiError) as exc:
        return _fail(str(exc), 2)
    print(image_hash)
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        images = ImageFiles(args.store).images()
    except StoreError as exc:
        return _fail(str(exc))
    for image in images:
        if args.json:
            print(json.dumps({"hash": image.hash, "size": image.size, "tags": image.tags,
                              "path": str(image.path)}))
        else:
            print(f"{image.hash}  {image.size / (1 << 20):8.1f} MiB  {' '.join(image.tags)}")
    return 0


def _tag(args: argparse.Namespace) -> int:
    try:
        ImageFiles(args.store).tag(args.image, args.tag)
    except StoreError as exc:
        return _fail(str(exc))
    return 0


def _rm(args: argparse.Namespace) -> int:
    store = ImageFiles(args.store)
    code = 0
    for name in args.image:
        try:
            store.remove(name)
        except StoreError as exc:
            code = _fail(str(exc))
    return code


def _inspect(args: argparse.Namespace) -> int:
    store = ImageFiles(args.store)
    found = store.resolve(args.image)
    path = (store.path_of(found) if found else None) or Path(args.image)
    try:
        info = read_gvmi(path)
    except FileNotFoundError:
        return _fail(f"no image {args.image!r} in the store at {store.root}, nor such a file")
    except (OSError, GvmiError) as exc:
        return _fail(f"{path}: {exc}")
    print(json.dumps({"path": str(path), "size": info.file_bytes,
                      "squashfs_bytes": info.squashfs_bytes,
                      "metadata": info.metadata.to_json()}, indent=2))
    return 0


def _serve(args: argparse.Namespace) -> int:
    store = ImageFiles(args.store)
    try:
        server = RegistryServer(store, host=args.host, port=args.port, verbose=args.verbose)
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc}")
    print(f"serving {store.root} at {server.url}", flush=True)
    print(f"export GOLEM_REGISTRY_URL={server.url}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0
