"""Per-activity cgroups: one cgroup holds every process of an activity's sandbox.

Part of the provider runtime, next to ``sandbox.py``: the sandbox's first process is attached
right after it starts, so everything it forks lands in the same group and the limits (memory,
process count, CPU quota) hold for the activity as a whole, where rlimits only bound each process.

Both cgroup versions are supported; which one is detected at first use (``cgroup_mode``):

- v1 (one hierarchy per controller): a directory ``workgen-<pid>-<name>`` under our own group in
  the memory, pids (and, for a CPU quota, cpu) hierarchies, as ``/proc/self/cgroup`` names them.
- v2: a directory ``workgen-<pid>-<name>`` in a ``workgen`` group beside our own one (the "no
  internal processes" rule forbids enabling controllers for children of a group with processes).

Needs root. Calls block briefly (``remove`` up to ~2 s): from async code, run them in a thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .leftovers import owner_gone

log = logging.getLogger(__name__)

PREFIX = "workgen-"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_V2_CONTAINER = "workgen"  # not PREFIX-named: sweep_stale never takes it for an activity's group
_REMOVE_TIMEOUT = 2.0
_V2_CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class CgroupLimits:
    memory_bytes: int
    """For all the group's processes together."""
    max_pids: int
    cpu_threads: int | None = None
    """CPU quota: this many threads' worth of time per period; ``None``: no quota."""

    def __post_init__(self) -> None:
        if min(self.memory_bytes, self.max_pids, 1 if self.cpu_threads is None
               else self.cpu_threads) <= 0:
            raise ValueError(f"limits must be positive: {self}")


class CgroupUnavailable(Exception):
    """Cgroups are not usable here (not root, no controllers, read-only...): says why."""


@dataclass(frozen=True)
class _Layout:
    mode: str
    homes: dict[str, Path]
    """Where activity groups are made: v1, per controller; v2, ``{"unified": <container>}``."""
    v2_parent: Path | None = None
    """v2: the group whose ``subtree_control`` must enable our controllers for the container."""


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:  # one write(): cgroupfs takes one pid or setting per write
        f.write(value)


def _words(path: Path) -> list[str]:
    """The file's whitespace-separated words; none once it is gone."""
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


def _counters(path: Path) -> dict[str, int]:
    """``key N`` lines (memory.events, pids.events, memory.oom_control)."""
    try:
        pairs = [line.split() for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return {}
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}


def _check_name(name: str) -> None:
    # Names become path components: only a safe alphabet, never "." or "..".
    if not _NAME.fullmatch(name) or set(name) == {"."}:
        raise ValueError(f"invalid cgroup name {name!r}")


def _own_dir(mount: Path, path: str) -> Path:
    # A group outside our cgroup namespace shows as "/../..": not a place we can use.
    if ".." in path.split("/"):
        raise CgroupUnavailable(f"our cgroup {path} is outside {mount}'s namespace")
    own = mount / path.lstrip("/")
    if not own.is_dir():  # e.g. /sys/fs/cgroup mounted from another cgroup namespace
        raise CgroupUnavailable(f"our cgroup {own} does not exist")
    return own


def _check_writable(d: Path) -> None:
    if os.statvfs(d).f_flag & os.ST_RDONLY:
        raise CgroupUnavailable(f"{d} is on a read-only mount")
    if not os.access(d, os.W_OK):
        raise CgroupUnavailable(f"{d} is not writable")


def _detect(root: Path, self_cgroup: str, euid: int) -> _Layout:
    """The layout under ``root`` (/sys/fs/cgroup) for a process whose /proc/self/cgroup reads
    ``self_cgroup``."""
    if euid != 0:
        raise CgroupUnavailable(f"not root (euid {euid})")
    lines = [line.split(":", 2) for line in self_cgroup.splitlines() if line.count(":") >= 2]
    v2_own = next((p for hid, ctrls, p in lines if hid == "0" and not ctrls), None)
    v1_own = {c: p for hid, ctrls, p in lines if hid != "0" for c in ctrls.split(",") if c}
    if (root / "cgroup.controllers").exists():
        return _v2_layout(root, v2_own)
    if "memory" in v1_own and (root / "memory" / "cgroup.procs").exists():
        homes: dict[str, Path] = {}
        for ctrl in ("memory", "pids", "cpu"):
            if ctrl in v1_own and (root / ctrl / "cgroup.procs").exists():
                homes[ctrl] = _own_dir(root / ctrl, v1_own[ctrl])
                _check_writable(homes[ctrl])
            elif ctrl != "cpu":  # cpu is only needed for a CPU quota
                raise CgroupUnavailable(f"cgroup v1 without a {ctrl} controller under {root}")
        return _Layout("v1", homes)
    raise CgroupUnavailable(f"no memory and pids controllers under {root}")


def _v2_layout(base: Path, own: str | None) -> _Layout:
    if own is None:
        raise CgroupUnavailable("/proc/self/cgroup has no cgroup v2 entry")
    own_dir = _own_dir(base, own)
    # The root group is exempt from the "no internal processes" rule; any other has us in it.
    parent = own_dir if own_dir == base else own_dir.parent
    _check_writable(parent)
    missing = {"memory", "pids"} - set(_words(parent / "cgroup.controllers"))
    if missing:
        raise CgroupUnavailable(f"controllers {sorted(missing)} not delegated to {parent}")
    return _Layout("v2", {"unified": parent / _V2_CONTAINER}, parent)


def _enable(group: Path) -> list[str]:
    """Enables memory, pids (required) and cpu (if it can) for ``group``'s children."""
    try:
        _write(group / "cgroup.subtree_control", "+memory +pids")
    except OSError as e:  # EBUSY: processes in it; ENOENT: not enabled above it
        raise CgroupUnavailable(f"cannot enable memory and pids in {group}: {e}") from e
    try:
        _write(group / "cgroup.subtree_control", "+cpu")
        return ["memory", "pids", "cpu"]
    except OSError as e:
        log.debug("no cpu controller in %s: %s", group, e)
        return ["memory", "pids"]


_lock = threading.Lock()
_cached: _Layout | CgroupUnavailable | None = None  # a detected fact of this host


def _layout() -> _Layout:
    global _cached
    with _lock:
        if _cached is None:
            try:
                _cached = _detect(Path("/sys/fs/cgroup"), Path("/proc/self/cgroup").read_text(),
                                  os.geteuid())
                log.info("per-activity cgroups: %s, in %s", _cached.mode,
                         ", ".join(map(str, _cached.homes.values())))
            except (CgroupUnavailable, OSError) as e:
                _cached = e if isinstance(e, CgroupUnavailable) else CgroupUnavailable(str(e))
                log.info("per-activity cgroups unavailable: %s", _cached)
        if isinstance(_cached, CgroupUnavailable):
            raise _cached
        return _cached


def cgroup_mode() -> str:
    """``"v1"`` or ``"v2"``; raises ``CgroupUnavailable``. Detected once, then cached."""
    return _layout().mode


class ActivityCgroup:
    """One activity's cgroup: a directory per v1 controller used, or one v2 directory."""

    def __init__(self, mode: str, dirs: list[Path], controllers: list[str],
                 limits: CgroupLimits) -> None:
        self.mode = mode
        self.limits = limits
        self.procs_files = [str(d / "cgroup.procs") for d in dirs]
        self.description = f"cgroup {mode} ({', '.join(controllers)}) at {dirs[0]}"
        self._dirs = list(dirs)  # those not removed yet
        self._mem, self._pids = dirs[0], dirs[min(1, len(dirs) - 1)]
        self._final: tuple[int, int] | None = None  # counters, read just before removal

    @classmethod
    def create(cls, name: str, limits: CgroupLimits) -> ActivityCgroup:
        _check_name(name)
        return cls._create_in(_layout(), name, limits)

    @classmethod
    def _create_in(cls, layout: _Layout, name: str, limits: CgroupLimits) -> ActivityCgroup:
        _check_name(name)
        dirname = f"{PREFIX}{os.getpid()}-{name}"  # the owner's pid, for sweep_stale
        if layout.v2_parent is not None:
            # Every time, not once: cheap, idempotent, and survives someone removing it.
            container = layout.homes["unified"]
            _enable(layout.v2_parent)
            try:
                container.mkdir(exist_ok=True)
            except OSError as e:
                raise CgroupUnavailable(f"cannot make {container}: {e}") from e
            controllers, homes = _enable(container), [container]
        else:
            controllers = ["memory", "pids"] + (
                ["cpu"] if limits.cpu_threads and "cpu" in layout.homes else [])
            homes = [layout.homes[c] for c in controllers]
        if limits.cpu_threads and "cpu" not in controllers:
            log.warning("no cpu controller: activity %s runs without a CPU quota", name)
        made: list[Path] = []
        try:
            for home in homes:
                (home / dirname).mkdir()
                made.append(home / dirname)
            group = cls(layout.mode, made, controllers, limits)
            group._apply("cpu" in controllers)
        except OSError as e:
            for d in reversed(made):
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise CgroupUnavailable(f"cannot set up cgroup {dirname}: {e}") from e
        log.debug("made %s", group.description)
        return group

    def _apply(self, cpu: bool) -> None:
        mem, threads = self._mem, self.limits.cpu_threads if cpu else None
        if self.mode == "v1":
            # The limit first: memsw may never be below it. Equal: no swapping beyond it.
            _write(mem / "memory.limit_in_bytes", str(self.limits.memory_bytes))
            if (mem / "memory.memsw.limit_in_bytes").exists():
                _write(mem / "memory.memsw.limit_in_bytes", str(self.limits.memory_bytes))
            if threads:
                period = int((self._dirs[2] / "cpu.cfs_period_us").read_text())
                _write(self._dirs[2] / "cpu.cfs_quota_us", str(threads * period))
        else:
            _write(mem / "memory.max", str(self.limits.memory_bytes))
            if (mem / "memory.swap.max").exists():
                _write(mem / "memory.swap.max", "0")
            if threads:
                _write(mem / "cpu.max", f"{threads * _V2_CPU_PERIOD_US} {_V2_CPU_PERIOD_US}")
        _write(self._pids / "pids.max", str(self.limits.max_pids))

    def attach(self, pid: int) -> None:
        """Moves ``pid`` into the group; the children it forks later are in it too.

        Attach before the process forks: v1 takes one controller at a time.
        """
        for f in self.procs_files:
            _write(Path(f), str(pid))

    def pids(self) -> set[int]:
        """The group's processes (pids as seen from the provider's pid namespace)."""
        return {int(p) for f in self.procs_files for p in _words(Path(f))}

    def oom_kills(self) -> int:
        """Processes killed for the memory limit so far (also after ``remove``)."""
        if self._final is not None:
            return self._final[0]
        if self.mode == "v2":
            return _counters(self._mem / "memory.events").get("oom_kill", 0)
        counts = _counters(self._mem / "memory.oom_control")
        if "oom_kill" in counts:
            return counts["oom_kill"]
        # Kernels before 4.13 count no kills. failcnt counts hits of the limit; without swap a
        # hit that reclaim cannot satisfy ends in a kill: a hint of at least one.
        return 1 if _words(self._mem / "memory.failcnt") not in ([], ["0"]) else 0

    def pids_max_hits(self) -> int:
        """How often a fork or clone was refused because of ``pids.max``."""
        if self._final is not None:
            return self._final[1]
        return _counters(self._pids / "pids.events").get("max", 0)

    def kill_all(self) -> None:
        """SIGKILLs every process in the group."""
        if self.mode == "v2" and (self._mem / "cgroup.kill").exists():
            _write(self._mem / "cgroup.kill", "1")  # atomic, forks in flight included
            return
        # Pidfds first, membership checked after: a pid that exited and was reused meanwhile
        # is not in the group any more, so only the group's own processes are signalled.
        fds: dict[int, int] = {}
        try:
            for pid in self.pids():
                try:
                    fds[pid] = os.pidfd_open(pid)
                except ProcessLookupError:
                    pass
                except OSError:  # no pidfds (Linux < 5.3): a plain kill, racy against reuse
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            for pid in self.pids() & fds.keys():
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fds[pid], signal.SIGKILL)
        finally:
            for fd in fds.values():
                os.close(fd)

    def remove(self) -> None:
        """Kills everything in it and removes its directories; safe to call again."""
        if not self._dirs:
            return
        if self._final is None:
            self._final = (self.oom_kills(), self.pids_max_hits())
        deadline = time.monotonic() + _REMOVE_TIMEOUT
        # v1 gives no event when a group empties, so poll, briefly, killing again each round
        # (a process may have forked between the listing and the kill).
        while True:
            try:
                self.kill_all()
            except OSError as e:
                log.debug("kill_all %s: %s", self._mem, e)
            if not self.pids():
                for d in list(self._dirs):
                    try:
                        d.rmdir()
                    except FileNotFoundError:
                        pass
                    except OSError:
                        continue  # EBUSY: the exits not accounted yet; next round
                    self._dirs.remove(d)
                if not self._dirs:
                    return
            if time.monotonic() > deadline:
                log.warning("cannot remove cgroup %s: processes %s still in it",
                            ", ".join(map(str, self._dirs)), sorted(self.pids()))
                return
            time.sleep(0.01)


def sweep_stale(prefix: str = PREFIX) -> int:
    """Removes empty activity groups whose owner is dead; returns how many groups it removed."""
    _check_name(prefix)
    try:
        layout = _layout()
    except CgroupUnavailable:
        return 0  # then nobody made any
    return _sweep(layout, prefix)


def _sweep(layout: _Layout, prefix: str) -> int:
    stale = re.compile(re.escape(prefix) + r"([0-9]+)-[A-Za-z0-9_.-]+")
    removed: set[str] = set()
    for home in layout.homes.values():
        try:
            entries = list(os.scandir(home))
        except FileNotFoundError:
            continue  # the v2 container, before any group was made
        for entry in entries:
            m = stale.fullmatch(entry.name)
            if not m or not entry.is_dir() or not owner_gone(int(m[1])):
                continue
            try:
                if _words(Path(entry.path) / "cgroup.procs"):
                    log.warning("stale cgroup %s still has processes: left", entry.path)
                    continue
                os.rmdir(entry.path)
            except OSError as e:
                log.warning("cannot remove stale cgroup %s: %s", entry.path, e)
                continue
            log.info("removed stale cgroup %s", entry.path)
            removed.add(entry.name)
    return len(removed)
