"""Building GVMI images: from a directory, or from a Debian recipe (a suite and packages).

The filesystem is made by ``mksquashfs`` (``squashfs-tools``), every file owned by root as in an
exported container; a recipe's root is made by ``mmdebstrap`` from Debian's packages first. The
metadata is appended as :mod:`.gvmi` describes, and the image is added to a store.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .gvmi import GvmiError, GvmiInfo, ImageMetadata, metadata_trailer
from .store import ImageFiles, check_tag

COMPRESSION = "lzo"
"""What Golem's builder uses by default (and its VM kernel reads)."""
RECIPE_EXCLUDES = ("dev/*", "proc/*", "sys/*", "run/*", "tmp/*", "var/cache/apt/*",
                   "var/lib/apt/lists/*", "var/log/*")
"""Left out of a recipe's image: device nodes and what only the build needed."""
_DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
                  "/usr/share/locale/*")
_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+(?:=[A-Za-z0-9.+~:-]+)?")
_SUITE_RE = re.compile(r"[a-z][a-z0-9-]*")


class BuildError(Exception):
    """The image could not be built; the message says which step failed and why."""


@dataclass(frozen=True)
class DebianRecipe:
    """A root filesystem from Debian's packages."""

    suite: str = "bookworm"
    packages: tuple[str, ...] = ()
    mirror: str | None = None
    variant: str = "minbase"

    def __post_init__(self) -> None:
        if not _SUITE_RE.fullmatch(self.suite):
            raise BuildError(f"a Debian suite is a name like 'bookworm', got {self.suite!r}")
        for package in self.packages:
            if not _PACKAGE_RE.fullmatch(package):
                raise BuildError(f"not a Debian package name: {package!r}")
        if self.variant not in ("minbase", "essential", "apt", "required", "important"):
            raise BuildError(f"unknown mmdebstrap variant {self.variant!r}")
        if self.mirror is not None and not re.fullmatch(r"https?://\S+", self.mirror):
            raise BuildError(f"a mirror is an http(s) URL, got {self.mirror!r}")


@dataclass(frozen=True)
class RecipeFile:
    """A recipe kept in a TOML file: what to install, and the image's metadata and tags."""

    recipe: DebianRecipe
    metadata: ImageMetadata
    tags: tuple[str, ...]


_RECIPE_KEYS = {"suite": str, "packages": list, "mirror": str, "variant": str, "tags": list,
                "env": list, "workdir": str, "volumes": list, "entrypoint": str}


def load_recipe(path: Path) -> RecipeFile:
    """Read a recipe file::

        suite = "bookworm"
        packages = ["povray"]
        tags = ["me/povray:1"]
        env = ["HOME=/tmp"]        # also: workdir, volumes, entrypoint, mirror, variant
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise BuildError(f"cannot read the recipe {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BuildError(f"the recipe {path} is not valid TOML: {exc}") from None
    for key, value in data.items():
        kind = _RECIPE_KEYS.get(key)
        if kind is None:
            raise BuildError(f"the recipe {path} has an unknown key {key!r} (known: "
                             f"{', '.join(sorted(_RECIPE_KEYS))})")
        if not isinstance(value, kind) or (kind is list and not all(
                isinstance(item, str) for item in value)):
            wanted = "a list of strings" if kind is list else "a string"
            raise BuildError(f"the recipe {path}: {key} must be {wanted}, got {value!r}")
    try:
        metadata = ImageMetadata(
            env=tuple(data.get("env", ())), working_dir=data.get("workdir", ""),
            volumes=tuple(data.get("volumes", ())),
            entrypoint=(data["entrypoint"],) if "entrypoint" in data else ())
    except GvmiError as exc:
        raise BuildError(f"the recipe {path}: {exc}") from None
    for tag in data.get("tags", ()):
        check_tag(tag)
    recipe = DebianRecipe(data.get("suite", "bookworm"), tuple(data.get("packages", ())),
                          mirror=data.get("mirror"), variant=data.get("variant", "minbase"))
    return RecipeFile(recipe, metadata, tuple(data.get("tags", ())))


@dataclass(frozen=True)
class BuiltImage:
    hash: str
    path: Path
    size: int
    info: GvmiInfo


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BuildError(f"{name} is not installed: install it with 'apt-get install {package}' "
                         "(scripts/setup.sh does)")
    return path


def _run(argv: Sequence[str], what: str, log: Callable[[str], None] | None) -> None:
    if log is not None:
        log(f"{what}: {' '.join(argv[:3])} ...")
    done = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-12:]
        raise BuildError(f"{what} failed (exit {done.returncode}):\n" + "\n".join(tail))


def write_gvmi(source: Path, output: Path, metadata: ImageMetadata, *,
               excludes: Sequence[str] = (), log: Callable[[str], None] | None = None) -> None:
    """Make ``output`` (a GVMI file) of the directory ``source`` and ``metadata``."""
    source = Path(source)
    if not source.is_dir():
        raise BuildError(f"an image is built from a directory: {source} is not one")
    mksquashfs = _tool("mksquashfs", "squashfs-tools")
    trailer = metadata_trailer(metadata)
    argv = [mksquashfs, str(source), str(output), "-noappend", "-all-root", "-no-xattrs",
            "-comp", COMPRESSION, "-quiet", "-no-progress"]
    if excludes:
        argv += ["-wildcards", "-e", *excludes]
    _run(argv, "mksquashfs", log)
    with open(output, "ab") as f:
        f.write(trailer)


def build_image(source: Path | DebianRecipe, metadata: ImageMetadata | None = None, *,
                tags: Sequence[str] = (), store: ImageFiles | None = None,
                output: Path | None = None,
                log: Callable[[str], None] | None = None) -> BuiltImage:
    """Build an image of a directory or a recipe, add it to ``store`` (the default store if
    ``None``) under ``tags``, and also write it to ``output`` if given."""
    for tag in tags:
        check_tag(tag)
    metadata = metadata if metadata is not None else ImageMetadata()
    store = store if store is not None else ImageFiles()
    with tempfile.TemporaryDirectory(prefix="workgen-build-") as work:
        gvmi = Path(work) / "image.gvmi"
        if isinstance(source, DebianRecipe):
            root = Path(work) / "root"
            debootstrap(source, root, log=log)
            write_gvmi(root, gvmi, metadata, excludes=RECIPE_EXCLUDES, log=log)
        else:
            write_gvmi(Path(source), gvmi, metadata, log=log)
        if output is not None:
            shutil.copyfile(gvmi, output)
        image_hash, info = store.add(gvmi, list(tags), move=True)
    path = store.path_of(image_hash)
    assert path is not None
    return BuiltImage(image_hash, path, info.file_bytes, info)


def debootstrap(recipe: DebianRecipe, root: Path, *,
                log: Callable[[str], None] | None = None) -> None:
    """Make a Debian root filesystem in ``root`` (which must not exist) with ``mmdebstrap``."""
    mmdebstrap = _tool("mmdebstrap", "mmdebstrap")
    argv = [mmdebstrap, f"--variant={recipe.variant}", "--quiet",
            f"--mode={'root' if os.geteuid() == 0 else 'unshare'}"]
    if recipe.packages:
        argv.append("--include=" + ",".join(recipe.packages))
    argv += [f"--dpkgopt=path-exclude={pattern}" for pattern in _DPKG_EXCLUDES]
    argv += [recipe.suite, str(root)]
    if recipe.mirror:
        argv.append(recipe.mirror)
    _run(argv, "mmdebstrap", log)
