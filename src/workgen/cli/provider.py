"""``workgen provider run``: a Python provider (agent + execution unit) on a yagna node.

The node is named by the usual variables (``YAGNA_API_URL``, ``YAGNA_APPKEY``, ``GSB_URL``) or
the options; the provider's resources and prices by the options. It runs until stopped by Ctrl-C
(exit code 130) or SIGTERM (143): either ends its agreement and activities, withdraws its offer
and removes their files first. Exit code 2: a setting is missing or wrong; 1: the node failed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .._aio import until_signalled
from ..protocol.pricing import LinearPricing
from ..protocol.properties import USAGE_CPU_SEC, USAGE_DURATION_SEC
from ..provider.images import DEFAULT_MAX_CACHE_BYTES, DEFAULT_MAX_IMAGE_BYTES
from ..provider.terms import DEFAULT_ACCEPT_TIMEOUT, DEFAULT_IDLE_TIMEOUT
from ._options import price, seconds, size_gib, whole

MAX_THREADS = 4096


def add_parser(commands: Any) -> None:
    provider = commands.add_parser("provider", help="run a provider on a yagna node")
    sub = provider.add_subparsers(dest="provider_command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run a provider agent until interrupted",
                         description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--api-url", default=os.environ.get("YAGNA_API_URL"))
    run.add_argument("--appkey", default=os.environ.get("YAGNA_APPKEY"))
    run.add_argument("--gsb-url", default=os.environ.get("GSB_URL"))
    run.add_argument("--name", default="workgen-provider")
    run.add_argument("--subnet", default=os.environ.get("YAGNA_SUBNET", "public"))
    run.add_argument("--threads", type=whole(minimum=1, maximum=MAX_THREADS), default=1)
    run.add_argument("--mem-gib", type=size_gib, default=1.0)
    run.add_argument("--storage-gib", type=size_gib, default=4.0)
    run.add_argument("--price-duration", type=price, default=0.0001,
                     help="price of a second of wall time")
    run.add_argument("--price-cpu", type=price, default=0.0002,
                     help="price of a second of CPU time")
    run.add_argument("--price-start", type=price, default=0.0, help="fixed price per activity")
    run.add_argument("--debit-note-interval", type=seconds, default=60.0, metavar="SECONDS")
    run.add_argument("--idle-agreement-timeout", type=seconds, default=DEFAULT_IDLE_TIMEOUT,
                     metavar="SECONDS", help="break an agreement that has had no live activity "
                     f"this long (default: {DEFAULT_IDLE_TIMEOUT:g})")
    run.add_argument("--debit-note-accept-timeout", type=seconds,
                     default=DEFAULT_ACCEPT_TIMEOUT, metavar="SECONDS",
                     help="the deadline for accepting debit notes this provider offers; held "
                          "to when the requestor names one too (default: "
                          f"{DEFAULT_ACCEPT_TIMEOUT:g})")
    run.add_argument("--inet", action="store_true", help="allow activities that ask for network")
    run.add_argument("--dev-images", action=argparse.BooleanOptionalAction,
                     default=os.environ.get("WORKGEN_DEV_IMAGES") == "1",
                     help="run demands that name an image this provider does not have on the "
                          "host system image (development mode; also WORKGEN_DEV_IMAGES=1), "
                          "instead of refusing them")
    images = run.add_argument_group("images")
    images.add_argument("--image-store", type=Path, default=None, metavar="DIR",
                        help="also run images from this image store (see 'workgen image') "
                             "without downloading them (default: none)")
    images.add_argument("--image-cache", type=Path, default=None, metavar="DIR",
                        help="where images are unpacked (default: /var/cache/workgen/images "
                             "as root, else ~/.cache/workgen/images)")
    images.add_argument("--image-cache-gib", type=size_gib,
                        default=DEFAULT_MAX_CACHE_BYTES / (1 << 30), metavar="GIB",
                        help="the cache's bound; least recently used images go first "
                             f"(default: {DEFAULT_MAX_CACHE_BYTES / (1 << 30):g})")
    images.add_argument("--max-image-gib", type=size_gib,
                        default=DEFAULT_MAX_IMAGE_BYTES / (1 << 30), metavar="GIB",
                        help="the largest image download taken "
                             f"(default: {DEFAULT_MAX_IMAGE_BYTES / (1 << 30):g})")
    images.add_argument("--image-source", action="append", default=[], metavar="URL",
                        help="a non-public address images may be fetched from (an image "
                             "registry on loopback, say; repeatable). Public addresses are "
                             "always allowed")
    images.add_argument("--no-image-download", action="store_true",
                        help="never download images (run only the host image, the store's "
                             "and those already cached)")
    run.set_defaults(handler=run_agent)


def run_agent(args: argparse.Namespace, *, overcharge: float = 1.0) -> int:
    """Run the provider the parsed options describe. ``overcharge`` (bill that many times the
    agreed price) exists for tests of requestors against a dishonest provider; operators have
    no option for it."""
    from ..images import ImageFiles
    from ..provider.images import FetchPolicy, ImageCache, ImageResolver, ImageStore
    from ..provider.offer import ProviderConfig
    from ..provider.yagna import YagnaApiError, run_provider

    missing = [name for name, value in (("--api-url/YAGNA_API_URL", args.api_url),
                                        ("--appkey/YAGNA_APPKEY", args.appkey),
                                        ("--gsb-url/GSB_URL", args.gsb_url)) if not value]
    if missing:
        print(f"workgen provider: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = ProviderConfig(
            name=args.name, cpu_threads=args.threads, mem_gib=args.mem_gib,
            storage_gib=args.storage_gib, inet=args.inet,
            pricing=LinearPricing((args.price_duration, args.price_cpu, args.price_start),
                                  (USAGE_DURATION_SEC, USAGE_CPU_SEC)))
    except ValueError as exc:
        print(f"workgen provider: {exc}", file=sys.stderr)
        return 2
    try:
        # Ctrl-C and SIGTERM both cancel the agent, which cleans up; main() turns them into
        # the exit codes.
        asyncio.run(until_signalled(run_provider(
            config, api_url=args.api_url, appkey=args.appkey, gsb_url=args.gsb_url,
            subnet=args.subnet, debit_note_interval=args.debit_note_interval,
            idle_timeout=args.idle_agreement_timeout,
            accept_timeout=args.debit_note_accept_timeout, overcharge=overcharge,
            images=ImageResolver(
                ImageStore(), dev_images=args.dev_images,
                remedy="it runs the host system image, images it can download (the demand's "
                       "task package URL) and those of its --image-store (with --dev-images "
                       "it would run this image on the host system image)",
                files=ImageFiles(args.image_store) if args.image_store else None,
                cache=ImageCache(args.image_cache,
                                 max_bytes=int(args.image_cache_gib * (1 << 30))),
                fetch=None if args.no_image_download else FetchPolicy(
                    max_bytes=int(args.max_image_gib * (1 << 30)),
                    sources=tuple(args.image_source))))))
    except YagnaApiError as exc:
        print(f"workgen provider: the yagna node failed: {exc}", file=sys.stderr)
        return 1
    return 0
