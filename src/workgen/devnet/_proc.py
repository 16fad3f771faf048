"""Processes the devnet starts and later stops by PID, from this or from another command.

A devnet outlives the command that started it (``workgen devnet up`` returns, the daemons keep
running, ``workgen devnet down`` stops them later). So its processes are started *detached*: a
short-lived launcher starts them in their own session and exits, and they are no child of ours.
That makes an ``up`` inside a test behave exactly like one from the CLI (no ``Popen`` object
that warns when collected, no zombie left for us to reap) and everything afterwards works from
a PID alone.

A PID alone can be recycled after its process ended, so a process is identified by its PID
*and* its start time (field 22 of ``/proc/<pid>/stat``); a PID whose start time differs is some
other process and is never signalled. A process that exited but was not reaped yet (a zombie:
its parent, often PID 1 of a container, does not reap) counts as gone.

Waiting uses a pidfd (Linux >= 5.3): it becomes readable when the process exits, so there is no
sleep loop; where pidfds are missing a short poll of ``/proc`` stands in.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import DevnetError

logger = logging.getLogger(__name__)

# Runs in a separate interpreter: starts argv[2:] in a new session with its output appended to
# argv[1], prints its PID and start time, and exits without waiting, so the process belongs to
# no one of ours. The start time is read here because only the parent can read it race-free:
# until the parent exits, even a child that died at once keeps its /proc entry (as a zombie).
# SIGINT goes back to its default action for the program: a devnet started from a background
# job (`cmd &` in a script, CI steps) inherits SIGINT ignored, and a Python agent that ignores
# it could not clean up when `down` sends it.
_LAUNCHER = """\
import os, signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
with open(sys.argv[1], "ab") as log:
    child = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True)
try:
    with open(f"/proc/{child.pid}/stat", "rb") as f:
        stat = f.read()
    start = stat[stat.rindex(b")") + 2 :].split()[19].decode()
except OSError:
    start = ""
sys.stdout.write(f"{child.pid} {start}")
sys.stdout.flush()
os._exit(0)
"""

_FALLBACK_POLL_S = 0.05  # only where pidfds are unavailable


class SpawnError(OSError):
    """The launcher could not start the program (missing, not executable, ...)."""


def start_time_of(pid: int) -> int | None:
    """The start time of a live (non-zombie) process, in clock ticks since boot; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class ProcessRef:
    """A process we started, by PID and start time (so that a recycled PID is not mistaken)."""

    pid: int
    start_time: int | None

    @classmethod
    def spawn_detached(
        cls, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path
    ) -> ProcessRef:
        """Starts ``argv`` in its own session, output appended to ``log_path``, not our child."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        launched = subprocess.run(
            [sys.executable, "-I", "-c", _LAUNCHER, str(log_path), *argv],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if launched.returncode != 0:
            lines = launched.stderr.strip().splitlines() or [f"exit code {launched.returncode}"]
            raise SpawnError(f"cannot start {argv[0]}: {lines[-1]}")
        pid, _, start = launched.stdout.partition(" ")
        return cls(int(pid), int(start) if start.strip() else None)

    def running(self) -> bool:
        now = start_time_of(self.pid)
        return now is not None and (self.start_time is None or now == self.start_time)

    def wait(self, timeout: float) -> bool:
        """Waits until the process is gone or ``timeout`` seconds pass; True if it is gone."""
        pidfd = self._open_pidfd()
        if pidfd is None:
            return self._poll_until_gone(timeout)
        if pidfd < 0:
            return True
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            return bool(poller.poll(max(0.0, timeout) * 1000))
        finally:
            os.close(pidfd)

    def signal(self, sig: signal.Signals) -> bool:
        """Sends ``sig`` if the process is still the one we started; False if it is gone."""
        pidfd = self._open_pidfd()
        if pidfd is None:
            if not self.running():
                return False
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                return False
            return True
        if pidfd < 0:
            return False
        try:
            signal.pidfd_send_signal(pidfd, sig)
        except ProcessLookupError:
            return False
        finally:
            os.close(pidfd)
        return True

    def stop(self, grace: float = 5.0) -> str:
        """Stops the process: see :func:`stop_together`. Returns its outcome."""
        return stop_together([("", self)], grace)[0].outcome

    def _open_pidfd(self) -> int | None:
        """A pidfd for the process; -1 if it is gone (or the PID is someone else's now);
        None where pidfds are not supported."""
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return -1
        except (AttributeError, OSError):
            return None
        # Checked after opening: from now on the pidfd pins this very process, recycled or not.
        if not self.running():
            os.close(pidfd)
            return -1
        return pidfd

    def _poll_until_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_FALLBACK_POLL_S)
        return True


@dataclass(frozen=True)
class Stopped:
    what: str
    pid: int
    outcome: str  # "not running" | "stopped" | "killed"


def stop_together(group: Sequence[tuple[str, ProcessRef]], grace: float) -> list[Stopped]:
    """Stops labelled processes: SIGINT to every one, one shared ``grace`` period, then SIGKILL
    to those left. A group takes as long as its slowest member, not the sum (yagna needs ~2 s).

    SIGINT rather than SIGTERM: yagna ignores SIGTERM while it retries its net connection but
    always obeys SIGINT, and Python programs (the provider agents) turn it into a
    KeyboardInterrupt that runs their cleanup. Raises :class:`DevnetError` if even SIGKILL
    does not end a process.
    """
    signalled = [(what, p) for what, p in group if p.signal(signal.SIGINT)]
    outcomes = [Stopped(what, p.pid, "not running") for what, p in group
                if all(p is not q for _, q in signalled)]
    deadline = time.monotonic() + grace
    for what, process in signalled:
        if process.wait(deadline - time.monotonic()):
            outcomes.append(Stopped(what, process.pid, "stopped"))
            continue
        logger.warning("%s (pid %d) ignored SIGINT for %.0f s: SIGKILL", what or "process",
                       process.pid, grace)
        process.signal(signal.SIGKILL)
        if not process.wait(5.0):
            raise DevnetError(f"{what or 'process'} (pid {process.pid}) survived SIGKILL")
        outcomes.append(Stopped(what, process.pid, "killed"))
    return outcomes
