"""The errors the devnet raises.

They belong to workgen's hierarchy (:class:`workgen.errors.WorkgenError`) so that a caller that
catches everything workgen raises on purpose also catches these::

    DevnetError                   a devnet operation could not be done
    ├── YagnaNotFound             no ``yagna`` binary to run
    ├── DaemonStartError          a daemon exited or did not answer in time while starting
    │   └── PortInUse             ... because a port it was given was taken meanwhile
    ├── DevnetRunning             ``up`` on a directory whose devnet is still running
    └── NoDevnet                  ``status``/``down`` on a directory that holds no devnet
"""

from __future__ import annotations

from pathlib import Path

from ..errors import WorkgenError


class DevnetError(WorkgenError):
    """A devnet operation could not be done; the message says why in one line."""


class YagnaNotFound(DevnetError):
    def __init__(self, looked_in: list[str]):
        super().__init__(
            "yagna not found (looked in: " + ", ".join(looked_in) + "); "
            "install it with `pip install golem-node==0.17.6` or run scripts/setup.sh"
        )
        self.looked_in = looked_in


class DaemonStartError(DevnetError):
    def __init__(self, message: str, *, node: str, log_path: Path | None = None):
        super().__init__(message)
        self.node = node
        self.log_path = log_path


class PortInUse(DaemonStartError):
    """The daemon could not bind a port we had found free: another process took it since."""


class DevnetRunning(DevnetError):
    def __init__(self, directory: Path, pids: list[int]):
        super().__init__(
            f"a devnet is already running in {directory} (pids {', '.join(map(str, pids))}); "
            f"stop it first with `workgen devnet down --dir {directory}`"
        )
        self.directory = directory
        self.pids = pids


class NoDevnet(DevnetError):
    def __init__(self, directory: Path):
        super().__init__(f"no devnet in {directory} (no devnet.json there)")
        self.directory = directory
