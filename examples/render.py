#!/usr/bin/env python3
"""Render an animation with POV-Ray, one frame per task, across the local network's providers.

    python examples/render.py [--frames 24] [--size 320x240] [--out render-out]

POV-Ray runs inside an image of its own (``workgen/povray:bookworm``: Debian's ``povray``
package, as ``render/povray.toml`` says), so this machine needs no ``povray``: the first run
builds the image into the local image store, as ``workgen image build --recipe
examples/render/povray.toml`` would (about half a minute, from Debian's mirror); later runs
reuse it.
Each worker sends the scene to its activity once (``send_file``), renders its frames there and
brings each frame back (``download_file``); the frames are then put together into an animated
GIF (``render-out/animation.gif``).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

from PIL import Image

from workgen import Golem, Task, WorkContext, vm
from workgen.images import ImageFiles, build_image, load_recipe

SCENE = Path(__file__).parent / "render" / "scene.pov"
RECIPE = Path(__file__).parent / "render" / "povray.toml"
IMAGE = "workgen/povray:bookworm"


def ensure_image() -> None:
    """Build the renderer's image into the local store unless it is there already."""
    if ImageFiles().resolve(IMAGE) is None:
        print(f"building the image {IMAGE} (once)...", flush=True)
        recipe = load_recipe(RECIPE)
        build_image(recipe.recipe, recipe.metadata, tags=recipe.tags)


def make_worker(frames: int, width: int, height: int, out: Path) -> Any:
    async def worker(context: WorkContext, tasks: AsyncIterator[Task]):
        script = context.new_script()
        script.send_file(SCENE, "/golem/input/scene.pov")
        yield script
        async for task in tasks:
            frame = task.data
            output = f"/golem/output/frame-{frame:03d}.png"
            local = out / f"frame-{frame:03d}.png"
            script = context.new_script(timeout=120)
            script.run("/usr/bin/povray", "+I/golem/input/scene.pov", f"+O{output}",
                       f"+W{width}", f"+H{height}", f"+K{frame / frames:.4f}", "-D", "+A", "+FN",
                       stdout="str", stderr="str")
            script.download_file(output, local)
            yield script
            task.accept_result(result=local)

    return worker


async def main(frames: int, width: int, height: int, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    ensure_image()
    package = await vm.repo(image_tag=IMAGE, min_mem_gib=0.5, min_storage_gib=1.0)
    rendered: dict[int, Path] = {}
    async with Golem(budget=1.0) as golem:
        worker = make_worker(frames, width, height, out)
        async for task in golem.execute_tasks(worker, [Task(data=i) for i in range(frames)],
                                              payload=package, max_workers=4):
            rendered[task.data] = task.result
    missing = sorted(set(range(frames)) - set(rendered))
    if missing:
        raise SystemExit(f"frames not rendered: {missing}")
    images = []
    for i in range(frames):
        with Image.open(rendered[i]) as frame:
            images.append(frame.convert("P", palette=Image.Palette.ADAPTIVE))
    animation = out / "animation.gif"
    images[0].save(animation, save_all=True, append_images=images[1:], duration=80, loop=0)
    return animation


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=parse_size, default=(320, 240), help="WIDTHxHEIGHT")
    parser.add_argument("--out", type=Path, default=Path("render-out"))
    args = parser.parse_args()
    path = asyncio.run(main(args.frames, *args.size, args.out))
    print(f"animation: {path}")
