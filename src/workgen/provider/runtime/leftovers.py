"""Telling leftovers from live state: an activity's cgroup, disk or directory carries the pid of
the process that made it, and is another's to clean up only once that process is gone."""

from __future__ import annotations

import os


def owner_gone(pid: int) -> bool:
    """Whether no process ``pid`` exists any more (so what it left is stale)."""
    if pid <= 0 or pid == os.getpid():  # os.kill(0) would probe our own process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False  # alive, or its pid reused: then a later sweep takes what it left
