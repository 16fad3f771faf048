"""The GVMI format, the image store, building and the registry server, through their public
entry points (the ``workgen image`` command line among them)."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest

from support.images import build_tiny, make_root
from workgen.backends.base import Demand
from workgen.backends.yagna import Yagna
from workgen.images import (
    BuildError, GvmiError, ImageFiles, ImageMetadata, StoreError, load_recipe, read_gvmi,
)
from workgen.images.registry import RegistryServer
from workgen.protocol.properties import SRV_COMP_TASK_PACKAGE
from workgen.requestor import vm


def workgen(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "workgen.cli.main", *args],
                          capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def squashfs_of(directory: Path, out: Path) -> bytes:
    subprocess.run(["mksquashfs", str(directory), str(out), "-noappend", "-quiet",
                    "-no-progress"], check=True, capture_output=True)
    return out.read_bytes()


def trailer(config: dict[str, object]) -> bytes:
    """The metadata as Golem's builder appends it, written here from the format's description:
    CRC-32 (little endian) of the JSON, the JSON, its length in 8 decimal digits."""
    body = json.dumps(config).encode()
    return struct.pack("<I", zlib.crc32(body)) + body + b"%08d" % len(body)


def test_a_file_in_golem_s_layout_is_read_with_its_docker_style_metadata(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "file").write_text("x")
    fs = squashfs_of(tmp_path / "root", tmp_path / "fs")
    config = {"Hostname": "", "Env": ["PATH=/usr/bin:/bin", "A=b=c"], "Cmd": ["/bin/sh"],
              "Image": "sha256:abc", "Volumes": {"/golem/work": {}, "/data": {}},
              "WorkingDir": "/golem/work", "Entrypoint": None, "OnBuild": None,
              "Labels": {"maintainer": "me"}}
    image = tmp_path / "image.gvmi"
    image.write_bytes(fs + trailer(config))
    info = read_gvmi(image)
    assert info.squashfs_bytes <= len(fs) and info.file_bytes == image.stat().st_size
    meta = info.metadata
    assert meta.env_map == {"PATH": "/usr/bin:/bin", "A": "b=c"}
    assert meta.volumes == ("/data", "/golem/work") and meta.working_dir == "/golem/work"
    assert meta.cmd == ("/bin/sh",) and meta.entrypoint == () and meta.labels == {"maintainer": "me"}


def test_our_writer_produces_golem_s_layout(tmp_path: Path) -> None:
    store = ImageFiles(tmp_path / "store")
    meta = ImageMetadata(env=("GREETING=hi",), working_dir="/work", volumes=("/data",),
                         entrypoint=("/bin/sh",))
    built = build_tiny(store, "me/tiny:1", metadata=meta)
    data = built.path.read_bytes()
    assert data[:4] == b"hsqs"
    length = int(data[-8:])
    body = data[-8 - length:-8]
    (crc,) = struct.unpack("<I", data[-12 - length:-8 - length])
    assert crc == zlib.crc32(body)
    config = json.loads(body)
    assert config["Env"] == ["GREETING=hi"] and config["WorkingDir"] == "/work"
    assert config["Volumes"] == {"/data": {}} and config["Entrypoint"] == ["/bin/sh"]
    # Named by SHA3-224 of the whole file, metadata included (as `sha3sum -a 224` prints).
    assert built.hash == hashlib.sha3_224(data).hexdigest()
    assert built.path == store.path_of(built.hash)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: d[:-1] + b"x", "8 digits"),
    (lambda d: d[:-20] + bytes([d[-20] ^ 1]) + d[-19:], "CRC"),
    (lambda d: d[:100], "truncated"),
    (lambda d: b"\0" * 8 + d[8:], "squashfs"),
    (lambda d: d[:-8] + b"99999999", "does not fit"),
])
def test_a_damaged_image_is_a_clear_error(tmp_path: Path, damage: object, message: str) -> None:
    built = build_tiny(ImageFiles(tmp_path / "store"))
    bad = tmp_path / "bad.gvmi"
    bad.write_bytes(damage(built.path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(GvmiError, match=message):
        read_gvmi(bad)


@pytest.mark.parametrize("config", [
    {"Env": ["NOEQUALS"]}, {"Env": 5}, {"WorkingDir": "relative"},
    {"WorkingDir": "/a/../b"}, {"Volumes": {"/": {}}}, {"Volumes": ["/data"]},
    {"Labels": {"a": 1}},
])
def test_metadata_that_cannot_be_applied_is_refused(config: dict[str, object]) -> None:
    with pytest.raises(GvmiError):
        ImageMetadata.from_json(config)


def test_the_command_line_builds_lists_tags_inspects_and_removes(tmp_path: Path) -> None:
    store = tmp_path / "store"
    root = make_root(tmp_path / "root")
    built = workgen("image", "build", str(root), "--store", str(store), "--tag", "me/tool:1",
                    "--env", "GREETING=cli", "--workdir", "/usr", "--volume", "/data")
    image_hash = built.stdout.strip()
    files = ImageFiles(store)
    path = files.path_of(image_hash)
    assert path is not None and hashlib.sha3_224(path.read_bytes()).hexdigest() == image_hash
    assert files.resolve("me/tool:1") == image_hash
    listed = workgen("image", "list", "--store", str(store), "--json").stdout
    assert json.loads(listed)["tags"] == ["me/tool:1"]
    workgen("image", "tag", "me/tool:1", "me/tool:latest", "--store", str(store))
    inspected = json.loads(workgen("image", "inspect", "me/tool:latest", "--store",
                                   str(store)).stdout)
    assert inspected["metadata"]["Env"] == ["GREETING=cli"]
    assert inspected["metadata"]["WorkingDir"] == "/usr"
    workgen("image", "rm", "me/tool:1", "--store", str(store))
    assert files.resolve("me/tool:1") is None and files.resolve("me/tool:latest") == image_hash
    workgen("image", "rm", image_hash, "--store", str(store))
    assert files.images() == [] and files.tags() == {}


def test_the_command_line_refuses_bad_input_and_loses_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    root = make_root(tmp_path / "root")
    for args, wanted in [
        (["build", str(root), "--tag", "no-version"], "name:version"),
        (["build", str(root), "--env", "NOEQUALS"], "NAME=value"),
        (["build", str(root), "--workdir", "relative"], "absolute"),
        (["build"], "one of a directory"),
        (["build", str(root), "--debian", "bookworm"], "one of a directory"),
        (["build", str(root), "--package", "x"], "--debian"),
        (["build", "--recipe", str(tmp_path / "none.toml")], "cannot read the recipe"),
        (["build", "--debian", "bookworm", "--package", "Bad Name!"], "package"),
        (["add", str(root / "etc" / "image-marker")], "squashfs"),
    ]:
        done = workgen("image", *args, "--store", str(store), check=False)
        assert done.returncode == 2 and wanted in done.stderr, (args, done.stderr)
    missing = workgen("image", "build", str(tmp_path / "nope"), "--store", str(store),
                      check=False)
    assert missing.returncode == 1 and "not one" in missing.stderr
    assert workgen("image", "rm", "x/y:1", "--store", str(store), check=False).returncode == 1
    assert ImageFiles(store).images() == []


def test_tags_written_by_two_threads_at_once_are_all_kept(tmp_path: Path) -> None:
    store = ImageFiles(tmp_path / "store")
    built = build_tiny(store)

    def tag_many(prefix: str) -> None:
        for i in range(20):
            store.tag(built.hash, f"{prefix}/t:{i}")

    threads = [threading.Thread(target=tag_many, args=(p,)) for p in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.tags()) == 40
    with pytest.raises(StoreError, match="no image"):
        store.tag("c" * 56, "x/y:1")


def test_the_registry_answers_as_golem_s_does_and_serves_the_file(tmp_path: Path) -> None:
    store = ImageFiles(tmp_path / "store")
    built = build_tiny(store, "me/tiny:1")
    with RegistryServer(store).running() as url:
        def get(path: str) -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(url + path, timeout=10) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()

        status, body = get("/v1/image/info?count=true&tag=me/tiny:1")
        info = json.loads(body)
        assert status == 200 and info["sha3"] == built.hash and info["size"] == built.size
        assert info["http"] == f"{url}/download/{built.hash}"
        assert json.loads(get(f"/v1/image/info?dev=true&hash={built.hash}")[1])["sha3"] == \
            built.hash
        assert get("/v1/image/info?tag=me/none:1")[0] == 404
        assert get("/v1/image/info")[0] == 400
        status, data = get(f"/download/{built.hash}")
        assert status == 200 and hashlib.sha3_224(data).hexdigest() == built.hash
        assert get("/v1/image/download?tag=me/tiny:1")[1] == data
        assert get(f"/image.{built.hash}.link")[1].decode() == info["http"]
        assert get("/download/../../etc/passwd")[0] == 404


async def test_the_yagna_backend_resolves_a_tag_through_the_served_store(tmp_path: Path) -> None:
    store = ImageFiles(tmp_path / "store")
    built = build_tiny(store, "me/tiny:1")
    with RegistryServer(store).running() as url:
        backend = Yagna(api_url="http://127.0.0.1:9", appkey="x", registry_url=url)
        demand = Demand(properties=vm.repo(image_tag="me/tiny:1").properties(), constraints="")
        resolved = await backend._resolve_image(demand)
    assert resolved.properties[SRV_COMP_TASK_PACKAGE] == \
        f"hash:sha3:{built.hash}:{url}/download/{built.hash}"


@pytest.mark.parametrize(("text", "message"), [
    ('suite = "bookworm"\npackages = "povray"', "packages must be a list of strings"),
    ('suite = "bookworm"\nimage = "x"', "unknown key 'image'"),
    ('packages = ["ok", "Not OK"]', "not a Debian package name"),
    ('env = ["NOEQUALS"]', "NAME=value"),
    ('tags = ["nope"]', "name:version"),
    ('suite = [', "not valid TOML"),
])
def test_a_bad_recipe_file_is_refused_saying_why(tmp_path: Path, text: str, message: str) -> None:
    recipe = tmp_path / "image.toml"
    recipe.write_text(text)
    with pytest.raises((BuildError, StoreError), match=message):
        load_recipe(recipe)


def test_the_rendering_example_s_recipe_reads_as_its_image() -> None:
    loaded = load_recipe(Path(__file__).parents[2] / "examples" / "render" / "povray.toml")
    assert loaded.recipe.packages == ("povray",) and loaded.recipe.suite == "bookworm"
    assert loaded.tags == ("workgen/povray:bookworm",) and loaded.metadata.env == ("HOME=/tmp",)
