"""Per-activity cgroups, for real: limits hold for a group's processes together.

The kernel tests need root and a cgroup setup the module can use (they skip, saying why,
otherwise); the layout tests run anywhere, on fake /sys/fs/cgroup trees.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from workgen.provider.runtime.cgroup import (
    ActivityCgroup, CgroupLimits, CgroupUnavailable, _detect, _sweep, cgroup_mode,
    sweep_stale,
)

MiB = 1 << 20

# Blocks on stdin (so it can be attached before it allocates), allocates n MiB, touching every
# page, reports, then holds the memory until stdin closes.
ALLOCATE = """\
import sys
sys.stdin.buffer.readline()
held = [bytearray(b"x") * (1 << 20) for _ in range({mib})]
print("allocated", flush=True)
sys.stdin.buffer.read()
"""

# Blocks on stdin, then forks 20 children that sleep; reports how many forks the kernel refused
# and with which errors.
FORK_20 = """\
import os, sys, time
sys.stdin.buffer.readline()
started, errors = 0, []
for _ in range(20):
    try:
        pid = os.fork()
    except OSError as e:
        errors.append(e.errno)
        continue
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    started += 1
print(started, *errors, flush=True)
sys.stdin.buffer.read()
"""

Start = Callable[[str], "subprocess.Popen[bytes]"]
Make = Callable[[str, CgroupLimits], ActivityCgroup]


@pytest.fixture
def make_group() -> Iterator[Make]:
    """Makes activity cgroups (skipping without root or usable cgroups); removes them after."""
    if os.geteuid() != 0:
        pytest.skip("needs root: only root can make cgroups and move processes into them")
    try:
        cgroup_mode()
    except CgroupUnavailable as e:
        pytest.skip(f"cgroups unavailable here: {e}")
    made: list[ActivityCgroup] = []

    def make(name: str, limits: CgroupLimits) -> ActivityCgroup:
        group = ActivityCgroup.create(f"test-{name}-{secrets.token_hex(4)}", limits)
        made.append(group)
        return group

    try:
        yield make
    finally:
        for group in made:
            group.remove()


@pytest.fixture
def start() -> Iterator[Start]:
    """Starts ``python -c`` processes with piped stdin/stdout; kills and reaps them after."""
    started: list[subprocess.Popen[bytes]] = []

    def run(code: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        started.append(proc)
        return proc

    try:
        yield run
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


def release(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.flush()


def report(proc: subprocess.Popen[bytes]) -> bytes:
    """The process's one line of report, or b"" if it died first."""
    assert proc.stdout is not None
    return proc.stdout.readline()


def finish(proc: subprocess.Popen[bytes]) -> int:
    """Lets a process that is holding its memory exit; its exit status."""
    assert proc.stdin is not None
    try:
        proc.stdin.close()
    except BrokenPipeError:
        pass  # it died with unread input
    return proc.wait(timeout=30)


def test_memory_limit_kills_a_process_that_allocates_past_it(make_group: Make,
                                                            start: Start) -> None:
    group = make_group("mem", CgroupLimits(memory_bytes=64 * MiB, max_pids=64))
    proc = start(ALLOCATE.format(mib=200))
    group.attach(proc.pid)
    assert group.pids() == {proc.pid}
    release(proc)
    assert report(proc) == b""
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert group.oom_kills() >= 1


def test_pids_max_refuses_forks_with_eagain(make_group: Make, start: Start) -> None:
    group = make_group("pids", CgroupLimits(memory_bytes=256 * MiB, max_pids=5))
    proc = start(FORK_20)
    group.attach(proc.pid)
    release(proc)
    started, *errors = map(int, report(proc).split())
    assert started <= 4, "pids.max counts the parent too"
    assert errors and set(errors) == {errno.EAGAIN}
    assert started + len(errors) == 20
    assert group.pids_max_hits() >= 1
    assert len(group.pids()) == started + 1


def test_memory_limit_is_for_the_group_not_each_process(make_group: Make,
                                                        start: Start) -> None:
    group = make_group("shared", CgroupLimits(memory_bytes=100 * MiB, max_pids=64))
    procs = [start(ALLOCATE.format(mib=70)) for _ in range(2)]
    for proc in procs:
        group.attach(proc.pid)
    for proc in procs:
        release(proc)
    # Each alone fits the limit; both together do not.
    reports = [report(proc) for proc in procs]
    statuses = [finish(proc) for proc in procs]
    assert -signal.SIGKILL in statuses, (reports, statuses)
    assert group.oom_kills() >= 1


def test_remove_kills_everything_and_removes_the_directories(make_group: Make,
                                                             start: Start) -> None:
    group = make_group("rm", CgroupLimits(memory_bytes=256 * MiB, max_pids=64))
    sleeper, forker = start(ALLOCATE.format(mib=1)), start(FORK_20)
    for proc in (sleeper, forker):
        group.attach(proc.pid)
    release(forker)
    started, *_ = map(int, report(forker).split())
    assert started == 20 and len(group.pids()) == 22  # grandchildren are in it too
    dirs = [Path(f).parent for f in group.procs_files]
    assert all(d.is_dir() for d in dirs)

    group.remove()
    assert sleeper.wait(timeout=5) == forker.wait(timeout=5) == -signal.SIGKILL
    assert not any(d.exists() for d in dirs)
    assert group.pids() == set()
    group.remove()  # again: nothing left to do, no error
    assert group.oom_kills() == 0 and group.pids_max_hits() == 0


def test_v2_kill_and_remove_on_a_real_cgroup2_hierarchy(start: Start) -> None:
    """cgroup.kill and rmdir on a real v2 group, even where v2 has no controllers (hybrid)."""
    unified = next((d for d in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
                    if (d / "cgroup.controllers").exists()), None)
    if os.geteuid() != 0 or unified is None:
        pytest.skip("needs root and a cgroup2 hierarchy")
    d = unified / f"workgen-{os.getpid()}-test-kill-{secrets.token_hex(4)}"
    d.mkdir()
    group = ActivityCgroup("v2", [d], [], CgroupLimits(memory_bytes=MiB, max_pids=1))
    try:
        assert (d / "cgroup.kill").exists()
        proc = start(FORK_20)
        group.attach(proc.pid)
        release(proc)
        assert report(proc).split()[0] == b"20" and len(group.pids()) == 21
        group.remove()
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert not d.exists()
    finally:
        group.remove()
        if d.exists():
            d.rmdir()


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/abs", "a b", "ä", "a\0b",
                                  "a\nb", "x" * 65])
def test_invalid_names_are_rejected_before_anything_is_made(name: str) -> None:
    with pytest.raises(ValueError):
        ActivityCgroup.create(name, CgroupLimits(memory_bytes=MiB, max_pids=1))
    with pytest.raises(ValueError):
        sweep_stale(name)


def test_limits_must_be_positive() -> None:
    for bad in [(0, 1, None), (MiB, 0, None), (MiB, 1, 0)]:
        with pytest.raises(ValueError):
            CgroupLimits(*bad)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_sweep_removes_groups_of_dead_owners_only(make_group: Make, start: Start) -> None:
    ours = make_group("live", CgroupLimits(memory_bytes=64 * MiB, max_pids=8))
    homes = [Path(f).parent.parent for f in ours.procs_files]
    tag = secrets.token_hex(4)
    live = start(ALLOCATE.format(mib=1))
    dead_dirs = [home / f"workgen-{dead_pid()}-sweep-{tag}" for home in homes]
    live_dirs = [home / f"workgen-{live.pid}-sweep-{tag}" for home in homes]
    try:
        for d in dead_dirs + live_dirs:
            d.mkdir()
        assert sweep_stale() >= 1
        assert not any(d.exists() for d in dead_dirs)
        assert all(d.exists() for d in live_dirs)
        assert all(Path(f).exists() for f in ours.procs_files)
    finally:
        for d in dead_dirs + live_dirs:
            if d.exists():
                d.rmdir()


# The layout on fake trees: which version, and where the groups go.

def fake_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


V2_TREE = {
    "cgroup.controllers": "cpuset cpu io memory pids",
    "cgroup.subtree_control": "",
    "user.slice/cgroup.controllers": "cpu memory pids",
    "user.slice/cgroup.subtree_control": "",
    "user.slice/session-1.scope/cgroup.procs": "",
}


def test_v2_groups_go_in_a_workgen_group_beside_ours(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, V2_TREE)
    layout = _detect(root, "0::/user.slice/session-1.scope\n", euid=0)
    assert layout.mode == "v2"
    assert layout.v2_parent == root / "user.slice"
    assert layout.homes == {"unified": root / "user.slice" / "workgen"}

    group = ActivityCgroup._create_in(layout, "a1", CgroupLimits(64 * MiB, 10, cpu_threads=2))
    d = root / "user.slice" / "workgen" / f"workgen-{os.getpid()}-a1"
    assert group.procs_files == [str(d / "cgroup.procs")]
    assert group.description == f"cgroup v2 (memory, pids, cpu) at {d}"
    assert (d / "memory.max").read_text() == str(64 * MiB)
    assert (d / "pids.max").read_text() == "10"
    assert (d / "cpu.max").read_text() == "200000 100000"
    assert (root / "user.slice" / "workgen" / "cgroup.subtree_control").exists()


def test_v2_in_the_root_group_uses_it_directly(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, V2_TREE)
    layout = _detect(root, "0::/\n", euid=0)
    assert (layout.v2_parent, layout.homes["unified"]) == (root, root / "workgen")


def test_v2_without_delegated_controllers_is_unavailable(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, {**V2_TREE, "user.slice/cgroup.controllers": "cpu"})
    with pytest.raises(CgroupUnavailable, match="memory.*pids.*not delegated"):
        _detect(root, "0::/user.slice/session-1.scope\n", euid=0)


@pytest.mark.parametrize("self_cgroup, why", [
    ("0::/../elsewhere\n", "outside"),
    ("0::/user.slice/gone.scope\n", "does not exist"),
    ("4:memory:/x\n", "no cgroup v2 entry"),
])
def test_v2_unusable_own_groups(tmp_path: Path, self_cgroup: str, why: str) -> None:
    root = fake_tree(tmp_path, V2_TREE)
    with pytest.raises(CgroupUnavailable, match=why):
        _detect(root, self_cgroup, euid=0)


def test_not_root_is_unavailable(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, V2_TREE)
    with pytest.raises(CgroupUnavailable, match="not root"):
        _detect(root, "0::/\n", euid=1000)


HYBRID_SELF = "9:name=systemd:/\n8:pids:/\n4:memory:/a/b\n1:cpu,cpuacct:/\n0::/\n"


def test_hybrid_uses_v1_under_our_own_group_in_each_hierarchy(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, {"memory/cgroup.procs": "", "memory/a/b/cgroup.procs": "",
                                "pids/cgroup.procs": "", "cpu/cgroup.procs": "",
                                "unified/cgroup.controllers": ""})
    layout = _detect(root, HYBRID_SELF, euid=0)
    assert layout.mode == "v1"
    assert layout.homes == {"memory": root / "memory/a/b", "pids": root / "pids",
                            "cpu": root / "cpu"}


def test_hybrid_without_v1_pids_is_unavailable(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, {"memory/cgroup.procs": "", "memory/a/b/cgroup.procs": "",
                                "unified/cgroup.controllers": ""})
    with pytest.raises(CgroupUnavailable, match="without a pids controller"):
        _detect(root, HYBRID_SELF, euid=0)


def test_sweep_on_a_fake_tree_takes_only_dead_owners_groups(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, V2_TREE)
    layout = _detect(root, "0::/user.slice/session-1.scope\n", euid=0)
    container = layout.homes["unified"]
    names = [f"workgen-{dead_pid()}-gone", f"workgen-{os.getpid()}-ours", "workgen-0-x",
             "workgen-notapid-x", "other-1-x"]
    for name in names:
        (container / name).mkdir(parents=True)
    assert _sweep(layout, "workgen-") == 1
    assert sorted(p.name for p in container.iterdir()) == sorted(names[1:])
