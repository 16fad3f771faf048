"""The test suite shares the machine: with another workgen user running jobs (its sandboxes
coming and going) and a devnet of someone else's up, a slice of the suite that starts
sandboxes, local networks and devnets of its own still passes, and leaves the neighbours be."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support.yagna import pid_alive

ROOT = Path(__file__).resolve().parents[2]
SLICE = [
    "tests/requestor/test_misuse.py",
    "tests/backends/local/test_local_activity.py",
    "tests/security/test_exeunit_attacks.py",
    "tests/devnet/test_devnet.py::test_two_devnets_coexist",
    "tests/devnet/test_devnet.py::test_cli_up_status_down",
]


def _workgen(*args: str) -> list[str]:
    return [sys.executable, "-m", "workgen.cli.main", *args]


@pytest.mark.timeout(900)
def test_a_slice_of_the_suite_passes_beside_another_job_and_a_devnet(tmp_path: Path) -> None:
    devnet = tmp_path / "their-devnet"
    subprocess.run(_workgen("devnet", "up", "--dir", str(devnet), "--providers", "1"),
                   check=True, capture_output=True, timeout=120)
    neighbour = subprocess.Popen([sys.executable, str(Path(__file__).with_name(
        "busy_neighbour.py"))], stdout=subprocess.PIPE, text=True)
    try:
        assert neighbour.stdout is not None
        assert neighbour.stdout.readline().strip() == "running"  # its first round is done
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SLICE],
            cwd=ROOT, capture_output=True, text=True, timeout=800)
        assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
        # The neighbours are untouched: still running, and still theirs to stop.
        assert neighbour.poll() is None, "the other job was stopped by the suite"
        status = subprocess.run(_workgen("devnet", "status", "--dir", str(devnet)),
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        neighbour.send_signal(signal.SIGTERM)
        assert neighbour.wait(timeout=60) in (0, 128 + signal.SIGTERM)
        if neighbour.stdout is not None:
            neighbour.stdout.close()
        down = subprocess.run(_workgen("devnet", "down", "--dir", str(devnet)),
                              capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
    assert not pid_alive(neighbour.pid)
