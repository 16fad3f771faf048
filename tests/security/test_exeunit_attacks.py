"""Attacks on the execution unit, as a hostile requestor's batches would make them.

Batches go through ``workgen exeunit run`` (a real process, as a provider operator would run it)
or straight into an :class:`ExeUnit`, the same object every provider serves. Each test checks
the host afterwards, and that the activity (or a fresh one) still works.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from workgen.protocol.exescript import AtEnd, Capture, Deploy, Run, Start, Stream
from workgen.protocol.results import StdOut
from workgen.protocol.results import CommandResult
from workgen.provider.exeunit.unit import ActivityState, ExeUnit, ExeUnitConfig
from workgen.provider.runtime.cgroup import CgroupUnavailable, cgroup_mode
from workgen.provider.runtime.disk import disk_support
from workgen.provider.runtime.sandbox import Resources

STR = Capture(stdout=AtEnd(format="str"), stderr=AtEnd(format="str"))


def cli(batch: Any, *options: str, timeout: float = 60) -> tuple[int, list[dict[str, Any]], str]:
    """``workgen exeunit run`` on ``batch``: exit code, the results it printed, stderr."""
    text = batch if isinstance(batch, (str, bytes)) else json.dumps(batch)
    done = subprocess.run(
        [sys.executable, "-m", "workgen.cli.main", "exeunit", "run", "-", *options],
        input=text.encode() if isinstance(text, str) else text, capture_output=True,
        timeout=timeout)
    lines = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
    return done.returncode, [line["result"] for line in lines if "result" in line], \
        done.stderr.decode(errors="replace")


def sh(script: str) -> Run:
    return Run("/bin/sh", ("-c", script), capture=STR)


async def run_batch(unit: ExeUnit, commands: list[Any], timeout: float | None = None
                    ) -> list[CommandResult]:
    batch_id = unit.exec(commands, timeout=timeout)
    await unit.batch(batch_id).finished.wait()
    return await unit.results(batch_id)


async def ready(unit: ExeUnit) -> None:
    results = await run_batch(unit, [Deploy(), Start()])
    assert [r.result for r in results] == ["Ok", "Ok"], results


def per_activity_limits() -> bool:
    try:
        cgroup_mode()
    except CgroupUnavailable:
        return False
    return True


# -- file:// through the operator's command ------------------------------------------------

def test_exeunit_run_refuses_file_urls_both_ways(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    planted = tmp_path / "planted"
    start = [{"deploy": {}}, {"start": {}}]
    code, results, _ = cli(start + [
        {"transfer": {"from": secret.as_uri(), "to": "container:/golem/output/s"}}])
    assert code == 1 and results[-1]["result"] == "Error"
    assert "file URLs are not accepted" in results[-1]["message"]
    code, results, _ = cli(start + [
        {"run": {"entry_point": "/bin/sh", "args": ["-c", "echo x > /golem/output/x"]}},
        {"transfer": {"from": "container:/golem/output/x", "to": planted.as_uri()}}])
    assert code == 1 and results[-1]["result"] == "Error" and not planted.exists()
    code, results, _ = cli(start + [{"run": {"entry_point": "/bin/true", "args": []}}])
    assert code == 0 and results[-1]["result"] == "Ok"


# -- the supervisor is out of the commands' reach ------------------------------------------

PTRACE = ("import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
          "print(libc.ptrace(16, 1, 0, 0), ctypes.get_errno())")


async def test_commands_can_neither_stop_kill_nor_trace_the_supervisor() -> None:
    async with ExeUnit() as unit:
        await ready(unit)
        (attack,) = await run_batch(unit, [sh(
            "kill -STOP 1; kill -KILL 1; kill -TERM 1; kill -STOP -1; "
            f"python3 -c '{PTRACE}'; cat /proc/1/environ >/dev/null 2>&1 || echo no-environ; "
            "echo survived")])
        assert attack.ok, attack
        ptrace_result, _, rest = attack.stdout.partition("\n")  # type: ignore[union-attr]
        assert ptrace_result.split()[0] == "-1"
        assert "no-environ" in rest and rest.endswith("survived\n")
        # The timeout still fires: nothing froze the supervisor.
        began = time.monotonic()
        (slow,) = await run_batch(unit, [sh("kill -STOP 1; sleep 60")], timeout=1.0)
        assert slow.result == "Error" and "timed out" in (slow.message or "")
        assert time.monotonic() - began < 10
        (after,) = await run_batch(unit, [sh("echo fine")])
        assert after.stdout == "fine\n"


async def test_a_supervisor_that_stops_answering_is_killed_from_the_host() -> None:
    """Whatever stalls the supervisor (here the host itself freezes it, which no command can),
    a timeout still ends the batch and closing the activity is bounded."""
    async with ExeUnit() as unit:
        await ready(unit)
        pid = unit.sandbox_supervisor_pid
        assert pid is not None
        began = time.monotonic()
        batch_id = unit.exec([Run("/bin/sh", ("-c", "echo running; sleep 60"),
                                  capture=Capture(stdout=Stream()))], timeout=1.0)
        async with unit.stream(batch_id) as events:
            async for event in events:
                if isinstance(event.kind, StdOut):  # the command runs: freeze its supervisor
                    os.kill(pid, signal.SIGSTOP)
                    break
        await unit.batch(batch_id).finished.wait()
        (result,) = await unit.results(batch_id)
        assert result.result == "Error" and "timed out" in (result.message or "")
        (after,) = await run_batch(unit, [sh("echo x")])
        assert after.result == "Error"  # the sandbox is gone, and says so
        await unit.aclose()
        assert unit.state is ActivityState.TERMINATED
        assert time.monotonic() - began < 20
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- limits hold for the activity as a whole ------------------------------------------------

@pytest.mark.skipif(not per_activity_limits(), reason="needs cgroups (root)")
async def test_memory_is_limited_for_all_processes_together() -> None:
    hog = ("python3 -c 'import time; b = bytearray(300 << 20); b[::4096] = b\"x\" * len(b[::4096]);"
           " time.sleep(5)' &")
    async with ExeUnit(config=ExeUnitConfig(resources=Resources(mem_gib=0.5))) as unit:
        await ready(unit)
        (result,) = await run_batch(unit, [sh(f"{hog} {hog} {hog} {hog} wait; exit 1")])
        assert result.result == "Error"
        assert "memory limit (0.5 GiB for all its processes together)" in (result.message or "")
        (after,) = await run_batch(unit, [sh("echo fine")])
        assert after.stdout == "fine\n"


@pytest.mark.skipif(not per_activity_limits(), reason="needs cgroups (root)")
async def test_processes_are_limited_for_the_activity() -> None:
    config = ExeUnitConfig(resources=Resources(max_processes=20))
    async with ExeUnit(config=config) as unit:
        await ready(unit)
        forks = ("import os, time\nn = 0\nfor i in range(40):\n    try:\n"
                 "        if os.fork() == 0:\n            time.sleep(3)\n            os._exit(0)\n"
                 "        n += 1\n    except OSError:\n        pass\nprint(n)")
        (result,) = await run_batch(unit, [sh(f"python3 -c '{forks}' </dev/null; exit 1")])
        assert result.result == "Error"
        assert int(str(result.stdout)) < 20
        assert "process limit (20)" in (result.message or "")


def storage_bounded() -> bool:
    return disk_support() is None


@pytest.mark.skipif(not storage_bounded(), reason="needs root and loop devices")
async def test_storage_is_bounded_for_volumes_and_tmp_together() -> None:
    config = ExeUnitConfig(resources=Resources(storage_gib=0.03))  # 32 MiB
    async with ExeUnit(config=config) as unit:
        await ready(unit)
        disk = unit.volumes["/golem/work"].parent
        before = os.statvfs(disk)
        (fill,) = await run_batch(unit, [sh(
            "head -c 20000000 /dev/zero > /tmp/a; head -c 20000000 /dev/zero > /golem/work/b")])
        assert fill.result == "Error" and "No space left" in (fill.message or "")
        (files,) = await run_batch(unit, [sh(
            "rm -f /tmp/a /golem/work/b; mkdir /golem/output/m; cd /golem/output/m; "
            "python3 -c 'import os\nfor i in range(30000): open(str(i), \"w\").close()'")])
        assert files.result == "Error" and "No space left" in (files.message or "")
        (after,) = await run_batch(unit, [sh("rm -rf /golem/output/m; echo ok > /tmp/x; cat /tmp/x")])
        assert after.stdout == "ok\n"
        assert before.f_blocks * before.f_frsize <= 33 << 20


async def test_a_failing_transfer_fails_its_command_and_the_unit_goes_on() -> None:
    from workgen.backends.local.storage import LocalStorage
    store = LocalStorage()
    try:
        source = await store.publish_bytes(b"data")
        config = ExeUnitConfig(remote_schemes={"local": store.scheme})
        async with ExeUnit(config=config) as unit:
            await ready(unit)
            await run_batch(unit, [sh("echo f > /golem/work/f; mkfifo /golem/work/fifo")])
            from workgen.protocol.exescript import Transfer
            for target in ("/golem/work/f/sub/x", "/golem/work/" + "n" * 300,
                           "/golem/work/fifo", "/golem/work", "/golem/work/a/../../x"):
                (result,) = await run_batch(unit, [Transfer(source.url, "container:" + target)],
                                            timeout=10)
                assert result.result == "Error" and "timed out" not in (result.message or ""), \
                    (target, result)
            (after,) = await run_batch(unit, [sh("cat /golem/work/f")])
            assert after.stdout == "f\n"
    finally:
        await store.aclose()


# -- output over its cap --------------------------------------------------------------------

def test_output_over_the_capture_cap_keeps_a_bounded_result() -> None:
    # 200 MB of bytes that are not UTF-8, in text mode: each shown as a 4-character escape.
    code, results, stderr = cli([
        {"deploy": {}}, {"start": {}},
        {"run": {"entry_point": "/bin/sh", "args": ["-c", "head -c 200000000 /dev/zero | tr '\\0' '\\377'"],
                 "capture": {"stdout": {"atEnd": {"format": "str"}}}}}], timeout=120)
    assert code == 1, stderr
    last = results[-1]
    assert last["result"] == "Error" and "cut" in last["message"]
    # At most the cap's worth of characters, each escape written as 5 in JSON.
    assert len(last["stdout"]) <= 64 << 20
    assert len(json.dumps(last)) < 1.3 * (64 << 20)
