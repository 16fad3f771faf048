"""The ``workgen`` command, run for real: bad options and input are usage errors (exit code 2,
no traceback), and SIGTERM cleans up as Ctrl-C does, then exits with 143."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

WORKGEN = [sys.executable, "-m", "workgen.cli.main"]
SIGTERM_EXIT = 128 + signal.SIGTERM
# Longest time a command may take to exit after SIGTERM (cleanup included).
PROMPT_S = 15.0


def workgen(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*WORKGEN, *args], input=stdin, capture_output=True, timeout=60,
                            env=env, cwd=cwd)
    return subprocess.CompletedProcess(result.args, result.returncode,
                                       result.stdout.decode(errors="replace"),
                                       result.stderr.decode(errors="replace"))


def assert_usage_error(result: subprocess.CompletedProcess[str], prefix: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert prefix in result.stderr, result.stderr


# -- numeric options -----------------------------------------------------------------------

BAD_NUMBERS = ["nan", "inf", "-inf", "-1", "1e400", "ten", ""]


@pytest.mark.parametrize("value", BAD_NUMBERS + ["0"])
@pytest.mark.parametrize("option", ["--mem-gib", "--timeout"])
def test_exeunit_run_refuses_bad_numbers(tmp_path: Path, option: str, value: str) -> None:
    batch = tmp_path / "batch.json"
    batch.write_text('[{"deploy": {}}]')
    result = workgen("exeunit", "run", option, value, str(batch))
    assert_usage_error(result, f"workgen exeunit run: error: argument {option}: ")


@pytest.mark.parametrize(("option", "values"), [
    ("--threads", ["0", "-1", "1.5", "nan", "100000", "9" * 5000]),
    ("--mem-gib", BAD_NUMBERS + ["0", "1e7"]),
    ("--storage-gib", BAD_NUMBERS + ["0"]),
    ("--price-duration", BAD_NUMBERS),
    ("--price-cpu", BAD_NUMBERS),
    ("--price-start", BAD_NUMBERS),
    ("--debit-note-interval", BAD_NUMBERS + ["0"]),
])
def test_provider_run_refuses_bad_numbers(option: str, values: list[str]) -> None:
    for value in values:
        result = workgen("provider", "run", f"{option}={value}")
        assert_usage_error(result, f"workgen provider run: error: argument {option}: ")


@pytest.mark.parametrize(("option", "value"), [
    ("--timeout", "nan"), ("--timeout", "-1"), ("--timeout", "inf"),
    ("--providers", "-1"), ("--providers", "1e3"), ("--providers", "100000"),
])
def test_devnet_up_refuses_bad_numbers(tmp_path: Path, option: str, value: str) -> None:
    result = workgen("devnet", "up", "--dir", str(tmp_path / "net"), f"{option}={value}")
    assert_usage_error(result, f"workgen devnet up: error: argument {option}: ")
    assert not (tmp_path / "net").exists()


def test_provider_run_without_a_node_says_what_is_missing() -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("YAGNA_API_URL", "YAGNA_APPKEY", "GSB_URL")}
    result = workgen("provider", "run", env=env)
    assert_usage_error(result, "workgen provider: missing --api-url/YAGNA_API_URL")


# -- batch input ---------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "expected"), [
    (b"\xff\xfe[]", "not valid UTF-8"),
    (b'[{"run": {"entry_point": "/bin/echo", "args": ["\xe9"]}}]', "not valid UTF-8"),
    (b"not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'[{"run": {"entry_point": "/bin/true", "capture": {"stdout": {"atEnd": {"head": 1e400}}}}}]',
     "field 'run.capture.stdout.atEnd.head'"),
    (b'[{"run": {"entry_point": "/bin/true", "capture": {"stdout": {"atEnd": {"head": NaN}}}}}]',
     "field 'run.capture.stdout.atEnd.head'"),
    (b'[{"run": {"entry_point": "/bin/true", "args": ["a\\u0000"]}}]', "NUL"),
    (b"[]", "at least one command"),
])
def test_exeunit_run_refuses_bad_batches(tmp_path: Path, data: bytes, expected: str) -> None:
    batch = tmp_path / "batch.json"
    batch.write_bytes(data)
    result = workgen("exeunit", "run", str(batch))
    assert_usage_error(result, f"workgen exeunit: {batch}: ")
    assert expected in result.stderr
    from_stdin = workgen("exeunit", "run", "-", stdin=data)
    assert_usage_error(from_stdin, "workgen exeunit: standard input: ")
    assert expected in from_stdin.stderr


def test_exeunit_run_refuses_a_batch_too_large_without_reading_it_whole(tmp_path: Path) -> None:
    result = subprocess.run(f"head -c 100000000 /dev/zero | {' '.join(WORKGEN)} exeunit run -",
                            shell=True, capture_output=True, text=True, timeout=60)
    assert_usage_error(result, "workgen exeunit: standard input: ")
    assert "16777216" in result.stderr


@pytest.mark.parametrize("make", ["missing", "directory", "unreadable"])
def test_exeunit_run_refuses_unreadable_files(tmp_path: Path, make: str) -> None:
    path = tmp_path / "batch.json"
    if make == "directory":
        path.mkdir()
    elif make == "unreadable":
        path = Path("/proc/self/mem")  # exists, but reading it from offset 0 fails
    result = workgen("exeunit", "run", str(path))
    assert_usage_error(result, f"workgen exeunit: cannot read the batch from {path}: ")


# -- SIGTERM -------------------------------------------------------------------------------

@pytest.fixture
def work_tmp() -> Iterator[Path]:
    """A temporary directory the sandbox users can pass through (pytest's own is private to
    its owner), given to the command as its TMPDIR: its activities are made there."""
    path = Path(tempfile.mkdtemp(prefix="workgen-cli-test-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        # Only a failed test leaves anything: an activity's volumes may still be mounted then.
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f if line.split()[1].startswith(f"{path}/")]
        for mount in reversed(mounts):
            subprocess.run(["umount", mount], check=False, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int, start_time: str) -> bool:
    """Whether the process ``pid`` that started at ``start_time`` still runs (not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == start_time and fields[0] != "Z"


def start_time(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[19]


def read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    assert ready, "no output in time"
    line = proc.stdout.readline()
    if not line:
        stderr = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"the command ended early (exit code {proc.wait()}): {stderr}")
    return line


def stop_with_sigterm(proc: subprocess.Popen[str]) -> tuple[str, str, float]:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=PROMPT_S)
    except subprocess.TimeoutExpired:
        end(proc)
        raise AssertionError(f"still running {PROMPT_S} s after SIGTERM") from None
    return out, err, time.monotonic() - started


def end(proc: subprocess.Popen[str]) -> None:
    """Kills the command if it still runs (a failed test) and closes its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


def test_sigterm_stops_exeunit_run_and_cleans_up_the_activity(work_tmp: Path) -> None:
    batch = work_tmp / "batch.json"
    batch.write_text(json.dumps([
        {"deploy": {}}, {"start": {}},
        {"run": {"entry_point": "/bin/sh", "args": ["-c", "echo running; exec /bin/sleep 60"],
                 "capture": {"stdout": {"stream": {}}}}},
    ]))
    proc = subprocess.Popen([*WORKGEN, "exeunit", "run", str(batch)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "TMPDIR": str(work_tmp)})
    try:
        deadline = time.monotonic() + 30
        events = []
        while True:
            event = json.loads(read_line(proc, deadline))["event"]
            events.append(event)
            if event["index"] == 2 and event["kind"].get("stdout") == "running\n":
                break  # the command runs: the shell printed, and became the sleep
        assert any(e["index"] == 2 and "started" in e["kind"] for e in events)
        # The activity's directory (and whatever else of it the execution unit keeps there).
        activities = [p for p in work_tmp.iterdir() if p.name.startswith("workgen-act-")]
        assert any(p.is_dir() for p in activities), activities
        # The shell printed before it became the sleep: its exec may still be under way.
        while True:
            processes = {pid: start_time(pid) for pid in descendants(proc.pid)}
            if any(_cmdline(pid).startswith(b"/bin/sleep\0") for pid in processes):
                break
            assert time.monotonic() < deadline, "the sleep is not among the command's processes"
        out, err, took = stop_with_sigterm(proc)
    finally:
        end(proc)
    assert proc.returncode == SIGTERM_EXIT, (proc.returncode, err)
    assert "Traceback" not in err, err
    assert took < PROMPT_S
    left = [p for p in work_tmp.iterdir() if p.name.startswith("workgen-act-")]
    assert not left, f"the activity's files outlived it: {left}"
    survivors = [pid for pid, started in processes.items() if alive(pid, started)]
    assert not survivors, f"processes of the sandbox outlived it: {survivors}"


def test_sigterm_stops_provider_run_and_exits_143() -> None:
    # A node that takes the provider's first request and never answers: once it arrives, the
    # provider runs its event loop, and must stop on SIGTERM.
    with socket.create_server(("127.0.0.1", 0)) as server:
        url = f"127.0.0.1:{server.getsockname()[1]}"
        env = {**os.environ, "YAGNA_API_URL": f"http://{url}", "YAGNA_APPKEY": "key",
               "GSB_URL": f"tcp://{url}"}
        proc = subprocess.Popen([*WORKGEN, "provider", "run", "--name", "sigterm-test"],
                                text=True, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            server.settimeout(30)
            conn, _ = server.accept()
            with conn:
                assert conn.recv(100).startswith(b"GET /me ")
                out, err, took = stop_with_sigterm(proc)
        finally:
            end(proc)
    assert proc.returncode == SIGTERM_EXIT, (proc.returncode, err)
    assert "Traceback" not in err, err


SCRIPT = """
import asyncio, sys

async def main():
    try:
        print("running", flush=True)
        await asyncio.sleep(60)
    finally:
        print("cleaned up", flush=True)

asyncio.run(main())
"""


def test_sigterm_stops_a_workgen_run_script_as_ctrl_c_does(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([*WORKGEN, "run", str(script)], text=True, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert read_line(proc, time.monotonic() + 30) == "running\n"
        out, err, _ = stop_with_sigterm(proc)
    finally:
        end(proc)
    assert out == "cleaned up\n"
    assert proc.returncode == SIGTERM_EXIT, (proc.returncode, err)
    assert "Traceback" not in err, err


FAKE_YAGNA = """\
#!{python}
import os, socket, time, urllib.parse
url = urllib.parse.urlsplit(os.environ["YAGNA_API_URL"])
with socket.create_server((url.hostname, url.port)) as server:
    conn, _ = server.accept()  # up asks for /me: it has recorded this daemon, and waits
    with open({fifo!r}, "w") as f:
        f.write(f"{{os.getpid()}}\\n")
    time.sleep(60)  # never answers
"""


def test_sigterm_stops_devnet_up_and_it_leaves_nothing(tmp_path: Path) -> None:
    # A "yagna" that starts and never answers: up waits for it until SIGTERM.
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    yagna = tmp_path / "yagna"
    yagna.write_text(FAKE_YAGNA.format(python=sys.executable, fifo=str(fifo)))
    yagna.chmod(0o755)
    directory = tmp_path / "net"
    proc = subprocess.Popen([*WORKGEN, "devnet", "up", "--dir", str(directory), "--providers",
                             "0", "--yagna", str(yagna), "--timeout", "60"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            ready, _, _ = select.select([reader], [], [], 30)
            assert ready, "the daemon was not asked for /me"
            daemon = int(os.read(reader, 100).split()[0])
        finally:
            os.close(reader)
        daemon_started = start_time(daemon)
        out, err, _ = stop_with_sigterm(proc)
    finally:
        end(proc)
    assert proc.returncode == SIGTERM_EXIT, (proc.returncode, err)
    assert "Traceback" not in err, err
    assert not alive(daemon, daemon_started)
    assert not (directory / "requestor").exists()
    assert not (directory / "devnet.json").exists()


def test_provider_run_offers_operators_no_test_knobs() -> None:
    result = workgen("provider", "run", "--help")
    assert result.returncode == 0
    assert "overcharge" not in result.stdout and "testing" not in result.stdout


def test_workgen_run_on_a_devnet_keeps_the_path_and_puts_the_gftp_server_first(
        tmp_path: Path, test_devnet: Any) -> None:
    """``devnet.env`` extends ``PATH`` (``export PATH=<tools>:"$PATH"``): a script run on the
    devnet still finds the system's programs, and workgen's ``gftp`` first."""
    script = tmp_path / "script.py"
    script.write_text("import os, shutil\n"
                      "print(os.environ['PATH'])\n"
                      "print(shutil.which('sh'))\n"
                      "print(shutil.which('gftp'))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YAGNA_", "GSB_"))}
    done = subprocess.run([*WORKGEN, "run", str(script), "--backend", "yagna", "--devnet-dir",
                           str(test_devnet.directory)], capture_output=True, text=True,
                          timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr
    path, sh, gftp = done.stdout.splitlines()
    assert "$" not in path and path.endswith(":" + os.environ["PATH"]), path
    assert sh != "None"
    assert Path(gftp).parent == Path(sys.executable).parent
