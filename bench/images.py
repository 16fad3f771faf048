"""Benchmark: deploying a GVMI image of about 100 MB, first (download + verify + unpack) and
cached, against the same work done by hand in the same run.

The image (Debian's POV-Ray and NumPy by default, built once into the store with mmdebstrap)
is served by workgen's registry server on loopback. Each round deploys it in a fresh activity
with an empty cache (the provider's whole path: an HTTP download hashed as it arrives, the
listing and the sandboxed ``unsquashfs``, the checks of every entry, and the sandbox's start),
then again with the cache warm. The baseline is the bare minimum of the same work: the same
HTTP download to a file with ``urllib`` plus ``sha3_224`` of it, then a plain ``unsquashfs``
to a directory, no sandbox and no checks.

    .venv/bin/python bench/images.py [--rounds 3] [--packages povray,python3-numpy]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from workgen.images import DebianRecipe, ImageFiles, build_image
from workgen.images.registry import RegistryServer
from workgen.provider.exeunit.unit import ExeUnit, ExeUnitConfig
from workgen.provider.images import FetchPolicy, GvmiImage, ImageCache


def ensure_image(store: ImageFiles, packages: tuple[str, ...]) -> str:
    tag = "bench/deploy:" + "-".join(p.replace("+", "") for p in packages)
    found = store.resolve(tag)
    if found is None:
        print(f"building {tag} (once)...", flush=True)
        found = build_image(DebianRecipe("bookworm", packages), tags=[tag], store=store).hash
    return found


async def deploy(image: GvmiImage) -> float:
    start = time.perf_counter()
    async with ExeUnit(config=ExeUnitConfig(rootfs=image)) as unit:
        batch = unit.exec(json.dumps([{"deploy": {}}, {"start": {}},
                                      {"run": {"entry_point": "/bin/true", "args": []}}]))
        results = await unit.results(batch, 2, timeout=600)
    assert [r.result for r in results] == ["Ok"] * 3, results
    return time.perf_counter() - start


def by_hand(url: str, work: Path) -> float:
    start = time.perf_counter()
    digest = hashlib.sha3_224()
    path = work / "image.gvmi"
    with urllib.request.urlopen(url) as response, open(path, "wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(work / "root"), str(path)], check=True,
                   capture_output=True)
    elapsed = time.perf_counter() - start
    shutil.rmtree(work / "root")
    path.unlink()
    return elapsed


async def main(rounds: int, packages: tuple[str, ...]) -> None:
    store = ImageFiles()
    image_hash = ensure_image(store, packages)
    path = store.path_of(image_hash)
    assert path is not None
    size = path.stat().st_size
    firsts, cached, baseline = [], [], []
    with RegistryServer(store).running() as url, tempfile.TemporaryDirectory() as scratch:
        link = f"{url}/download/{image_hash}"
        for _ in range(rounds):
            cache_dir = Path(tempfile.mkdtemp(prefix="bench-image-cache-"))
            os.chmod(cache_dir, 0o755)
            try:
                image = GvmiImage(image_hash, ImageCache(cache_dir), url=link,
                                  fetch=FetchPolicy(sources=(url,)))
                firsts.append(await deploy(image))
                cached.append(await deploy(image))
            finally:
                shutil.rmtree(cache_dir, ignore_errors=True)
            baseline.append(await asyncio.to_thread(by_hand, link, Path(scratch)))
    first, warm, bare = (statistics.median(x) for x in (firsts, cached, baseline))
    print(f"image: {image_hash[:12]}, {size / 1e6:.1f} MB ({', '.join(packages)}); "
          f"{rounds} round(s), medians")
    print(f"first deploy (download + verify + unpack + start): {first:6.2f} s")
    print(f"baseline, same run (download + sha3 + plain unsquashfs): {bare:6.2f} s   "
          f"ratio {bare / first:.2f}")
    print(f"cached deploy (+ start):                           {warm:6.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--packages", default="povray,python3-numpy")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, tuple(args.packages.split(","))))
