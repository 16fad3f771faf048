"""Runtimes: where an activity's commands run.

``sandbox`` (the default) puts each activity in one long-lived bubblewrap sandbox: new user, PID,
IPC, UTS, cgroup and (unless the activity asks for ``inet``) network namespaces; the image's
system directories read-only; a private ``/tmp``; the activity's volumes writable at their Golem
paths; nothing else of the host. Inside, the supervisor (``supervisor.py``) is the namespace's
init and spawns each command.
When the provider runs as root, every sandbox also runs as a user id of its own, so the kernel's
per-user limits (processes) hold per activity and no two activities share an owner, and in a
cgroup of its own (``cgroup.py``), so memory, processes and CPU are limited for the activity as
a whole. Without cgroups the limits fall back to rlimits, which bound each process only; a
one-line warning says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .cgroup import ActivityCgroup, CgroupLimits, CgroupUnavailable
from .channel import CLOSE_TIMEOUT, SandboxError, SupervisorChannel, open_channel

log = logging.getLogger(__name__)

CONTAINER_PYTHON = "/usr/bin/python3"
HOST_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Sandboxes of a root provider run as ids from this range, far above any real account.
_UID_BASE = 1_000_000
_UID_SPAN = 1_000_000


@dataclass(frozen=True)
class Resources:
    """Limits an activity's processes run under (from the agreement's offer)."""

    mem_gib: float = 1.0
    storage_gib: float = 2.0
    max_processes: int = 256
    cpu_threads: int | None = None
    """CPUs the activity's processes may run on (``None``: all of the provider's)."""

    def __post_init__(self) -> None:
        for name in ("mem_gib", "storage_gib"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, not {value!r}")
        if not (isinstance(self.max_processes, int) and self.max_processes > 0):
            raise ValueError(f"max_processes must be a positive integer, not {self.max_processes!r}")
        if self.cpu_threads is not None and not (
                isinstance(self.cpu_threads, int) and self.cpu_threads > 0):
            raise ValueError(f"cpu_threads must be a positive integer, not {self.cpu_threads!r}")

    @property
    def memory_bytes(self) -> int:
        return int(self.mem_gib * (1 << 30))

    @property
    def storage_bytes(self) -> int:
        return int(self.storage_gib * (1 << 30))

    def rlimits(self, *, per_activity: bool = False) -> dict[str, int]:
        """The supervisor's rlimits; ``per_activity``: a cgroup already limits memory."""
        limits = {
            # A cgroup's CPU quota lets the activity use any core; pinning is the fallback.
            **({"cpus": self.cpu_threads} if self.cpu_threads and not per_activity else {}),
            "fsize": self.storage_bytes,
            "nproc": self.max_processes,
            "core": 0,
        }
        if not per_activity:
            # Without a cgroup, address space is the only memory limit a process can be given:
            # it bounds each process, which at least stops one runaway allocation.
            limits["as"] = self.memory_bytes
        return limits

    def cgroup_limits(self) -> CgroupLimits:
        return CgroupLimits(memory_bytes=self.memory_bytes, max_pids=self.max_processes,
                            cpu_threads=self.cpu_threads)


@dataclass(frozen=True)
class SandboxSpec:
    volumes: Mapping[str, Path]
    """Container path (``/golem/work``) to the host directory that backs it."""
    resources: Resources = field(default_factory=Resources)
    inet: bool = False
    rootfs: Path | None = None
    """An image's root directory; ``None`` means the host's own system directories."""
    hostname: str = "golem-provider"
    tmp: Path | None = None
    """A host directory for ``/tmp`` (on the activity's own disk); ``None``: a tmpfs of the
    offered storage's size."""
    name: str = "activity"
    """Names the activity's cgroup (letters, digits, ``-``, ``_``, ``.``)."""


def sandbox_user() -> tuple[int, int] | None:
    """A fresh (uid, gid) for one sandbox when we are root, else ``None`` (keep our own)."""
    if os.geteuid() != 0:
        return None
    uid = _UID_BASE + secrets.randbelow(_UID_SPAN)
    return uid, uid


def owns_sandbox_uid(uid: int) -> bool:
    return _UID_BASE <= uid < _UID_BASE + _UID_SPAN


def find_bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxError(
            "bubblewrap is not installed, and the 'sandbox' runtime needs it: "
            "install it with 'apt-get install bubblewrap' (or your system's package manager)"
        )
    return path


def host_system_binds() -> list[str]:
    """bubblewrap options that show the host's system directories read-only (its symlinks, as
    merged-/usr systems have, as symlinks)."""
    argv = []
    for path in HOST_SYSTEM_DIRS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    return argv


def bwrap_argv(spec: SandboxSpec) -> list[str]:
    argv = [find_bwrap(), "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try"]
    if not spec.inet:
        argv.append("--unshare-net")
    # --as-pid-1: the supervisor is the namespace's init, which no command can signal.
    argv += ["--uid", "0", "--gid", "0", "--hostname", spec.hostname, "--as-pid-1",
             "--die-with-parent", "--new-session"]
    root = spec.rootfs
    if root is None:
        argv += host_system_binds()
        if not Path(CONTAINER_PYTHON).exists():
            raise SandboxError(
                f"the host has no {CONTAINER_PYTHON}, which the sandbox's supervisor needs "
                "(on Debian: apt-get install python3-minimal)")
        interpreter: tuple[str, ...] = (CONTAINER_PYTHON,)
    else:
        for entry in sorted(root.iterdir()):
            target = "/" + entry.name
            if entry.name in ("proc", "dev", "tmp", "golem", SUPERVISOR_DIR.strip("/")):
                continue
            if entry.is_symlink():
                argv += ["--symlink", os.readlink(entry), target]
            elif entry.is_dir():
                argv += ["--ro-bind", str(entry), target]
        # The image's own programs may lack Python, or have another C library: the supervisor
        # runs on the host's interpreter, brought in beside the image at a path of its own.
        runtime = supervisor_runtime()
        for source, target in runtime.binds:
            argv += ["--ro-bind", source, target]
        interpreter = runtime.argv
    argv += ["--proc", "/proc", "--dev", "/dev"]
    if spec.tmp is not None:
        argv += ["--bind", str(spec.tmp), "/tmp"]
    else:
        argv += ["--size", str(spec.resources.storage_bytes), "--tmpfs", "/tmp"]
    for container_path, host_path in sorted(spec.volumes.items()):
        argv += ["--bind", str(host_path), container_path]
    # The root itself is bubblewrap's scratch tmpfs: make it read-only too, so that nothing
    # outside the volumes and /tmp can be written.
    argv += ["--remount-ro", "/"]
    workdir = "/golem/work" if "/golem/work" in spec.volumes else "/"
    argv += ["--chdir", workdir, *interpreter]
    return argv


SUPERVISOR_DIR = "/.workgen"
"""Where an image's sandbox finds the host's Python that runs the supervisor."""


@dataclass(frozen=True)
class SupervisorRuntime:
    binds: tuple[tuple[str, str], ...]
    """(host path, sandbox path) pairs, read-only."""
    argv: tuple[str, ...]


@functools.cache
def supervisor_runtime() -> SupervisorRuntime:
    """The host's Python, relocated under :data:`SUPERVISOR_DIR`: its executable, its standard
    library and the shared libraries it links, run through the host's dynamic loader (so the
    image's C library, or its lack of one, does not matter)."""
    python = os.path.realpath(CONTAINER_PYTHON)
    if not os.path.exists(python):
        raise SandboxError(f"the host has no {CONTAINER_PYTHON}, which the sandbox's supervisor "
                           "needs (on Debian: apt-get install python3-minimal)")
    probe = subprocess.run([python, "-I", "-S", "-c",
                            "import sys, sysconfig; print(sysconfig.get_path('stdlib'))"],
                           capture_output=True, text=True, check=True)
    stdlib = probe.stdout.strip()
    libraries: dict[str, str] = {}
    loader = None
    # The interpreter's own libraries, and those of its compiled modules (ctypes needs libffi).
    dynload = Path(stdlib) / "lib-dynload"
    for binary in [python, *map(str, sorted(dynload.glob("*.so")))]:
        linked = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
        for line in linked.splitlines():
            fields = line.split()
            if "=>" in fields and len(fields) > fields.index("=>") + 1:
                path = fields[fields.index("=>") + 1]
                if path.startswith("/"):
                    # Under the name the binary asks for (libz.so.1), not the file's own.
                    libraries[fields[0]] = os.path.realpath(path)
            elif fields and fields[0].startswith("/") and binary == python:
                loader = os.path.realpath(fields[0])
    if loader is None:
        raise SandboxError(f"cannot find the dynamic loader of {python}")
    home = SUPERVISOR_DIR
    version = os.path.basename(stdlib)
    binds = [(python, f"{home}/bin/{os.path.basename(python)}"),
             (stdlib, f"{home}/lib/{version}"),
             (loader, f"{home}/so/{os.path.basename(loader)}")]
    binds += [(lib, f"{home}/so/{name}") for name, lib in sorted(libraries.items())]
    argv = (f"{home}/so/{os.path.basename(loader)}", "--library-path", f"{home}/so",
            f"{home}/bin/{os.path.basename(python)}")
    return SupervisorRuntime(tuple(binds), argv)


@contextlib.asynccontextmanager
async def open_sandbox(
    spec: SandboxSpec, *, user: tuple[int, int] | None = None
) -> AsyncIterator[SupervisorChannel]:
    """Start the activity's sandbox and yield the channel to its supervisor.

    Leaving the block kills every process of the sandbox and removes its cgroup.
    """
    env = {"PATH": DEFAULT_PATH, "HOME": "/tmp", "LANG": "C.UTF-8"}
    uid, gid = user if user is not None else (None, None)
    cgroup = await asyncio.to_thread(_activity_cgroup, spec)
    info_r, info_w = os.pipe()
    init_pidfd = -1
    try:
        argv = bwrap_argv(spec)
        argv[1:1] = ["--info-fd", str(info_w)]
        async with open_channel(argv, limits=spec.resources.rlimits(per_activity=cgroup is not None),
                                user=uid, group=gid, env=env, cwd="/", pass_fds=(info_w,),
                                before_start=cgroup.attach if cgroup else None) as channel:
            os.close(info_w)
            info_w = -1
            channel.init_pid, init_pidfd = _open_init_pidfd(info_r)
            channel.cgroup = cgroup
            if init_pidfd >= 0:
                pidfd = init_pidfd
                channel.killers.append(lambda: _kill_pidfd(pidfd))
            if cgroup is not None:
                channel.killers.append(cgroup.kill_all)
            yield channel
        # bubblewrap exits as soon as the sandbox's init reports its end, while the kernel may
        # still be killing the rest of the namespace; the init is gone only once they all are.
        if init_pidfd >= 0:
            await _wait_readable(init_pidfd, CLOSE_TIMEOUT)
    finally:
        for fd in (info_r, info_w, init_pidfd):
            if fd >= 0:
                os.close(fd)
        if cgroup is not None:
            await asyncio.to_thread(cgroup.remove)


def _activity_cgroup(spec: SandboxSpec) -> ActivityCgroup | None:
    try:
        return ActivityCgroup.create(f"{spec.name}-{secrets.token_hex(4)}",
                                     spec.resources.cgroup_limits())
    except CgroupUnavailable as exc:
        _warn_no_cgroups(str(exc))
        return None


@functools.cache
def _warn_no_cgroups(reason: str) -> None:
    log.warning("cgroups unavailable (%s): memory is limited per process (RLIMIT_AS), not per "
                "activity, and processes per user; no CPU quota", reason)


def _kill_pidfd(pidfd: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)


def _open_init_pidfd(info_fd: int) -> tuple[int | None, int]:
    """The sandbox's init (the supervisor): its pid and a pidfd, from bubblewrap's
    ``--info-fd`` report (``None, -1`` if that fails)."""
    os.set_blocking(info_fd, False)
    try:
        info = json.loads(os.read(info_fd, 4096) or b"{}")
        pid = int(info["child-pid"])
        return pid, os.pidfd_open(pid)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("cannot follow the sandbox's init process: %s", exc)
        return None, -1


async def _wait_readable(fd: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(fd, lambda: None if done.done() else done.set_result(None))
    try:
        async with asyncio.timeout(timeout):
            await done
    except TimeoutError:
        log.warning("the sandbox's processes did not all exit within %gs", timeout)
    finally:
        loop.remove_reader(fd)
