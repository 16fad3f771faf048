"""Scripts on both networks (``net``): data both ways, limits, env, capture modes, context
queries."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from support.networks import Network
from workgen import (
    DownloadLimitExceeded, Golem, ImageNotFound, NoProvidersError, Stream, Task, WorkContext,
    events, vm,
)

PAYLOAD = vm.repo()


def one_provider(net: Network, **kw: Any) -> Golem:
    return net.golem(lambda e: None, providers=1, **kw)


async def one(golem: Golem, worker: Any, data: Any = "x", **kw: Any) -> Task[Any, Any]:
    (task,) = [t async for t in golem.execute_tasks(worker, [Task(data)], payload=PAYLOAD, **kw)]
    return task


async def test_send_and_download_round_trip_files_bytes_and_json(net: Network,
                                                                 tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"from a file\n" + os.urandom(1 << 20))  # a real transfer, not a token
    got: dict[str, Any] = {}

    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script()
            script.send_file(source, "/golem/input/a.txt")
            script.send_bytes("/golem/input/b.bin", b"\x00\xffbytes")
            script.upload_json("/golem/input/c.json", {"n": 3})
            script.run("/bin/sh", "-c", "cat /golem/input/a.txt /golem/input/b.bin > /golem/output/ab;"
                       " sed 's/3/4/' /golem/input/c.json > /golem/output/c.json")
            script.download_file("/golem/output/ab", tmp_path / "back" / "ab")
            raw = script.download_bytes("/golem/output/ab", on_download=lambda b: got.update(cb=b))
            doc = script.download_json("/golem/output/c.json")
            yield script
            got["bytes"] = (await raw).data
            got["json"] = (await doc).data
            task.accept_result()

    async with one_provider(net) as golem:
        await one(golem, worker)
    expected = source.read_bytes() + b"\x00\xffbytes"
    assert (tmp_path / "back" / "ab").read_bytes() == expected
    assert got["bytes"] == got["cb"] == expected
    assert got["json"] == {"n": 4}


async def test_download_over_its_limit_is_an_error_not_a_cut(net: Network) -> None:
    caught: list[BaseException] = []

    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script()
            script.run("/bin/sh", "-c", "head -c 5000 /dev/zero > /golem/output/big")
            result = script.download_bytes("/golem/output/big", limit=1000)
            try:
                yield script
            except Exception as exc:
                caught.append(exc)
                with pytest.raises(Exception) as info:
                    await result
                caught.append(info.value)
                task.reject_result("too big")
                continue
            task.accept_result()

    async with one_provider(net) as golem:
        assert [t async for t in golem.execute_tasks(worker, ["x"], payload=PAYLOAD)] == []
    assert isinstance(caught[0].__cause__, DownloadLimitExceeded)
    assert "1000" in str(caught[1])


async def test_env_capture_modes_and_results_carry_timing(net: Network) -> None:
    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script()
            text = script.run("/bin/sh", "-c", 'printf "%s" "$GREETING"', env={"GREETING": "hi"})
            binary = script.run("/bin/sh", "-c", r"printf '\377'", stdout="bin")
            yield script
            task.accept_result(((await text), (await binary)))

    async with one_provider(net) as golem:
        task = await one(golem, worker)
    text, binary = task.result
    assert text.stdout == "hi" and text.return_code == 0 and text.success
    assert binary.stdout == b"\xff"
    assert text.started_at is not None and text.duration is not None and text.duration >= 0
    assert text.command.env == {"GREETING": "hi"}


async def test_stream_output_delivers_command_output_events_live(net: Network) -> None:
    seen: list[events.CommandOutput] = []

    def consume(event: events.Event) -> None:
        if isinstance(event, events.CommandOutput):
            seen.append(event)

    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script()
            script.run("/bin/echo", "streamed")
            yield script
            task.accept_result()

    async with net.golem(consume, providers=1, stream_output=True) as golem:
        await one(golem, worker)
    assert [(e.stream, e.output) for e in seen] == [("stdout", "streamed\n")]


async def test_explicit_stream_capture_without_stream_output(net: Network) -> None:
    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script()
            out = script.run("/bin/echo", "x", stdout=Stream())
            yield script
            task.accept_result((await out).stdout)

    async with one_provider(net) as golem:
        task = await one(golem, worker)
    # As on yagna's exe unit, a streamed command's result carries its output as well.
    assert task.result == "x\n"


async def test_context_reports_usage_cost_and_state(net: Network) -> None:
    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script()
            script.run("/bin/sh", "-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done")
            yield script
            task.accept_result((await ctx.get_usage(), await ctx.get_cost(),
                                await ctx.get_raw_state(), ctx.provider_name, ctx.provider_id))

    async with one_provider(net) as golem:
        task = await one(golem, worker)
    usage, cost, state, name, node = task.result
    assert usage["golem.usage.cpu_sec"] > 0 and usage["golem.usage.duration_sec"] > 0
    assert cost > 0 and state == "Ready" and name and node.startswith("0x")


async def test_wait_for_results_false_resumes_the_worker_at_once(net: Network) -> None:
    order: list[str] = []

    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script(wait_for_results=False)
            out = script.run("/bin/sh", "-c", "sleep 0.2; echo late")
            results = yield script
            order.append("resumed")
            done = await results
            order.append("done")
            task.accept_result(((await out).stdout, len(done)))

    async with one_provider(net) as golem:
        task = await one(golem, worker)
    assert order == ["resumed", "done"] and task.result == ("late\n", 1)


async def test_yield_gives_an_awaitable_of_all_results(net: Network) -> None:
    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for task in tasks:
            script = ctx.new_script()
            script.run("/bin/echo", "a")
            script.run("/bin/echo", "b")
            results = yield script
            task.accept_result([r.stdout for r in await results])

    async with one_provider(net) as golem:
        task = await one(golem, worker)
    assert task.result == ["a\n", "b\n"]


async def test_unknown_image_is_a_clear_error(net: Network) -> None:
    # The local network knows its providers' images; on yagna every provider refuses the
    # demand, and says why.
    expected = ImageNotFound if net.kind == "local" else NoProvidersError
    async with one_provider(net) as golem:
        with pytest.raises(expected, match="ab" * 28):
            async for _ in golem.execute_tasks(lambda c, t: None, ["x"],
                                               payload=vm.repo(image_hash="ab" * 28)):
                pass


async def test_misuse_is_reported_plainly(net: Network) -> None:
    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task[Any, Any]]) -> Any:
        async for _ in tasks:
            yield "not a script"

    golem = one_provider(net)
    with pytest.raises(RuntimeError, match="start the Golem first"):
        async for _ in golem.execute_tasks(worker, ["x"], payload=PAYLOAD):
            pass
    with pytest.raises(ValueError, match="budget"):
        Golem(budget="lots")
    async with golem:
        with pytest.raises(ValueError, match="max_workers"):
            async for _ in golem.execute_tasks(worker, ["x"], payload=PAYLOAD, max_workers=0):
                pass
        assert [t async for t in golem.execute_tasks(worker, ["x"], payload=PAYLOAD,
                                                     max_retries=0)] == []
        (failed,) = golem.failed_tasks
        assert "yield Script objects" in (failed.reason or "")
