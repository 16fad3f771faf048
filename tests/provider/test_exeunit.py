"""The execution unit, for real: every command runs in a bubblewrap sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from support.http import serve
from workgen.backends.local.storage import LocalStorage
from workgen.errors import BackendError
from workgen.protocol.exescript import (
    AtEnd, BatchFormatError, Capture, Deploy, Run, Start, Stream, Terminate, Transfer,
)
from workgen.protocol.results import CommandOutcome, CommandResult, Finished, Started, StdErr, StdOut
from workgen.provider.exeunit.unit import (
    KEEP_FINISHED, ActivityState, ExeUnit, ExeUnitConfig, UnknownBatch,
)
from workgen.provider.runtime.sandbox import Resources

STR = Capture(stdout=AtEnd(format="str"), stderr=AtEnd(format="str"))


@contextlib.asynccontextmanager
async def ready_unit(tmp_path: Path, **config: Any) -> AsyncIterator[ExeUnit]:
    async with ExeUnit(config=ExeUnitConfig(**config)) as unit:
        results = await run_batch(unit, [Deploy(), Start()])
        assert [r.result for r in results] == ["Ok", "Ok"], results
        assert unit.state is ActivityState.READY
        yield unit


async def run_batch(unit: ExeUnit, commands: list[Any], timeout: float | None = None
                    ) -> list[CommandResult]:
    batch_id = unit.exec(commands, timeout=timeout)
    await unit.batch(batch_id).finished.wait()
    return await unit.results(batch_id)


def sh(script: str, capture: Capture = STR, env: dict[str, str] | None = None) -> Run:
    return Run("/bin/sh", ("-c", script), env=env, capture=capture)


async def run_one(unit: ExeUnit, script: str, **kw: Any) -> CommandResult:
    (result,) = await run_batch(unit, [sh(script, **kw)])
    return result


# -- commands and states -------------------------------------------------------------------

async def test_run_returns_stdout_and_stderr_of_the_command(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        result = await run_one(unit, "echo out; echo err >&2")
    assert result.ok and result.is_batch_finished
    assert (result.stdout, result.stderr) == ("out\n", "err\n")


async def test_run_passes_env_to_the_process(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        result = await run_one(unit, 'printf "%s|%s" "$A" "$B"', env={"A": "one", "B": "two words"})
    assert result.stdout == "one|two words"


async def test_deploy_env_reaches_every_run_and_run_env_overrides_it(tmp_path: Path) -> None:
    async with ExeUnit(config=ExeUnitConfig()) as unit:
        results = await run_batch(unit, [
            Deploy(env={"A": "deploy", "B": "deploy"}), Start(),
            sh('echo "$A $B"', env={"B": "run"}),
        ])
    assert results[2].stdout == "deploy run\n"


async def test_commands_run_under_the_normal_policy_while_their_supervisor_is_a_batch_task(
        tmp_path: Path) -> None:
    # /proc/PID/sched names the policy by number: 0 is SCHED_OTHER, 3 SCHED_BATCH.
    async with ready_unit(tmp_path) as unit:
        result = await run_one(unit, "grep -h '^policy' /proc/self/sched /proc/1/sched")
    ours, supervisor = (line.split(":")[1].strip() for line in result.stdout.splitlines())
    assert (ours, supervisor) == ("0", "3"), result.stdout


async def test_nonzero_exit_fails_the_command_and_ends_the_batch(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        results = await run_batch(unit, [sh("echo partial; echo boom >&2; exit 3"), sh("echo never")])
    assert len(results) == 1
    (result,) = results
    assert result.result == "Error" and result.is_batch_finished
    assert "return code 3" in (result.message or "") and "boom" in (result.message or "")
    assert result.stdout == "partial\n"


async def test_missing_program_is_an_error_result(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        (result,) = await run_batch(unit, [Run("/no/such/program")])
    assert result.result == "Error"
    assert "/no/such/program" in (result.message or "")


async def test_commands_in_the_wrong_state_fail_and_the_activity_survives(tmp_path: Path) -> None:
    async with ExeUnit(config=ExeUnitConfig()) as unit:
        (early,) = await run_batch(unit, [sh("true")])
        assert early.result == "Error"
        assert "needs the activity in state Ready" in (early.message or "")
        assert unit.state is ActivityState.INITIALIZED
        (start_first,) = await run_batch(unit, [Start()])
        assert "state Deployed" in (start_first.message or "")
        results = await run_batch(unit, [Deploy(), Start(), sh("echo fine"), Deploy()])
        assert [r.result for r in results] == ["Ok", "Ok", "Ok", "Error"]
        assert unit.state is ActivityState.READY
        assert (await run_one(unit, "echo still")).stdout == "still\n"


async def test_terminate_kills_processes_and_removes_files(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        volumes = dict(unit.volumes)
        await run_one(unit, "sleep 1000 >/dev/null 2>&1 & echo data > /golem/work/f")
        assert (volumes["/golem/work"] / "f").exists()
        (result,) = await run_batch(unit, [Terminate()])
        assert result.ok and unit.state is ActivityState.TERMINATED
        assert not any(path.exists() for path in volumes.values())


async def test_exec_after_terminate_raises(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        await run_batch(unit, [Terminate()])
        with pytest.raises(Exception, match="terminated"):
            unit.exec([sh("true")])


async def test_unknown_batch_is_reported(tmp_path: Path) -> None:
    async with ExeUnit(config=ExeUnitConfig()) as unit:
        with pytest.raises(UnknownBatch):
            await unit.results("nope")


async def test_finished_batches_are_kept_within_bounds_and_a_released_one_says_so(
        tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        ids = []
        for _ in range(KEEP_FINISHED + 5):
            batch_id = unit.exec([sh("true")])
            await unit.batch(batch_id).finished.wait()
            ids.append(batch_id)
        # The newest finished ones answer; the oldest were let go when new ones came.
        assert unit.kept_batches <= KEEP_FINISHED + 1
        assert [r.result for r in await unit.results(ids[-1])] == ["Ok"]
        with pytest.raises(UnknownBatch, match="no longer kept"):
            await unit.results(ids[0])
        with pytest.raises(UnknownBatch, match="^no batch"):
            await unit.results("never-existed")
        with pytest.raises(Exception, match="already exists"):
            unit.exec([sh("true")], batch_id=ids[0])  # a released id is not reused


# -- capture modes -------------------------------------------------------------------------

async def test_head_tail_and_headtail_keep_the_asked_bytes_and_say_so(tmp_path: Path) -> None:
    script = "printf 0123456789"
    async with ready_unit(tmp_path) as unit:
        head = await run_one(unit, script, capture=Capture(stdout=AtEnd("head", 3)))
        tail = await run_one(unit, script, capture=Capture(stdout=AtEnd("tail", 3)))
        both = await run_one(unit, script, capture=Capture(stdout=AtEnd("headTail", 4)))
        fits = await run_one(unit, script, capture=Capture(stdout=AtEnd("head", 100)))
    assert (head.stdout, tail.stdout, both.stdout, fits.stdout) == ("012", "789", "0189", "0123456789")
    assert "kept the first 3 of 10 bytes" in (head.message or "")
    assert "kept the last 3 of 10 bytes" in (tail.message or "")
    assert "first and last 4 of 10" in (both.message or "")
    assert fits.message is None


async def test_binary_format_keeps_bytes_exactly(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        result = await run_one(unit, r"printf '\377\000\001abc'",
                               capture=Capture(stdout=AtEnd(format="bin")))
    assert result.stdout == b"\xff\x00\x01abc"
    assert result.to_json()["stdout"] == [255, 0, 1, 97, 98, 99]


async def test_invalid_utf8_in_str_format_is_escaped_and_reported(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        result = await run_one(unit, r"printf 'ok \377 end'")
    assert result.stdout == "ok \\xff end"
    assert "not valid UTF-8" in (result.message or "")


async def test_stream_mode_emits_output_events_in_order(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        batch_id = unit.exec([sh("echo one; echo two >&2; echo three",
                                 capture=Capture(stdout=Stream(), stderr=Stream()))])
        async with unit.stream(batch_id) as events:
            kinds = [e.kind async for e in events]
        (result,) = await unit.results(batch_id)
    assert isinstance(kinds[0], Started) and isinstance(kinds[-1], Finished)
    assert "".join(k.output for k in kinds if isinstance(k, StdOut)) == "one\nthree\n"  # type: ignore[misc]
    assert [k.output for k in kinds if isinstance(k, StdErr)] == ["two\n"]
    # The result carries the streamed output too, as yagna's exe unit does.
    assert result.ok and result.stdout == "one\nthree\n" and result.stderr == "two\n"


async def test_stream_limit_stops_sending_and_says_how_much_was_left(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        batch_id = unit.exec([sh("printf 0123456789", capture=Capture(stdout=Stream(limit=4)))])
        async with unit.stream(batch_id) as events:
            sent = "".join([e.kind.output async for e in events  # type: ignore[misc]
                            if isinstance(e.kind, StdOut)])
        (result,) = await unit.results(batch_id)
    assert sent == "0123"
    assert "6 of 10 bytes not sent" in (result.message or "")


async def test_stream_of_100_mb_keeps_memory_bounded(tmp_path: Path) -> None:
    size = 100 << 20
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    async with ready_unit(tmp_path) as unit:
        batch_id = unit.exec([Run("/bin/sh", ("-c", f"head -c {size} /dev/zero"),
                                  capture=Capture(stdout=Stream(format="bin")))])
        received = 0
        async with unit.stream(batch_id) as events:
            async for event in events:
                if isinstance(event.kind, StdOut):
                    received += len(event.kind.output)
        (result,) = await unit.results(batch_id)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert result.ok and received == size
    assert grown_mib < 40, f"memory grew by {grown_mib:.0f} MiB for a 100 MiB stream"


async def test_whole_capture_over_its_cap_fails_instead_of_cutting(tmp_path: Path) -> None:
    async with ready_unit(tmp_path, max_at_end=1000) as unit:
        result = await run_one(unit, "head -c 5000 /dev/zero")
    assert result.result == "Error"
    assert "exceeded the 1000 byte limit" in (result.message or "")


# -- timeouts and cancellation -------------------------------------------------------------

FIND_SLEEP = """
import glob
print(sum(open(p, "rb").read() == b"sleep\\x0061\\x00" for p in glob.glob("/proc/[0-9]*/cmdline")))
"""


async def test_batch_timeout_kills_the_running_command(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        results = await run_batch(unit, [sh("sleep 61; echo late"), sh("echo never")],
                                  timeout=0.5)
        (check,) = await run_batch(unit, [Run("/usr/bin/python3", ("-c", FIND_SLEEP), capture=STR)])
        assert check.stdout == "0\n"
    (result,) = results
    assert result.result == "Error" and "timed out after 0.5s" in (result.message or "")


async def test_cancel_kills_the_command_and_says_so(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        batch_id = unit.exec([sh("echo ready; sleep 60", capture=Capture(stdout=Stream()))])
        async with unit.stream(batch_id) as events:
            async for event in events:
                if isinstance(event.kind, StdOut):
                    break
        await unit.cancel(batch_id)
        (result,) = await unit.results(batch_id)
    assert result.result == "Error" and "cancelled" in (result.message or "")


async def test_results_wait_for_a_command_index(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        batch_id = unit.exec([sh("echo a"), sh("mkfifo /golem/work/fifo; read x < /golem/work/fifo; echo b")])
        results = await unit.results(batch_id, command_index=0, timeout=10)
        assert [r.index for r in results] == [0]
        with pytest.raises(TimeoutError):
            await unit.results(batch_id, command_index=1, timeout=0.2)
        await unit.cancel(batch_id)


# -- malformed batches ---------------------------------------------------------------------

@pytest.mark.parametrize(("batch", "expected"), [
    ("not json", "not valid JSON"),
    ("{}", "JSON array"),
    ("[]", "at least one command"),
    ('[{"run": {}}]', "command 0, field 'run.entry_point': is required"),
    ('[{"deploy": {}}, {"explode": {}}]', "command 1: unknown command 'explode'"),
    ('[{"run": {"entry_point": "/bin/true", "args": [1]}}]', "field 'run.args'"),
    ('[{"run": {"entry_point": "x", "capture": {"stdout": {"atEnd": {"format": "hex"}}}}}]',
     "field 'run.capture.stdout.atEnd.format'"),
    ('[{"transfer": {"from": "container:/x"}}]', "field 'transfer.to'"),
])
def test_malformed_batches_are_rejected_naming_the_command_and_field(batch: str, expected: str) -> None:
    async def go() -> None:
        async with ExeUnit() as unit:
            with pytest.raises(BatchFormatError, match=expected.replace("(", r"\(")):
                unit.exec(batch)

    asyncio.run(go())


# -- transfers -----------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def storage(tmp_path: Path) -> AsyncIterator[LocalStorage]:
    store = LocalStorage(tmp_path)
    try:
        yield store
    finally:
        await store.aclose()


async def test_transfer_into_and_out_of_the_container(tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(3 << 20))
    async with storage(tmp_path) as store:
        source = await store.publish_file(src)
        back, summed = await store.new_destination("back"), await store.new_destination("sum")
        async with ready_unit(tmp_path, remote_schemes={"local": store.scheme}) as unit:
            results = await run_batch(unit, [
                Transfer(source.url, "container:/golem/input/data.bin"),
                sh("sha256sum < /golem/input/data.bin > /golem/output/sum; "
                   "cp /golem/input/data.bin /golem/output/"),
                Transfer("container:/golem/output/data.bin", back.url),
                Transfer("container:/golem/output/sum", summed.url),
            ])
        assert [r.result for r in results] == ["Ok"] * 4, results
        assert await back.read_bytes() == src.read_bytes()
        assert (await summed.read_bytes()).split()[0].decode() == __import__("hashlib").sha256(
            src.read_bytes()).hexdigest()


async def test_transfer_is_allowed_before_start(tmp_path: Path) -> None:
    async with storage(tmp_path) as store:
        source = await store.publish_bytes(b"early")
        async with ExeUnit(config=ExeUnitConfig(remote_schemes={"local": store.scheme})) as unit:
            results = await run_batch(unit, [Deploy(), Transfer(source.url, "container:/golem/input/x"),
                                             Start(), sh("cat /golem/input/x")])
    assert results[-1].stdout == "early"


def _site(tmp_path: Path) -> Any:
    import http.server

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "page.txt").write_text("served")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, directory=str(tmp_path / "site"), **kw)

        def log_message(self, *args: Any) -> None:
            pass

    return serve(Quiet)


async def test_transfer_from_http_with_inet(tmp_path: Path) -> None:
    with _site(tmp_path) as url:
        async with ready_unit(tmp_path, inet=True) as unit:
            ok = await run_batch(unit, [Transfer(f"{url}/page.txt", "container:/golem/input/"),
                                        sh("cat /golem/input/page.txt")])
            (missing,) = await run_batch(unit, [Transfer(f"{url}/nope", "container:/golem/input/n")])
            assert "n" not in os.listdir(unit.volumes["/golem/input"])
    assert ok[-1].stdout == "served"
    assert missing.result == "Error" and "HTTP 404" in (missing.message or "")


async def test_transfer_over_http_needs_inet(tmp_path: Path) -> None:
    with _site(tmp_path) as url:
        async with ready_unit(tmp_path) as unit:
            (get,) = await run_batch(unit, [Transfer(f"{url}/page.txt", "container:/golem/input/")])
            (put,) = (await run_batch(unit, [sh("echo x > /golem/output/x"),
                                             Transfer("container:/golem/output/x", f"{url}/x")]))[1:]
    for result in (get, put):
        assert result.result == "Error" and "no network access" in (result.message or "")


@pytest.mark.parametrize("path", [
    "container:/golem/input/../../etc/passwd",
    "container:/etc/passwd",
    "container:relative/path",
    "container:/golem/work/link/passwd",
    "container:/golem/work/abs",
    "container:/golem/work",
    "container:/golem/work/" + "x" * 300,
])
async def test_transfer_refuses_paths_that_escape_the_volumes(tmp_path: Path, path: str) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "passwd").write_text("host secret")
    async with storage(tmp_path) as store:
        source = await store.publish_bytes(b"overwritten!")
        stolen = await store.new_destination("stolen")
        async with ready_unit(tmp_path, remote_schemes={"local": store.scheme}) as unit:
            work = unit.volumes["/golem/work"]
            os.symlink(secret, work / "link")
            os.symlink(secret / "passwd", work / "abs")
            (out_result,) = await run_batch(unit, [Transfer(path, stolen.url)])
            (in_result,) = await run_batch(unit, [Transfer(source.url, path)])
        assert out_result.result == "Error" and in_result.result == "Error"
        with pytest.raises(BackendError):
            await stolen.read_bytes()
    assert (secret / "passwd").read_text() == "host secret"


# -- isolation -----------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["/root", "/home", str(Path(__file__).resolve().parents[2])])
async def test_host_directories_are_invisible(tmp_path: Path, target: str) -> None:
    async with ready_unit(tmp_path) as unit:
        result = await run_one(unit, f"ls -A {target}")
    assert result.result == "Error" and "No such file or directory" in (result.message or "")


async def test_another_activity_s_files_are_unreachable(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as one, ready_unit(tmp_path) as two:
        await run_one(one, "echo private > /golem/work/secret")
        host_path = one.volumes["/golem/work"] / "secret"
        assert host_path.read_text() == "private\n"
        seen = await run_one(two, f"cat {host_path} 2>&1 || cat /golem/work/secret 2>&1; "
                                  "ls /tmp; ls -A /golem/work")
    assert "private" not in (seen.stdout or "")


async def test_writing_outside_the_volumes_fails(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        for target in ("/usr/evil", "/etc/evil", "/evil", "/bin/evil"):
            result = await run_one(unit, f"echo x > {target}")
            assert result.result == "Error", target
        assert (await run_one(unit, "echo ok > /tmp/f && cat /tmp/f")).stdout == "ok\n"
    assert not Path("/usr/evil").exists() and not Path("/etc/evil").exists()


async def test_network_is_unreachable_without_inet(tmp_path: Path) -> None:
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        probe = ("import socket; s = socket.create_connection(('127.0.0.1', %d), timeout=3); "
                 "print('connected')" % port)
        async with ready_unit(tmp_path) as unit:
            closed = await run_batch(unit, [Run("/usr/bin/python3", ("-c", probe), capture=STR)])
        async with ready_unit(tmp_path, inet=True) as unit:
            opened = await run_batch(unit, [Run("/usr/bin/python3", ("-c", probe), capture=STR)])
    finally:
        listener.close()
    assert closed[0].result == "Error"
    assert opened[0].ok and opened[0].stdout == "connected\n"


FORKER = """
import os, time
n = 0
for _ in range(500):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        os.close(1); os.close(2); time.sleep(60); os._exit(0)
    n += 1
print(n)
"""


async def test_process_limit_caps_how_many_processes_an_activity_has(tmp_path: Path) -> None:
    async with ready_unit(tmp_path, resources=Resources(max_processes=64)) as unit:
        (result,) = await run_batch(unit, [Run("/usr/bin/python3", ("-c", FORKER), capture=STR)])
        assert result.ok, result
        assert 10 < int(result.stdout or 0) < 64
    # Leaving the block killed them all: the autouse fixture checks nothing is left.


async def test_fork_bomb_is_contained_and_the_activity_survives(tmp_path: Path) -> None:
    async with ready_unit(tmp_path, resources=Resources(max_processes=64)) as unit:
        (bomb,) = await run_batch(unit, [sh("b() { b | b & }; b; sleep 60")], timeout=3)
        assert bomb.result == "Error" and "timed out" in (bomb.message or "")
        assert (await run_one(unit, "echo alive")).stdout == "alive\n"


async def test_memory_hog_is_stopped_by_the_memory_limit(tmp_path: Path) -> None:
    async with ready_unit(tmp_path, resources=Resources(mem_gib=0.25)) as unit:
        result = await run_batch(unit, [Run("/usr/bin/python3", ("-c", "x = bytearray(1 << 30)"),
                                            capture=STR)])
    message = result[0].message or ""
    # Per activity (a cgroup) the process is killed, naming the limit; per process (rlimit,
    # without cgroups) the allocation fails.
    assert result[0].result == "Error"
    assert "memory limit (0.25 GiB" in message or "MemoryError" in message


async def test_file_size_limit_stops_filling_the_disk(tmp_path: Path) -> None:
    async with ready_unit(tmp_path, resources=Resources(storage_gib=0.001)) as unit:
        result = await run_one(unit, "head -c 5000000 /dev/zero > /golem/work/big")
    assert result.result == "Error"


async def test_usage_counts_wall_and_cpu_time(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        await run_one(unit, "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done")
        usage = await unit.usage()
    assert usage["golem.usage.cpu_sec"] > 0.05
    assert usage["golem.usage.duration_sec"] >= usage["golem.usage.cpu_sec"] * 0.5


async def test_running_commands_lists_the_current_command(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        batch_id = unit.exec([sh("echo go; sleep 60", capture=Capture(stdout=Stream()))])
        async with unit.stream(batch_id) as events:
            async for event in events:
                if isinstance(event.kind, StdOut):
                    break
        (running,) = unit.running_commands()
        await unit.cancel(batch_id)
    assert running["batchId"] == batch_id and running["command"] == "Run"
    assert running["params"][:2] == ["/bin/sh", "-c"]


async def test_results_json_matches_yagna(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        result = await run_one(unit, "echo hi")
    doc = result.to_json()
    assert set(doc) == {"index", "eventDate", "result", "stdout", "stderr", "message",
                        "isBatchFinished"}
    # The wire form round-trips; the typed fields are the unit's own knowledge.
    assert CommandResult.from_json(json.loads(json.dumps(doc))).to_json() == doc
    assert isinstance(result, CommandOutcome)
    assert (result.return_code, result.failure) == (0, None)


SPIN_TWO = """
import os, time
began = time.monotonic()
children = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            pass
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
used = os.times()
print((used.children_user + used.children_system) / (time.monotonic() - began))
"""


async def test_cpu_threads_limit_the_cpu_an_activity_uses(tmp_path: Path) -> None:
    async with ready_unit(tmp_path, resources=Resources(cpu_threads=1)) as unit:
        if unit.cgroup_description is None:  # no cgroup: pinned to that many CPUs instead
            result = await run_one(unit, "nproc")
            assert result.stdout == "1\n"
            return
        (result,) = await run_batch(unit, [Run("/usr/bin/python3", ("-c", SPIN_TWO),
                                               capture=STR)])
    # Two busy processes, one thread's worth of CPU time between them (a loaded machine
    # gives less, never more).
    assert float(str(result.stdout)) < 1.35, result


async def test_a_batch_cancelled_before_it_starts_still_gets_a_result(tmp_path: Path) -> None:
    async with ready_unit(tmp_path) as unit:
        batch_id = unit.exec([sh("echo never")])
        await unit.cancel(batch_id)  # before the event loop ever ran the batch
        (result,) = await unit.results(batch_id)
    assert result.result == "Error" and "cancelled" in (result.message or "")


def test_without_a_cgroup_the_limits_fall_back_to_each_process() -> None:
    resources = Resources(mem_gib=0.5, storage_gib=1.0, max_processes=7, cpu_threads=1)
    fallback = resources.rlimits(per_activity=False)
    assert fallback["as"] == 1 << 29 and fallback["cpus"] == 1 and fallback["nproc"] == 7
    grouped = resources.rlimits(per_activity=True)
    assert "as" not in grouped and "cpus" not in grouped  # the cgroup holds them for all
    assert grouped["fsize"] == 1 << 30


@pytest.mark.parametrize("bad", [dict(mem_gib=float("nan")), dict(mem_gib=-1.0),
                                 dict(storage_gib=float("inf")), dict(max_processes=0),
                                 dict(cpu_threads=0)])
def test_resources_refuse_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Resources(**bad)
